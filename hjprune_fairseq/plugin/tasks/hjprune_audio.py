"""``hjprune_audio_finetuning`` (and ``hjprune_audio_classification``): fairseq's audio_finetuning
task (wav2vec tsv manifests + labels) for hjprune models, with five additions (``hjprune_audio_distill``,
for unlabeled audio, shares the first, second and fourth):

- fairseq's ``build_model`` configures the model from a merged COPY of ``cfg.model``, so what the
  model learns while building (its ``encoder_spec``, read from ``w2v_path``) would not reach the
  config the trainer saves. The stock task copies back only ``w2v_args``; this task copies back the
  hjprune fields, which makes every checkpoint it trains self-contained (loadable without w2v_path);
- every split is checked before use (data_checks): the dictionary file, audio files, label line
  counts, symbols, and rows CTC cannot learn (too short for a frame, or for their transcript);
- the target dictionary (symbols in order) is recorded in the model config, so every checkpoint
  carries it, and a data dictionary that differs from a model's is refused (fairseq-generate too);
- ``build_generator`` returns greedy CTC decoding, so fairseq-generate works with CTC models
  (hjprune gated or slim, and stock wav2vec_ctc);
- batches keep every utterance (compat quirk 4: fairseq drops the last batch otherwise);
- after each optimizer step the model's ``after_update`` hook runs, if it has one (PARP's re-prune).
"""


import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.optim.fp16_optimizer import FP16Optimizer
from fairseq.tasks import register_task
from fairseq.tasks.audio_finetuning import AudioFinetuningConfig, AudioFinetuningTask
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask
from hjprune_manifests import data_checks
from omegaconf import open_dict

from .. import compat
from ..decoding import ClassifierGenerator, GreedyCTCGenerator

logger = logging.getLogger(__name__)

PROPAGATED = ("encoder_spec", "reference_spec", "target_dictionary")


@dataclass
class HJPruneAudioFinetuningConfig(AudioFinetuningConfig):
    # fairseq-generate builds the target dictionary before it reads the checkpoint: give a default.
    labels: Optional[str] = field(
        default="ltr", metadata={"help": "label file extension: {split}.{labels} and dict.{labels}.txt (default: ltr)"}
    )
    check_audio: bool = field(
        default=True, metadata={"help": "open every manifest row's audio before use (mono, sample rate, length); "
                                        "false skips it for very large manifests (labels are always checked)"}
    )


def check_split(data: str, split: str, labels: Optional[str], dictionary, check_audio: bool, sample_rate: int,
                single: bool, conv_layers=None) -> None:
    """The manifest, label and frame checks of one split (ValueError naming file and line); ``labels``
    None for unlabeled audio; frames counted with ``conv_layers`` (None: wav2vec2-base's CNN)."""
    manifest = os.path.join(data, f"{split}.tsv")
    rows = data_checks.read_manifest(manifest, check_audio, sample_rate)
    lines, label_path = None, None
    if labels is not None:
        label_path = os.path.join(data, f"{split}.{labels}")
        lines = data_checks.read_labels(label_path, len(rows), manifest, data_checks.dictionary_symbols(dictionary),
                                        single=single)
    for problem in data_checks.frame_problems(manifest, rows, None if single else lines, conv_layers, label_path):
        data_checks.raise_problem(problem)


def model_conv_layers(model):
    """The conv stack that makes the model's frames (None: not known, wav2vec2-base's is assumed)."""
    from ..fairseq_import import conv_layers_of

    return conv_layers_of(compat.unwrap(model))


def propagate_model_fields(model, model_cfg) -> None:
    compat.write_back_model_fields(getattr(model, "cfg", None), model_cfg, PROPAGATED)


class CompleteBatches:
    conv_layers = None  # the model's conv stack, once build_model has run

    @compat.one_line_errors
    def build_criterion(self, cfg, from_checkpoint=False):
        return super().build_criterion(cfg, from_checkpoint)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # fairseq would silently drop the last batch of a split (compat quirk 4).
        requested = kwargs.get("required_batch_size_multiple", 1)
        kwargs["required_batch_size_multiple"] = compat.batch_multiple_that_keeps_every_utterance(requested)
        return super().get_batch_iterator(dataset, *args, **kwargs)


