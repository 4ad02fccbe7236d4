"""Checks of wav2vec-style datasets, run before training or decoding starts (and by
``hjprune-validate``, which lists every problem instead of stopping at the first).

Each problem names the file, the line and what was expected.
Manifest (``{split}.tsv``): first line the root folder, then ``relative/path<TAB>num_samples``.
Labels (``{split}.{labels}``): one line per manifest row, space-separated symbols of the dictionary
(letters, sentencepiece pieces) or, for intent classification, one intent per line.
"""

import os
from typing import Iterator, List, Optional, Tuple

SAMPLE_RATE = 16000


class MissingFile(Exception):
    """Marks a problem that is a missing file (raised as FileNotFoundError)."""


def manifest_rows(path: str) -> List[Tuple[int, str, int]]:
    """[(line number, audio path, num_samples)]; a malformed manifest raises at once."""
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
        rows.append((n, os.path.join(root, parts[0]), int(parts[1])))
    return rows


def audio_problem(audio: str, num_samples: Optional[int], sample_rate: int) -> Optional[str]:
    """What is wrong with one audio file (None when it is fine)."""
    import soundfile as sf

    if not os.path.isfile(audio):
        return f"audio file {audio} not found"
    try:
        info = sf.info(audio)
    except (RuntimeError, sf.LibsndfileError) as e:
        return f"audio file {audio} is not readable audio ({e})"
    if info.channels != 1:
        return f"{audio} has {info.channels} channels (expected mono)"
    if info.samplerate != sample_rate:
        return f"{audio} is sampled at {info.samplerate} Hz (expected {sample_rate})"
    if num_samples is not None and info.frames != num_samples:
        return f"{audio} has {info.frames} samples but the manifest says {num_samples}"
    return None


def manifest_problems(path: str, sample_rate: int = SAMPLE_RATE) -> Iterator[str]:
    for n, audio, num in manifest_rows(path):
        problem = audio_problem(audio, num, sample_rate)
        if problem:
            yield f"{path}:{n}: {problem}"


def read_manifest(path: str, check_audio: bool = True, sample_rate: int = SAMPLE_RATE) -> List[Tuple[str, int]]:
    """[(audio path, num_samples)] of a manifest; with ``check_audio`` every file must be readable
    mono audio at ``sample_rate`` with the stated number of samples (else the first problem raises)."""
    rows = manifest_rows(path)
    if check_audio:
        for n, audio, num in rows:
            problem = audio_problem(audio, num, sample_rate)
            if problem:
                exc = FileNotFoundError if problem.endswith("not found") else ValueError
                raise exc(f"{path}:{n}: {problem}")
    return [(audio, num) for _, audio, num in rows]


def label_problems(path: str, num_rows: int, manifest: str, symbols: Optional[set] = None,
                   single: bool = False) -> Iterator[str]:
    if not os.path.isfile(path):
        yield f"{path}: label file not found (expected one line per row of {manifest})"
        return
    with open(path) as f:
        labels = f.read().splitlines()
    if len(labels) != num_rows:
        yield f"{path}: {len(labels)} lines but {manifest} has {num_rows} rows (expected one label line per row)"
    for n, line in enumerate(labels, start=1):
        tokens = line.split()
        if not tokens:
            yield f"{path}:{n}: empty label (expected {'an intent' if single else 'a transcript'})"
        elif single and len(tokens) != 1:
            yield f"{path}:{n}: expected one intent label, got {line!r}"
        elif symbols is not None:
            unknown = sorted({t for t in tokens if t not in symbols})
            if unknown:
                yield f"{path}:{n}: {'intent' if single else 'symbols'} {unknown} not in the dictionary"


def read_labels(path: str, num_rows: int, manifest: str, symbols: Optional[set] = None, single: bool = False) -> List[str]:
    """Label lines of a manifest: as many as its rows, every symbol known (``symbols``), one symbol
    per line when ``single`` (intent classification). The first problem raises."""
    for problem in label_problems(path, num_rows, manifest, symbols, single):
        raise (FileNotFoundError if "not found" in problem else ValueError)(problem)
    with open(path) as f:
        return f.read().splitlines()


def dictionary_symbols(dictionary) -> set:
    """The ordinary symbols of a fairseq Dictionary (its specials excluded)."""
    return set(dictionary.symbols[dictionary.nspecial:])
