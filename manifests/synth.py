"""hjprune-synth: deterministic synthetic speech corpora made with eSpeak NG (hjprune_manifests.espeak).

- ``--task asr``: sentences from a small grammar, letter targets (``.ltr``, ``dict.ltr.txt``) and
  word transcripts (``.wrd``).
- ``--task slu``: spoken commands from templates with slots, one intent each (``.label``,
  ``dict.label.txt``) in the spirit of SLURP, plus the same transcripts as ``asr``.

Train and valid use the training voices and rates; the test split uses voices and rates never
heard in training (an out-of-domain check, like the paper's TED-LIUM one). A share of the test
sentences (``--unseen-fraction``, default one half) never occurs in training: a small grammar would
otherwise repeat training sentences word for word. ``{split}.meta.tsv`` records each utterance's
voice, rate, pitch, whether its sentence occurs in training, and its intent.
"""

import argparse
import multiprocessing
import os
import random
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from . import output_dir
from .audio import SAMPLE_RATE
from .cli import run_cli
from .espeak import Espeak
from .labels import by_count, letters, write_dictionary

TOOL = "hjprune-synth"  # the name of its marker file, .hjprune-synth (output_dir)

TRAIN_VOICES = ["en-us", "en", "en-gb-x-rp", "en-us+m3", "en+f2", "en-us+f4", "en+m5"]
TRAIN_RATES = [140, 160, 180]
TEST_VOICES = ["en-gb-scotland", "en-029", "en+f3", "en-us-nyc"]
TEST_RATES = [150, 170, 190]
PITCHES = [35, 45, 55, 65, 75]

ASR_WORDS = {
    "adj": "red green blue small large quiet busy happy old new".split(),
    "noun": "cat dog bird farmer doctor teacher robot river garden window".split(),
    "verb": "sees finds follows paints moves likes opens watches".split(),
    "name": "anna peter maria john lucy david".split(),
    "number": "two three four five six seven eight nine".split(),
    "things": "apples letters boxes books chairs stones".split(),
    "when": "today tomorrow tonight yesterday".split(),
    "place": "kitchen station market school harbour forest".split(),
}
ASR_TEMPLATES = [
    "the {adj} {noun} {verb} the {noun}",
    "{name} carries {number} {things} to the {place} {when}",
    "one {adj} {noun} waits near the {place}",
    "{name} {verb} the {adj} {noun} {when}",
]

SLU_WORDS = {
    "time": "six am|seven thirty|eight fifteen|nine pm|noon|midnight|five forty five|ten am|eleven thirty|"
            "four pm|half past two|quarter to nine".split("|"),
    "city": "paris london tokyo berlin madrid boston chicago sydney rome dublin oslo cairo".split(),
    "day": "today|tomorrow|on monday|on friday|this weekend|on tuesday|next week|tonight".split("|"),
    "genre": "jazz rock classical pop folk blues reggae country".split(),
    "person": "anna peter maria john lucy david emma paul sarah tom".split(),
    "room": "kitchen bedroom office garage hallway bathroom attic basement".split(),
    "topic": "sports|science|business|world|technology|health|music|weather".split("|"),
}
SLU_TEMPLATES: List[Tuple[str, str]] = [
    ("alarm_set", "set an alarm for {time}"), ("alarm_set", "wake me up at {time} {day}"),
    ("alarm_remove", "cancel my {time} alarm"), ("alarm_remove", "delete the alarm for {time}"),
    ("weather_query", "what is the weather in {city} {day}"), ("weather_query", "will it rain in {city} {day}"),
    ("music_play", "play some {genre} music"), ("music_play", "put on {genre} in the {room}"),
    ("calendar_set", "add a meeting with {person} {day}"), ("calendar_set", "schedule lunch with {person} at {time}"),
    ("calendar_query", "what is on my calendar {day}"), ("calendar_query", "do i have meetings {day}"),
    ("lights_on", "turn on the lights in the {room}"), ("lights_off", "turn off the {room} lights"),
    ("news_query", "tell me the latest {topic} news"), ("taxi_book", "book a taxi to {city} at {time}"),
]