@register_task("hjprune_audio_finetuning", dataclass=HJPruneAudioFinetuningConfig)
class HJPruneAudioFinetuningTask(CompleteBatches, AudioFinetuningTask):
    SINGLE_LABEL = False  # one symbol per label line (utterance classification)
    def complete_task_cfg(self, task_cfg):
        return compat.complete_saved_task_cfg(self.cfg, task_cfg)

    def load_target_dictionary(self):
        if self.cfg.labels:
            data_checks.check_dictionary(self.dictionary_path)
        return super().load_target_dictionary()

    @property
    def dictionary_path(self) -> str:
        return os.path.join(self.cfg.target_dictionary or self.cfg.data, f"dict.{self.cfg.labels}.txt")

    @compat.one_line_errors
    def load_dataset(self, split: str, task_cfg=None, **kwargs):
        task_cfg = self.complete_task_cfg(task_cfg)
        if task_cfg.multi_corpus_keys is None:
            check_split(self.cfg.data, split, task_cfg.labels, self.target_dictionary, self.cfg.check_audio,
                        task_cfg.sample_rate, self.SINGLE_LABEL, self.conv_layers)
        super().load_dataset(split, task_cfg, **kwargs)

    @compat.one_line_errors
    def build_model(self, model_cfg, from_checkpoint=False):
        self.record_dictionary(model_cfg)
        model = super().build_model(model_cfg, from_checkpoint)
        propagate_model_fields(model, model_cfg)
        self.conv_layers = model_conv_layers(model)
        return model

    def record_dictionary(self, model_cfg) -> None:
        """Check the data dictionary against the one the model was trained with, and record it in
        ``model_cfg`` so that every checkpoint written from it carries it."""
        # Read from the file: fairseq-generate has already replaced self.target_dictionary by the one the
        # checkpoint's task state holds, if any (compat quirk 5).
        data = list(self.load_target_dictionary().symbols)
        path = os.path.abspath(self.dictionary_path)
        saved = model_cfg.get("target_dictionary")
        held = list(self.target_dictionary.symbols)
        if saved is None and held != data:
            saved = {"path": "the checkpoint's task state", "symbols": held}
        if saved is not None:
            problem = data_checks.dictionary_difference(saved["symbols"], saved["path"], data, path)
            if problem:
                raise ValueError(problem)
        elif "target_dictionary" not in model_cfg:  # a stock fairseq model
            logger.warning("%s records no target dictionary: make sure %s is the one it was trained with",
                           model_cfg.get("_name"), path)
        if "target_dictionary" in model_cfg and model_cfg.target_dictionary is None:
            with open_dict(model_cfg):
                model_cfg.target_dictionary = {"path": path, "symbols": data}

    def build_generator(self, models, args, **kwargs):
        return GreedyCTCGenerator(self.target_dictionary)

    def optimizer_step(self, optimizer, model, update_num):
        """The optimizer step, then the model's ``after_update`` hook if it has one (PARP's re-prune)."""
        inner = compat.unwrap(model)
        hook = getattr(inner, "after_update", None)
        if hook is not None and isinstance(optimizer, FP16Optimizer):
            raise ValueError(
                "PARP cannot run with common.fp16 or common.bf16: the optimizer's fp32 copy of the weights would "
                "undo every prune; use common.amp=true or common.memory_efficient_fp16=true instead"
            )
        super().optimizer_step(optimizer, model, update_num)
        if hook is not None:
            hook(update_num + 1)


@dataclass
class HJPruneAudioClassificationConfig(HJPruneAudioFinetuningConfig):
    labels: Optional[str] = field(
        default="label", metadata={"help": "label file extension: {split}.{labels} (one label, e.g. an intent, "
                                           "per line) and dict.{labels}.txt (default: label)"}
    )


@register_task("hjprune_audio_classification", dataclass=HJPruneAudioClassificationConfig)
class HJPruneAudioClassificationTask(HJPruneAudioFinetuningTask):
    """Utterance classification (SLURP-style intents): wav2vec tsv manifests, ``{split}.label`` with
    one label per line, ``dict.label.txt``. fairseq-generate prints the predicted label of every
    utterance; ``--scoring hjprune_accuracy`` adds the accuracy line."""

    SINGLE_LABEL = True

    def build_generator(self, models, args, **kwargs):
        return ClassifierGenerator(self.target_dictionary)


@dataclass
class HJPruneAudioDistillConfig(AudioPretrainingConfig):
    enable_padding: bool = field(
        default=True, metadata={"help": "pad the utterances of a batch (true) instead of cropping them to the shortest"}
    )
    check_audio: bool = field(
        default=True, metadata={"help": "open every manifest row's audio before use (mono, sample rate, length)"}
    )


@register_task("hjprune_audio_distill", dataclass=HJPruneAudioDistillConfig)
class HJPruneAudioDistillTask(CompleteBatches, AudioPretrainingTask):
    """Unlabeled audio ({split}.tsv only) for task-agnostic pruning by distillation (criterion
    ``hjprune_distill``, model ``hjprune_wav2vec_distill``): fairseq's audio_pretraining with the
    manifest checks, the saved encoder shape and the complete batches of the tasks above."""

    @compat.one_line_errors
    def load_dataset(self, split: str, task_cfg=None, **kwargs):
        task_cfg = task_cfg or self.cfg
        if task_cfg.multi_corpus_keys is None:
            check_split(self.cfg.data, split, None, None, self.cfg.check_audio, task_cfg.sample_rate, True,
                        self.conv_layers)
        super().load_dataset(split, task_cfg, **kwargs)

    @compat.one_line_errors
    def build_model(self, model_cfg, from_checkpoint=False):
        model = super().build_model(model_cfg, from_checkpoint)
        propagate_model_fields(model, model_cfg)
        self.conv_layers = model_conv_layers(model)
        return model
