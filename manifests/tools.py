"""Manifest tools for wav2vec-style datasets (LibriSpeech layout included).

- ``hjprune-manifest ROOT DEST``: index the audio under ROOT (recursive, by extension) into
  ``DEST/train.tsv`` and ``DEST/valid.tsv`` with a seeded split. Unreadable, non-audio, stereo or
  wrongly sampled files are listed (one line each) and skipped.
- ``hjprune-labels DEST``: transcripts for the manifests' rows from LibriSpeech ``*.trans.txt``
  files beside the audio (``ID TEXT`` per line): ``{split}.wrd``, ``{split}.ltr`` and
  ``dict.ltr.txt`` (letters of the training split, or checked against ``--dict``).
- ``hjprune-validate DATA``: every problem of the manifests and labels, one line each (rows CTC cannot
  learn are counted with ``--conv-layers``, wav2vec2-base's CNN by default).

Nothing is half-written: outputs go to a temporary file that replaces the target at the end. Every
file a run would write is checked before anything is written: an existing one is replaced only with
``--overwrite``, an input never (``hjprune_manifests.output_dir.check_files``).
Adapted in spirit from fairseq's ``examples/wav2vec/wav2vec_manifest.py`` and ``libri_labels.py``.
"""

import argparse
import collections
import os
import random
import sys
from typing import Dict, List, Optional, Sequence

from . import output_dir
from .audio import SAMPLE_RATE, WAV2VEC2_CONV, format_conv_layers, parse_conv_layers
from .cli import run_cli
from .data_checks import (audio_problem, dictionary_lines, dictionary_problems, frame_problems, label_problems, manifest_problems,
                          manifest_rows)
from .labels import by_count, letters, write_dictionary, write_lines

LETTERS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")


def build_manifest(root: str, dest: str, exts: Sequence[str], valid_percent: float, seed: int,
                   sample_rate: int = SAMPLE_RATE, overwrite: bool = False, log=None) -> Dict[str, int]:
    import soundfile as sf

    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: folder not found")
    if not 0.0 <= valid_percent < 1.0:
        raise ValueError(f"--valid-percent must be in [0, 1), got {valid_percent}")
    outputs = [os.path.join(dest, f"{split}.tsv") for split in ("train", "valid")]
    root = os.path.abspath(root)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                   if f.lower().endswith(tuple("." + e.lower().lstrip(".") for e in exts)))
    output_dir.check_files(outputs, overwrite, {f: f"a file under {root} matched by --ext" for f in files})
    rng = random.Random(seed)
    rows: Dict[str, List[str]] = {"train": [root], "valid": [root]}
    skipped = 0
    for path in files:
        problem = audio_problem(path, None, sample_rate)
        if problem:
            print(f"skipped: {problem}", file=log or sys.stderr)
            skipped += 1
            continue
        split = "valid" if rng.random() < valid_percent else "train"
        rows[split].append(f"{os.path.relpath(path, root)}\t{sf.info(path).frames}")
    if len(rows["train"]) + len(rows["valid"]) == 2:
        raise ValueError(f"{root}: no usable audio with extension {list(exts)} ({skipped} skipped)")
    for path, lines in zip(outputs, rows.values()):
        write_lines(path, lines)
    return {"train": len(rows["train"]) - 1, "valid": len(rows["valid"]) - 1, "skipped": skipped}


def librispeech_transcripts(folder: str, cache: Dict[str, Dict[str, tuple]]) -> Dict[str, tuple]:
    """{utterance id: (text, trans file, line)} of the ``*.trans.txt`` files in ``folder``."""
    if folder not in cache:
        found: Dict[str, tuple] = {}
        for name in sorted(os.listdir(folder)):
            if name.endswith(".trans.txt"):
                path = os.path.join(folder, name)
                for n, line in enumerate(open(path).read().splitlines(), start=1):
                    uid, _, text = line.strip().partition(" ")
                    found[uid] = (text.strip(), path, n)
        cache[folder] = found
    return cache[folder]


def write_labels(dest: str, splits: Sequence[str], dict_path: Optional[str] = None,
                 overwrite: bool = False) -> Dict[str, int]:
    """{split}.wrd / {split}.ltr for every manifest row, and dict.ltr.txt (unless ``dict_path``); an
    existing one is replaced only with ``overwrite``, an input never."""
    outputs = [os.path.join(dest, f"{split}.{ext}") for split in splits for ext in ("wrd", "ltr")]
    if not dict_path:
        outputs.append(os.path.join(dest, "dict.ltr.txt"))
    inputs = {os.path.join(dest, f"{split}.tsv"): f"the manifest of split {split!r}" for split in splits}
    if dict_path:
        inputs[dict_path] = "the dictionary given by --dict"
    output_dir.check_files(outputs, overwrite, inputs)  # before reading every transcript
    cache: Dict[str, Dict[str, tuple]] = {}
    known = None
    if dict_path:
        if not os.path.isfile(dict_path):
            raise FileNotFoundError(f"{dict_path}: dictionary not found")
        known = {line.split()[0] for line in open(dict_path).read().splitlines() if line.strip()}
    out: Dict[str, tuple] = {}
    counts: collections.Counter = collections.Counter()
    for split in splits:
        manifest = os.path.join(dest, f"{split}.tsv")
        wrd, ltr = [], []
        for n, audio, _ in manifest_rows(manifest):
            uid = os.path.basename(audio).split(".")[0]
            entry = librispeech_transcripts(os.path.dirname(audio), cache).get(uid)
            if entry is None:
                raise ValueError(f"{manifest}:{n}: no transcript for {uid} in a *.trans.txt beside {audio}")
            text, trans, line = entry
            if not text:
                raise ValueError(f"{trans}:{line}: empty transcript for {uid}")
            allowed = known if known is not None else LETTERS | {" "}
            bad = sorted({c for c in text.upper().replace(" ", "") if c not in allowed})
            if bad:
                raise ValueError(f"{trans}:{line}: characters {bad} outside the dictionary")
            wrd.append(text.upper())
            ltr.append(letters(text))
            if split == splits[0]:  # counts from the training split
                counts.update(ltr[-1].split())
            else:  # symbols only the other splits have enter with count 0, so none is unknown
                counts.update({c: 0 for c in ltr[-1].split()})
        out[split] = (wrd, ltr)
    inputs.update({trans: "a transcript file read" for found in cache.values() for _, trans, _ in found.values()})
    output_dir.check_files(outputs, overwrite, inputs)
    for split, (wrd, ltr) in out.items():  # only once every split is known good
        write_lines(os.path.join(dest, f"{split}.wrd"), wrd)
        write_lines(os.path.join(dest, f"{split}.ltr"), ltr)
    if not dict_path:
        write_dictionary(os.path.join(dest, "dict.ltr.txt"), by_count(counts))
    return {s: len(w) for s, (w, _) in out.items()}


