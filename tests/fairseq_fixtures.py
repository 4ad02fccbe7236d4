"""Tiny genuine fairseq checkpoints for the tests, written the way fairseq's trainer writes them."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import torch
from fairseq.data import Dictionary
from hjprune_manifests.labels import write_dictionary
from omegaconf import OmegaConf

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
USER_DIR = os.path.join(os.path.dirname(EXAMPLES), "hjprune_fairseq")
LETTERS = list("ETAOINSHRDLUCMWFGYPBVKJXQZ'") + ["|"]

TINY_MODEL = dict(
    conv_feature_layers="[(32, 10, 5)] + [(32, 3, 2)] * 2 + [(32, 2, 2)] * 2",
    encoder_layers=2, encoder_embed_dim=48, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
    conv_pos=16, conv_pos_groups=4, final_dim=16,
)


def letter_dictionary(path: Optional[str] = None) -> Dictionary:
    d = Dictionary()
    for c in LETTERS:
        d.add_symbol(c)
    if path:
        write_dictionary(path, [(c, 1) for c in LETTERS])
    return d


def _state(cfg_model: Dict, cfg_task: Dict, sd: Dict[str, torch.Tensor], task_state: Optional[Dict] = None) -> Dict:
    return {
        "args": None,
        "cfg": {"model": cfg_model, "task": cfg_task, "common": {"seed": 1}},
        "model": sd,
        "optimizer_history": [{"criterion_name": "x", "optimizer_name": "Adam", "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"epoch": 1, "previous_best": None},
        "task_state": task_state or {},
        "last_optimizer_state": None,
    }


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every norm and bias non-trivial values so parity tests exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.endswith("weight_g"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def make_pretrained(path: str, arch: str = "wav2vec2", seed: int = 0, **overrides) -> str:
    """Write a random-init fairseq ``wav2vec2`` or ``hubert`` pre-training checkpoint."""
    torch.manual_seed(seed)
    model_cfg = dict(TINY_MODEL, **overrides)
    task_cfg = {"_name": "audio_pretraining" if arch == "wav2vec2" else "hubert_pretraining", "data": os.path.dirname(path),
                "normalize": bool(model_cfg.pop("normalize", False)), "sample_rate": 16000}
    if arch == "wav2vec2":
        from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

        cfg = OmegaConf.structured(Wav2Vec2Config(**model_cfg))
        model = Wav2Vec2Model(cfg)
        task_state = None
    else:
        from fairseq.models.hubert.hubert import HubertConfig, HubertModel
        from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

        cfg = OmegaConf.structured(HubertConfig(label_rate=50.0, **model_cfg))
        dicts = [letter_dictionary()]
        model = HubertModel(cfg, HubertPretrainingConfig(label_rate=50.0), dicts)
        task_state = {"dictionaries": dicts}
    randomize_norms(model, seed)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    cfg_dict["_name"] = arch
    torch.save(_state(cfg_dict, task_cfg, model.state_dict(), task_state), path)
    return path


def make_stock_ctc(w2v_path: str, out_path: str, data_dir: str, seed: int = 0):
    """Build fairseq's own ``wav2vec_ctc`` from ``w2v_path`` and save it as a fine-tuned checkpoint."""
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecCtc

    class _Task:
        target_dictionary = letter_dictionary()

    torch.manual_seed(seed)
    cfg = OmegaConf.structured(Wav2Vec2CtcConfig(w2v_path=w2v_path, normalize=False, data=data_dir, ddp_backend="legacy_ddp"))
    model = Wav2VecCtc.build_model(cfg, _Task())
    randomize_norms(model.w2v_encoder.proj, seed + 1)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    cfg_dict["_name"] = "wav2vec_ctc"
    torch.save(_state(cfg_dict, {"_name": "audio_finetuning", "data": data_dir, "normalize": False}, model.state_dict()), out_path)
    return model


def batch(lengths: List[int], seed: int = 0):
    """Random waveforms of the given lengths, right-padded, with fairseq's padding mask."""
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    source = torch.zeros(len(lengths), S)
    pad = torch.ones(len(lengths), S, dtype=torch.bool)
    for i, n in enumerate(lengths):
        source[i, :n] = torch.randn(n, generator=g)
        pad[i, :n] = False
    return source, pad


