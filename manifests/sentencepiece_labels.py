"""hjprune-spm: sentencepiece targets for wav2vec CTC fine-tuning.

Trains a sentencepiece model on the training split's word transcripts and writes, for every split,
``{split}.{ext}`` (space-separated pieces, one line per manifest row) and ``dict.{ext}.txt``. Train
with ``task.labels={ext}``, decode with ``fairseq-generate ... --labels {ext} --post-process
sentencepiece`` to get words back. Word transcripts come from ``{split}.wrd`` or, where that is
missing, from the letter labels ``{split}.ltr`` ("H E L L O | W O R L D |").

Every file it would write (the labels, the dictionary, ``spm_{ext}.model`` and ``spm_{ext}.vocab``) is
checked before anything is written: an existing one is replaced only with ``--overwrite``, the
transcripts it reads never (``--ext ltr`` on letter labels is refused).
"""

import argparse
import collections
import os
import shutil
import sys
import tempfile
from typing import Dict, List, Optional

from . import output_dir
from .cli import run_cli
from .labels import write_dictionary, write_lines


def transcripts(data: str, split: str) -> str:
    """The file the word transcripts of ``split`` are read from: {split}.wrd, else {split}.ltr."""
    wrd, ltr = os.path.join(data, f"{split}.wrd"), os.path.join(data, f"{split}.ltr")
    for path in (wrd, ltr):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{wrd}: not found (nor {ltr}); expected word or letter transcripts of split {split!r}")


def read_words(data: str, split: str) -> List[str]:
    """One word transcript per manifest row, from {split}.wrd or {split}.ltr."""
    path = transcripts(data, split)
    lines = open(path).read().splitlines()
    if path.endswith(".ltr"):
        lines = [" ".join("".join(line.split()).replace("|", " ").split()) for line in lines]
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{path}:{n}: empty transcript (expected at least one word)")
    return lines


def outputs(data: str, splits: List[str], ext: str) -> List[str]:
    """Every file ``build`` writes: {split}.EXT, dict.EXT.txt, spm_EXT.model, spm_EXT.vocab."""
    return ([os.path.join(data, f"{s}.{ext}") for s in splits] +
            [os.path.join(data, name) for name in (f"dict.{ext}.txt", f"spm_{ext}.model", f"spm_{ext}.vocab")])


def build(data: str, splits: List[str], train_split: str, ext: str, vocab_size: int, model_type: str,
          overwrite: bool = False) -> Dict[str, int]:
    """Train on ``train_split`` and write labels for ``splits``; returns {split: lines written}. Refused
    before anything is written: an existing output without ``overwrite``, an output that is one of the
    transcripts read, and ``ext`` tsv (the manifests)."""
    import sentencepiece as spm

    if not ext or ext != os.path.basename(ext) or ext.startswith("."):
        raise ValueError(f"--ext {ext!r}: expected a file extension such as spm")
    if ext == "tsv":
        raise ValueError(f"--ext {ext!r}: {{split}}.tsv are the manifests; choose another label extension")
    sources = {transcripts(data, s): f"the transcripts of split {s!r}, read for its words; choose another --ext"
               for s in splits}
    output_dir.check_files(outputs(data, splits, ext), overwrite, sources)
    words = {s: read_words(data, s) for s in splits}
    with tempfile.TemporaryDirectory() as tmp:  # sentencepiece writes PREFIX.model and PREFIX.vocab itself
        corpus, prefix = os.path.join(tmp, "corpus.txt"), os.path.join(tmp, "spm")
        with open(corpus, "w") as f:
            f.write("\n".join(words[train_split]) + "\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
            character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, hard_vocab_limit=False, minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        pieces = {s: [" ".join(sp.encode(line, out_type=str)) for line in lines] for s, lines in words.items()}
        counts = collections.Counter(p for line in pieces[train_split] for p in line.split())
        for s, lines in pieces.items():  # symbols of other splits too, so none is unknown to the dictionary
            counts.update({p: 0 for line in lines for p in line.split() if p not in counts})
        written = {}
        for s, lines in pieces.items():
            write_lines(os.path.join(data, f"{s}.{ext}"), lines)
            written[s] = len(lines)
        write_dictionary(os.path.join(data, f"dict.{ext}.txt"), counts.most_common())
        for suffix in ("model", "vocab"):
            output_dir.write_atomically(os.path.join(data, f"spm_{ext}.{suffix}"),
                                        lambda dst, src=f"{prefix}.{suffix}": shutil.copyfile(src, dst))
    return written


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-spm", description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="folder with the manifests and {split}.wrd or {split}.ltr transcripts")
    p.add_argument("--splits", nargs="+", default=["train", "valid"], help="splits to label (default: train valid)")
    p.add_argument("--train-split", default="train", help="split the model is trained on (default: train)")
    p.add_argument("--ext", default="spm", help="label extension: {split}.EXT, dict.EXT.txt (default: spm)")
    p.add_argument("--vocab-size", type=int, default=256, help="sentencepiece vocabulary size (default: 256)")
    p.add_argument("--model-type", choices=["unigram", "bpe", "char", "word"], default="unigram",
                   help="sentencepiece model type (default: unigram)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing {split}.EXT, dict.EXT.txt and spm_EXT.* files (never the transcripts read)")
    a = p.parse_args(argv)
    if a.train_split not in a.splits:
        p.error(f"--train-split {a.train_split!r} must be one of --splits {a.splits}")

    def go() -> int:
        written = build(a.data, a.splits, a.train_split, a.ext, a.vocab_size, a.model_type, a.overwrite)
        for s, n in written.items():
            print(f"{os.path.join(a.data, s + '.' + a.ext)}: {n} lines")
        print(f"{os.path.join(a.data, 'dict.' + a.ext + '.txt')}, {os.path.join(a.data, 'spm_' + a.ext + '.model')}")
        return 0

    return run_cli("hjprune-spm", go)


if __name__ == "__main__":
    sys.exit(main())
