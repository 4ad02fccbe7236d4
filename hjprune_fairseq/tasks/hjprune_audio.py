"""``hjprune_audio_finetuning``: fairseq's audio_finetuning task (wav2vec tsv manifests + labels) for
hjprune models.

fairseq's ``build_model`` configures the model from a merged COPY of ``cfg.model``, so what the
model learns while building (its ``encoder_spec``, read from ``w2v_path``) would not reach the
config the trainer saves. The stock task copies back only ``w2v_args``; this task copies back the
hjprune fields, which makes every checkpoint it trains self-contained (loadable without w2v_path).
"""

from __future__ import annotations

from dataclasses import dataclass

from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask
from omegaconf import open_dict

PROPAGATED = ("encoder_spec", "reference_spec")


@dataclass
class HJPruneAudioFinetuningConfig(AudioFinetuningConfig):
    pass


@register_task("hjprune_audio_finetuning", dataclass=HJPruneAudioFinetuningConfig)
class HJPruneAudioFinetuningTask(AudioFinetuningTask):
    def build_model(self, model_cfg, from_checkpoint=False):
        model = super().build_model(model_cfg, from_checkpoint)
        built = getattr(model, "cfg", None)
        if built is not None:
            with open_dict(model_cfg):
                for key in PROPAGATED:
                    if getattr(built, key, None) is not None:
                        model_cfg[key] = built[key]
        return model
