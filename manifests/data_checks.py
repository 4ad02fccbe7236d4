"""Checks of wav2vec-style datasets, run before training or decoding starts (and by
``hjprune-validate``, which lists every problem instead of stopping at the first).

Each problem names the file, the line and what was expected.
Manifest (``{split}.tsv``): first line the root folder, then ``relative/path<TAB>num_samples``.
Labels (``{split}.{labels}``): one line per manifest row, space-separated symbols of the dictionary
(letters, sentencepiece pieces) or, for intent classification, one intent per line.
Dictionary (``dict.{labels}.txt``): ``symbol count`` per line, each symbol once.
CTC can only learn a row whose audio yields at least one frame and, for transcripts, at least as many
frames as the transcript needs (one per symbol, plus a blank between two equal neighbours); other
rows would train with a silently zeroed loss (``zero_infinity``) and decode to nothing.
"""

import os
from typing import Iterator, List, Optional, Sequence, Tuple

from .audio import SAMPLE_RATE, WAV2VEC2_CONV

FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the only sample formats that can hold NaN or inf


class MissingFile(Exception):
    """Marks a problem that is a missing file (raised as FileNotFoundError)."""


def manifest_rows(path: str) -> List[Tuple[int, str, int]]:
    """[(line number, audio path, num_samples)]; a malformed manifest raises at once."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: manifest not found")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.startswith("\ufeff"):
        raise ValueError(f"{path}:1: starts with a UTF-8 byte-order mark (expected plain UTF-8: save it without BOM)")
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path}:1: empty manifest (expected the root folder on the first line)")
    if _is_row(lines[0]):
        raise ValueError(f"{path}:1: expected the root folder on the first line, got the row {lines[0]!r} "
                         "(add the folder the audio paths are relative to as line 1)")
    root = lines[0].strip()
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not _is_row(line):
            raise ValueError(f"{path}:{n}: expected 'relative/path<TAB>num_samples', got {line!r}")
        audio, num = line.split("\t")
        rows.append((n, os.path.join(root, audio), int(num)))
    if not rows:
        raise ValueError(f"{path}: no utterances (expected 'relative/path<TAB>num_samples' rows after the root folder line)")
    return rows


def _is_row(line: str) -> bool:
    parts = line.split("\t")
    return len(parts) == 2 and parts[1].strip().isdigit()


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
    if info.subtype in FLOAT_SUBTYPES:
        import numpy as np

        samples, _ = sf.read(audio, dtype="float64")
        bad = np.flatnonzero(~np.isfinite(samples))
        if bad.size:
            return f"{audio} holds {bad.size} NaN or infinite samples (the first at sample {bad[0]}; expected finite audio)"
    return None


def num_frames(num_samples: int, conv_layers: Sequence[Tuple[int, int, int]]) -> int:
    """Frames the CNN feature extractor makes of ``num_samples`` (fairseq's formula, floor; 0 when too short)."""
    n = num_samples
    for _, kernel, stride in conv_layers:
        if n < kernel:
            return 0
        n = (n - kernel) // stride + 1
    return n


def receptive_field(conv_layers: Sequence[Tuple[int, int, int]]) -> int:
    """The fewest samples that give one frame (400 for wav2vec2-base)."""
    field, hop = 1, 1
    for _, kernel, stride in conv_layers:
        field += (kernel - 1) * hop
        hop *= stride
    return field


def ctc_frames_needed(tokens: Sequence[str]) -> int:
    """Frames a CTC alignment of ``tokens`` needs: one per symbol, plus a blank between equal neighbours."""
    return len(tokens) + sum(a == b for a, b in zip(tokens, tokens[1:]))


def frame_problem(num_samples: int, tokens: Optional[Sequence[str]], conv_layers: Sequence[Tuple[int, int, int]]) -> Optional[str]:
    """What makes a row unlearnable for the model's CNN (``tokens``: its transcript, None for a class label)."""
    frames = num_frames(num_samples, conv_layers)
    if frames < 1:
        return (f"audio of {num_samples} samples gives no frame (the CNN needs at least "
                f"{receptive_field(conv_layers)} samples)")
    if tokens is not None and ctc_frames_needed(tokens) > frames:
        return (f"the transcript needs {ctc_frames_needed(tokens)} CTC frames ({len(tokens)} symbols) but its audio "
                f"({num_samples} samples) gives {frames}")
    return None


def manifest_problems(path: str, sample_rate: int = SAMPLE_RATE) -> Iterator[str]:
    for n, audio, num in manifest_rows(path):
        problem = audio_problem(audio, num, sample_rate)
        if problem:
            yield f"{path}:{n}: {problem}"


def raise_problem(problem: str) -> None:
    """Raise one problem line: FileNotFoundError for a missing file, ValueError otherwise."""
    raise (FileNotFoundError if problem.endswith("not found") or "not found (" in problem else ValueError)(problem)


def read_manifest(path: str, check_audio: bool = True, sample_rate: int = SAMPLE_RATE) -> List[Tuple[int, str, int]]:
    """[(line, audio path, num_samples)] of a manifest; with ``check_audio`` every file must be readable
    mono audio at ``sample_rate`` with the stated number of samples and, in a float format, finite
    samples (else the first problem raises)."""
    rows = manifest_rows(path)
    if check_audio:
        for n, audio, num in rows:
            problem = audio_problem(audio, num, sample_rate)
            if problem:
                raise_problem(f"{path}:{n}: {problem}")
    return rows


def frame_problems(manifest: str, rows: Sequence[Tuple[int, str, int]], labels: Optional[Sequence[str]],
                   conv_layers: Optional[Sequence[Tuple[int, int, int]]] = None,
                   label_path: Optional[str] = None) -> Iterator[str]:
    """Rows CTC cannot learn (``labels``: the transcript lines, None for class labels or no labels), for
    the model's conv stack (wav2vec2-base's when no model is known)."""
    conv_layers = conv_layers or WAV2VEC2_CONV
    for i, (n, _, num) in enumerate(rows):
        tokens = labels[i].split() if labels is not None and i < len(labels) else None
        problem = frame_problem(num, tokens, conv_layers)
        if problem:
            where = f" ({label_path}:{i + 1})" if tokens is not None and label_path else ""
            yield f"{manifest}:{n}: {problem}{where}; remove the row (and its label line) or filter it out"


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
        raise_problem(problem)
    with open(path) as f:
        return f.read().splitlines()


def dictionary_symbols(dictionary) -> set:
    """The ordinary symbols of a fairseq Dictionary (its specials excluded)."""
    return set(dictionary.symbols[dictionary.nspecial:])


def dictionary_lines(path: str) -> Iterator[Tuple[int, str, Optional[str], bool]]:
    """(line number, line, symbol or None if the line is not ``symbol count [#fairseq:overwrite]``,
    overwrite flag) for every line of a fairseq dictionary file."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f.read().splitlines(), start=1):
            body = line.rstrip()
            overwrite = body.endswith(" #fairseq:overwrite")  # fairseq's flag for a deliberate repeat
            parts = body[:-len(" #fairseq:overwrite")].rsplit(" ", 1) if overwrite else body.rsplit(" ", 1)
            ok = len(parts) == 2 and parts[0] and parts[1].isdigit()
            yield n, line, parts[0] if ok else None, overwrite


def dictionary_problems(path: str) -> Iterator[str]:
    """Lines of a fairseq dictionary file that are not ``symbol count [#fairseq:overwrite]``, and repeats."""
    if not os.path.isfile(path):
        yield f"{path}: dictionary not found"
        return
    first = {}
    for n, line, symbol, overwrite in dictionary_lines(path):
        if symbol is None:
            yield f"{path}:{n}: expected 'symbol count', got {line!r}"
        elif symbol in first and not overwrite:
            yield f"{path}:{n}: symbol {symbol!r} already on line {first[symbol]} (expected each symbol once)"
        else:
            first.setdefault(symbol, n)


def check_dictionary(path: str) -> None:
    """Raise the first problem of a dictionary file (before fairseq reads it without naming the line)."""
    for problem in dictionary_problems(path):
        raise_problem(problem)


def dictionary_difference(recorded: Sequence[str], recorded_path: str, actual: Sequence[str], actual_path: str) -> Optional[str]:
    """One line saying how the data dictionary ``actual`` differs from the one a model was trained with
    (None when they are the same, symbols in order)."""
    if list(recorded) == list(actual):
        return None
    for i, (a, b) in enumerate(zip(actual, recorded)):
        if a != b:
            first = f"symbol {i} is {a!r} here but {b!r} in training"
            break
    else:
        first = f"{len(actual)} symbols here but {len(recorded)} in training"
    return (f"{actual_path}: the data dictionary differs from the one the model was trained with ({recorded_path}): "
            f"{first}; decode and train with the training dictionary")
