"""Checks of wav2vec-style datasets, run before training or decoding starts.

Each problem raises ValueError / FileNotFoundError naming the file, the line and what was expected.
Manifest (``{split}.tsv``): first line the root folder, then ``relative/path<TAB>num_samples``.
Labels (``{split}.{labels}``): one line per manifest row, space-separated symbols of the dictionary
(letters, sentencepiece pieces) or, for intent classification, one intent per line.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

SAMPLE_RATE = 16000


def read_manifest(path: str, check_audio: bool = True, sample_rate: int = SAMPLE_RATE) -> List[Tuple[str, int]]:
    """[(audio path, num_samples)] of a manifest; with ``check_audio`` every file must be readable
    mono audio at ``sample_rate`` with the stated number of samples."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: manifest not found")
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        raise ValueError(f"{path}:1: empty manifest (expected the root folder on the first line)")
    root = lines[0].strip()
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise ValueError(f"{path}:{n}: expected 'relative/path<TAB>num_samples', got {line!r}")
        audio = os.path.join(root, parts[0])
        if check_audio:
            check_audio_file(audio, int(parts[1]), sample_rate, where=f"{path}:{n}")
        rows.append((audio, int(parts[1])))
    return rows


def check_audio_file(audio: str, num_samples: int, sample_rate: int, where: str) -> None:
    import soundfile as sf

    if not os.path.isfile(audio):
        raise FileNotFoundError(f"{where}: audio file {audio} not found")
    try:
        info = sf.info(audio)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise ValueError(f"{where}: audio file {audio} is not readable audio ({e})") from e
    if info.channels != 1:
        raise ValueError(f"{where}: {audio} has {info.channels} channels (expected mono)")
    if info.samplerate != sample_rate:
        raise ValueError(f"{where}: {audio} is sampled at {info.samplerate} Hz (expected {sample_rate})")
    if info.frames != num_samples:
        raise ValueError(f"{where}: {audio} has {info.frames} samples but the manifest says {num_samples}")


def read_labels(path: str, num_rows: int, manifest: str, symbols: Optional[set] = None, single: bool = False) -> List[str]:
    """Label lines of a manifest: as many as its rows, every symbol known (``symbols``), one symbol
    per line when ``single`` (intent classification)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: label file not found (expected one line per row of {manifest})")
    with open(path) as f:
        labels = f.read().splitlines()
    if len(labels) != num_rows:
        raise ValueError(f"{path}: {len(labels)} lines but {manifest} has {num_rows} rows (expected one label line per row)")
    for n, line in enumerate(labels, start=1):
        tokens = line.split()
        if not tokens:
            raise ValueError(f"{path}:{n}: empty label (expected {'an intent' if single else 'a transcript'})")
        if single and len(tokens) != 1:
            raise ValueError(f"{path}:{n}: expected one intent label, got {line!r}")
        if symbols is not None:
            unknown = sorted({t for t in tokens if t not in symbols})
            if unknown:
                raise ValueError(f"{path}:{n}: {'intent' if single else 'symbols'} {unknown} not in the dictionary")
    return labels


def dictionary_symbols(dictionary) -> set:
    """The ordinary symbols of a fairseq Dictionary (its specials excluded)."""
    return set(dictionary.symbols[dictionary.nspecial:])
