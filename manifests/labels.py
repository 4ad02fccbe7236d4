"""Label and dictionary files of wav2vec-style datasets, written one way by every data tool
(hjprune-synth, hjprune-labels, hjprune-spm).

Letter targets (``{split}.ltr``): the upper-cased letters of each word, space-separated, each word
followed by ``|``, as fairseq's wav2vec2 fine-tuning expects. Dictionary (``dict.{labels}.txt``):
``symbol count`` per line, each symbol once; fairseq numbers the symbols in file order.
"""

from typing import Iterable, List, Mapping, Tuple

from . import output_dir


def letters(text: str) -> str:
    """'hello world' -> 'H E L L O | W O R L D |' (wav2vec2 letter targets)."""
    return " ".join(" ".join(w.upper()) + " |" for w in text.split())


def write_lines(path: str, lines: Iterable[str]) -> None:
    """Write through a fresh temporary file that replaces ``path`` at the end: never a half-written file,
    never a user's ``PATH.tmp`` (:func:`output_dir.write_atomically`)."""
    text = "\n".join(lines) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    output_dir.write_atomically(path, write)


def by_count(counts: Mapping[str, int]) -> List[Tuple[str, int]]:
    """``(symbol, count)`` pairs, the most frequent first, equal counts in symbol order."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def write_dictionary(path: str, symbols: Iterable[Tuple[str, int]]) -> None:
    """A fairseq dictionary file: ``symbol count`` per line, in the order given (it fixes the symbols'
    indices, hence the model's outputs)."""
    seen = set()
    lines = []
    for symbol, count in symbols:
        if not symbol or symbol.split() != [symbol]:
            raise ValueError(f"{path}: symbol {symbol!r} is empty or holds whitespace (expected one token)")
        if symbol in seen:
            raise ValueError(f"{path}: symbol {symbol!r} given twice (expected each symbol once)")
        seen.add(symbol)
        lines.append(f"{symbol} {int(count)}")
    write_lines(path, lines)