def make_letter_corpus(data_dir: str, splits: Dict[str, int], seed: int = 0) -> str:
    """Random-noise 16 kHz wavs with random letter transcripts as a wav2vec tsv/ltr dataset.

    Enough to drive fairseq's audio_finetuning task through real training steps; not speech.
    """
    import random

    import numpy as np
    import soundfile as sf

    rng = random.Random(seed)
    os.makedirs(data_dir, exist_ok=True)
    letter_dictionary(os.path.join(data_dir, "dict.ltr.txt"))
    for split, n in splits.items():
        rows, labels = [], []
        for i in range(n):
            samples = rng.randint(8000, 16000)
            wav = np.random.default_rng(seed * 1000 + i).standard_normal(samples).astype("float32") * 0.1
            name = f"{split}_{i}.wav"
            sf.write(os.path.join(data_dir, name), wav, 16000)
            rows.append(f"{name}\t{samples}")
            words = ["".join(rng.choice("ETAOINSHRD") for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(1, 3))]
            labels.append(" ".join(" ".join(w) + " |" for w in words))
        with open(os.path.join(data_dir, f"{split}.tsv"), "w") as f:
            f.write(os.path.abspath(data_dir) + "\n" + "\n".join(rows) + "\n")
        with open(os.path.join(data_dir, f"{split}.ltr"), "w") as f:
            f.write("\n".join(labels) + "\n")
    return data_dir


def compose_like_fairseq(config_dir: str, name: str, overrides: List[str]):
    """The config fairseq_cli.hydra_train builds from ``--config-dir DIR --config-name NAME overrides``."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    hydra_init(name)
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name=name, overrides=overrides)
    add_defaults(cfg)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def hydra_train(config_dir: str, name: str, overrides: List[str], cwd: str, timeout: int = 600):
    """Run the fairseq-hydra-train console script; returns the CompletedProcess."""
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
    return subprocess.run([exe, "--config-dir", config_dir, "--config-name", name, *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def train_ok(config_dir: str, name: str, data: str, w2v_path: str, save_dir, overrides: List[str]) -> str:
    """fairseq-hydra-train one example config on test data (small batches); asserts success, returns the log."""
    r = hydra_train(config_dir, name, [
        f"common.user_dir={USER_DIR}", f"task.data={data}", f"model.w2v_path={w2v_path}",
        f"checkpoint.save_dir={save_dir}", "dataset.max_tokens=64000", *overrides], cwd=os.path.dirname(str(save_dir)))
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr


def fairseq_generate(data: str, path: str, *extra: str, subset: str = "test"):
    """Run the fairseq-generate console script on ``path`` with the plugin's task, greedy CTC decoding and
    letter post-processing (WER scoring); returns the CompletedProcess."""
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    return subprocess.run([exe, data, "--user-dir", USER_DIR, "--task", "hjprune_audio_finetuning", "--path", path,
                           "--gen-subset", subset, "--post-process", "letter", "--scoring", "wer",
                           "--max-tokens", "1000000", *extra], capture_output=True, text=True, timeout=300)


INTENTS = ["alarm_set", "weather_query", "music_play", "calendar_set"]


def make_intent_corpus(data_dir: str, splits: Dict[str, int], seed: int = 0) -> str:
    """Random-noise wavs with random intents: {split}.tsv, {split}.label, dict.label.txt."""
    import random

    make_letter_corpus(data_dir, splits, seed)  # the audio and manifests
    rng = random.Random(seed)
    write_dictionary(os.path.join(data_dir, "dict.label.txt"), [(i, 1) for i in INTENTS])
    for split, n in splits.items():
        with open(os.path.join(data_dir, f"{split}.label"), "w") as f:
            f.writelines(rng.choice(INTENTS) + "\n" for _ in range(n))
    return data_dir


def save_like_trainer(model, path, data: str = "unused", labels: str = "ltr") -> str:
    """An hjprune model's checkpoint as fairseq's trainer writes it (cfg as plain containers, the
    full hjprune_audio_finetuning task section)."""
    from hjprune_fairseq.plugin.tasks.hjprune_audio import HJPruneAudioFinetuningConfig

    task = OmegaConf.structured(HJPruneAudioFinetuningConfig(data=data, normalize=False, labels=labels, tpu=False, seed=1))
    task._name = "hjprune_audio_finetuning"
    torch.save(_state(OmegaConf.to_container(model.cfg, resolve=True, enum_to_str=True),
                      OmegaConf.to_container(task, resolve=True, enum_to_str=True), model.state_dict()), path)
    return str(path)


# Grids of a test's latency table: two or three points per axis (fractions of the dense size)
QUICK_GRIDS = dict(conv_grid=(0.5, 1.0), hidden_grid=(0.5, 1.0), heads_grid=(0.0, 0.5, 1.0), dims_grid=(0.5, 1.0),
                   ffn_grid=(0.0, 0.5, 1.0))


def make_latency_table(path: str, spec=None, preset: str = "tiny", seconds: float = 0.5, calibration: int = 1) -> str:
    """Measure a quick PyTorch latency table (1 thread, three timed runs per point) of ``spec`` (or ``preset``) at
    ``path``: seconds of CPU, not a usable prediction."""
    from hjprune_fairseq.tools.latency.measure import TableConfig, measure_table, write_table

    cfg = TableConfig(preset=preset, seconds=seconds, threads=1, repeats=3, warmup=1, calibration=calibration,
                      **QUICK_GRIDS)
    write_table(measure_table(cfg, spec, "fixture" if spec is not None else None), path, overwrite=True)
    return path