def _fill(template: str, words: Dict[str, List[str]], rng: random.Random) -> str:
    out = template
    while "{" in out:
        i = out.index("{")
        j = out.index("}", i)
        out = out[:i] + rng.choice(words[out[i + 1:j]]) + out[j + 1:]
    return out


def sentence_pools(task: str, rng: random.Random, n_seen: int, n_unseen: int) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """Two disjoint pools of distinct (intent, sentence): one for training, one held out."""
    templates = SLU_TEMPLATES if task == "slu" else [("", t) for t in ASR_TEMPLATES]
    words = SLU_WORDS if task == "slu" else ASR_WORDS
    seen: Dict[str, str] = {}
    tries = 0
    while len(seen) < n_seen + n_unseen:
        intent, template = rng.choice(templates)
        seen.setdefault(_fill(template, words, rng), intent)
        tries += 1
        if tries > 100 * (n_seen + n_unseen):
            raise ValueError(f"the {task} grammar cannot make {n_seen + n_unseen} distinct sentences")
    items = [(intent, text) for text, intent in seen.items()]
    rng.shuffle(items)
    return items[:n_seen], items[n_seen:]


def plan(task: str, sizes: Dict[str, int], seed: int, unseen_fraction: float) -> Dict[str, List[dict]]:
    """Every utterance of every split: text, intent, voice, rate, pitch, seen."""
    if not 1 / 3 <= unseen_fraction <= 1:
        raise ValueError(f"--unseen-fraction must be in [1/3, 1], got {unseen_fraction}")
    rng = random.Random(seed)
    n_unseen = int(round(sizes.get("test", 0) * unseen_fraction))
    n_seen = max(1, min(sizes["train"] // 3, 400))  # sentences repeat across voices, as speakers would
    pool, held_out = sentence_pools(task, rng, n_seen, n_unseen)
    out: Dict[str, List[dict]] = {}
    used = []
    for split, n in sizes.items():
        test = split == "test"
        rows = []
        for i in range(n):
            if test and i < n_unseen:
                intent, text, seen = *held_out[i], False
            else:
                intent, text = rng.choice(used if test and used else pool)
                seen = True
            if split == "train":
                used.append((intent, text))
            voices, rates = (TEST_VOICES, TEST_RATES) if test else (TRAIN_VOICES, TRAIN_RATES)
            rows.append({"text": text, "intent": intent, "voice": rng.choice(voices), "rate": rng.choice(rates),
                         "pitch": rng.choice(PITCHES), "seen": seen, "seed": rng.randrange(2**31)})
        if test:
            rng.shuffle(rows)
        out[split] = rows
    return out


def wav_path(split: str, i: int) -> str:
    return os.path.join("wav", split, f"{i:06d}.wav")


def synthesize_split(root: str, split: str, rows: List[dict]) -> List[int]:
    """Synthesise one split's utterances into ``root``; returns their numbers of samples."""
    import soundfile as sf

    engine = Espeak()
    os.makedirs(os.path.join(root, "wav", split), exist_ok=True)
    lengths = []
    for i, r in enumerate(rows):
        wav = engine.synthesize(r["text"], r["voice"], r["rate"], r["pitch"], seed=r["seed"])
        sf.write(os.path.join(root, wav_path(split, i)), wav, SAMPLE_RATE, subtype="PCM_16")
        lengths.append(len(wav))
    return lengths


def write_corpus(out: str, task: str, sizes: Dict[str, int], seed: int = 1, unseen_fraction: float = 0.5,
                 overwrite: bool = False) -> Dict[str, int]:
    """Synthesise the corpus into ``out``: a new or empty folder, or (with ``overwrite``) one holding
    only an earlier hjprune-synth corpus, whose files alone are replaced; returns {split: utterances}."""
    output_dir.check(out, TOOL, overwrite, "a corpus")
    if "train" not in sizes or sizes["train"] < 1:
        raise ValueError("the corpus needs a train split of at least one utterance")
    utterances = plan(task, sizes, seed, unseen_fraction)
    with output_dir.staging(out) as tmp:
        _write_files(tmp, out, task, utterances)
        output_dir.publish(tmp, out, TOOL, overwrite, "a corpus")  # a new folder: all or nothing
    return {s: len(r) for s, r in utterances.items()}


def _write_files(tmp: str, out: str, task: str, utterances: Dict[str, List[dict]]) -> None:
    """Audio, manifests (rooted at ``out``), labels and dictionaries of the corpus, into ``tmp``."""
    # One fresh process per split: eSpeak NG's output depends on everything it synthesised before in
    # the same process, so this is what makes the audio a function of the seed alone.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes=min(2, len(utterances)), maxtasksperchild=1) as pool:
        lengths = dict(zip(utterances, pool.starmap(synthesize_split, [(tmp, s, r) for s, r in utterances.items()])))
    letters_seen: Dict[str, int] = {}
    for split, rows in utterances.items():
        tsv, wrd, ltr, lab, meta = [os.path.abspath(out)], [], [], [], ["file\tvoice\trate\tpitch\tseen\tintent\ttext"]
        for i, (r, n) in enumerate(zip(rows, lengths[split])):
            rel = wav_path(split, i)
            tsv.append(f"{rel}\t{n}")
            wrd.append(r["text"].upper())
            ltr.append(letters(r["text"]))
            lab.append(r["intent"])
            meta.append(f"{rel}\t{r['voice']}\t{r['rate']}\t{r['pitch']}\t{int(r['seen'])}\t{r['intent']}\t{r['text']}")
            for c in ltr[-1].split():
                letters_seen[c] = letters_seen.get(c, 0) + (split == "train")
        files = {"tsv": tsv, "wrd": wrd, "ltr": ltr, "meta.tsv": meta}
        if task == "slu":
            files["label"] = lab
        for ext, lines in files.items():
            with open(os.path.join(tmp, f"{split}.{ext}"), "w") as f:
                f.write("\n".join(lines) + "\n")
    write_dictionary(os.path.join(tmp, "dict.ltr.txt"), by_count(letters_seen))
    if task == "slu":
        write_dictionary(os.path.join(tmp, "dict.label.txt"), [(i, 1) for i in sorted({i for i, _ in SLU_TEMPLATES})])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-synth", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="folder to write (manifests, labels, dictionaries, wav/)")
    p.add_argument("--task", choices=["asr", "slu"], default="asr", help="asr: letter targets; slu: intents too")
    p.add_argument("--train", type=int, default=1500, help="training utterances (default: 1500)")
    p.add_argument("--valid", type=int, default=100, help="validation utterances (default: 100)")
    p.add_argument("--test", type=int, default=200, help="test utterances, unseen voices (default: 200)")
    p.add_argument("--unseen-fraction", type=float, default=0.5,
                   help="share of test sentences never in training, in [1/3, 1] (default: 0.5)")
    p.add_argument("--seed", type=int, default=1, help="seed of sentences, voices, rates, pitches (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier hjprune-synth corpus in OUT (its files only)")
    a = p.parse_args(argv)

    def go() -> int:
        sizes = write_corpus(a.out, a.task, {"train": a.train, "valid": a.valid, "test": a.test}, a.seed,
                             a.unseen_fraction, a.overwrite)
        print(f"{a.out}: " + ", ".join(f"{s} {n}" for s, n in sizes.items()) + f" utterances ({a.task})")
        return 0

    return run_cli(TOOL, go, (ValueError, FileExistsError))


if __name__ == "__main__":
    sys.exit(main())