def validate(data: str, splits: Sequence[str], labels: Optional[str], sample_rate: int = SAMPLE_RATE,
             conv_layers: Optional[Sequence[tuple]] = None) -> List[str]:
    """Every problem found, one line each (empty when the dataset is fine); rows CTC cannot learn are
    counted with ``conv_layers`` (wav2vec2-base's when None)."""
    problems: List[str] = []
    symbols = None
    single = labels == "label"
    if labels:
        dict_path = os.path.join(data, f"dict.{labels}.txt")
        found = list(dictionary_problems(dict_path))
        problems += found
        if not found:
            symbols = {symbol for _, _, symbol, _ in dictionary_lines(dict_path)}
    for split in splits:
        manifest = os.path.join(data, f"{split}.tsv")
        try:
            problems += list(manifest_problems(manifest, sample_rate))
            rows = manifest_rows(manifest)
        except (ValueError, FileNotFoundError) as e:
            problems.append(str(e))
            continue
        lines = label_path = None
        if labels:
            label_path = os.path.join(data, f"{split}.{labels}")
            problems += list(label_problems(label_path, len(rows), manifest, symbols, single=single))
            if os.path.isfile(label_path) and not single:
                lines = open(label_path).read().splitlines()
        problems += list(frame_problems(manifest, rows, lines, conv_layers, label_path))
    return problems


def manifest_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-manifest", description="Index audio into wav2vec tsv manifests.")
    p.add_argument("root", help="folder searched recursively for audio")
    p.add_argument("dest", help="folder for train.tsv and valid.tsv")
    p.add_argument("--ext", nargs="+", default=["flac", "wav"], help="audio extensions (default: flac wav)")
    p.add_argument("--valid-percent", type=float, default=0.01, help="share of files put in valid (default: 0.01)")
    p.add_argument("--seed", type=int, default=42, help="seed of the train/valid split (default: 42)")
    p.add_argument("--sample-rate", type=int, default=SAMPLE_RATE, help="required sample rate (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing train.tsv and valid.tsv in DEST")
    a = p.parse_args(argv)

    def go() -> int:
        r = build_manifest(a.root, a.dest, a.ext, a.valid_percent, a.seed, a.sample_rate, a.overwrite)
        print(f"{a.dest}: train {r['train']}, valid {r['valid']} files; {r['skipped']} skipped")
        return 0

    return run_cli(None, go)


def labels_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-labels",
                                description="Letter and word labels from LibriSpeech *.trans.txt files beside the audio.")
    p.add_argument("dest", help="folder with the manifests")
    p.add_argument("--splits", nargs="+", default=["train", "valid"],
                   help="manifests to label; the first one makes dict.ltr.txt (default: train valid)")
    p.add_argument("--dict", help="check against this dict.ltr.txt instead of writing one")
    p.add_argument("--overwrite", action="store_true", help="replace existing .wrd, .ltr and dict.ltr.txt files in DEST")
    a = p.parse_args(argv)

    def go() -> int:
        r = write_labels(a.dest, a.splits, a.dict, a.overwrite)
        print(", ".join(f"{s}: {n} transcripts" for s, n in r.items()))
        return 0

    return run_cli(None, go)


def validate_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-validate", description="List every problem of a wav2vec dataset.")
    p.add_argument("data", help="folder with {split}.tsv, {split}.{labels}, dict.{labels}.txt")
    p.add_argument("--splits", nargs="+", default=["train", "valid"], help="splits to check (default: train valid)")
    p.add_argument("--labels", default="ltr", help="label extension to check; '' for manifests only (default: ltr)")
    p.add_argument("--sample-rate", type=int, default=SAMPLE_RATE, help="required sample rate (default: %(default)s)")
    p.add_argument("--conv-layers", default=format_conv_layers(WAV2VEC2_CONV),
                   help="count the frames of each row with this CNN, in fairseq's conv_feature_layers format "
                        "(the model's cfg.model.conv_feature_layers; default: wav2vec2-base's, %(default)s: "
                        "320 samples a frame, 400 at least)")
    a = p.parse_args(argv)

    def go() -> int:
        conv_layers = parse_conv_layers(a.conv_layers)
        problems = validate(a.data, a.splits, a.labels or None, a.sample_rate, conv_layers)
        for line in problems:
            print(line)
        print(f"{len(problems)} problem(s) in {a.data}", file=sys.stderr)
        return 1 if problems else 0

    return run_cli("hjprune-validate", go, (ValueError,))
