"""The demo's WER / accuracy come from fairseq's scorers fed per utterance (hjprune_fairseq.plugin.scoring)
and equal, on a fixed fairseq-generate output, what the demo's own formulas gave before."""

import math

import editdistance
import pytest
from fairseq.scoring import SCORER_REGISTRY

from hjprune_fairseq.plugin.scoring import parse_generate, subset_scores
from hjprune_fairseq.tools.demo.pipeline import SCORING

# What fairseq-generate writes to generate-test.txt (S/T/H/D/P lines per utterance, out of id order,
# then its summary); utterance 3 decodes to nothing.
ASR = """\
S-4\twav/test_0004.wav
T-4\tSHE SELLS SEA SHELLS
H-4\t-0.41\tS H E | S E L L S | S E A | S H E L L S |
D-4\t-0.41\tSHE SELLS SEE SHELLS
P-4\t-0.1 -0.2
S-0\twav/test_0000.wav
T-0\tTHE CAT SAT ON THE MAT
H-0\t-0.12\tT H E | C A T | S A T | O N | T H E | M A T |
D-0\t-0.12\tTHE CAT SAT ON THE MAT
P-0\t-0.1 -0.2
S-2\twav/test_0002.wav
T-2\tA BIRD IN THE HAND
D-2\t-0.77\tA BIRD IN IN THE HAND
S-1\twav/test_0001.wav
T-1\tGOOD MORNING
D-1\t-0.93\tGOOD
S-3\twav/test_0003.wav
T-3\tOPEN THE DOOR
D-3\t-2.50\t
2026-11-23 12:00:00 | INFO | fairseq_cli.generate | Generate test with beam=5: WER: 35.29
"""
SLU = """\
T-1\tset_alarm
D-1\t-0.01\tset_alarm
T-0\tplay_music
D-0\t-0.20\tweather_query
T-2\tweather_query
D-2\t-0.03\tweather_query
T-3\tplay_music
D-3\t-0.50\tplay_music
T-4\tset_alarm
D-4\t-0.40\tplay_music
"""
SEEN = {0, 2, 4}


# The demo's own formulas before it used fairseq's scorers: the figures it must keep.
def old_wer(refs, hyps, ids):
    words = sum(len(refs[i].split()) for i in ids)
    return 100.0 * sum(editdistance.eval(refs[i].split(), hyps[i].split()) for i in ids) / words if words else float("nan")


def old_accuracy(refs, hyps, ids):
    return 100.0 * sum(refs[i] == hyps[i] for i in ids) / len(ids) if ids else float("nan")


def subsets(metric, ids):
    return {metric: ids, f"{metric}_seen": [i for i in ids if i in SEEN],
            f"{metric}_unseen": [i for i in ids if i not in SEEN], f"{metric}_none": []}


@pytest.mark.parametrize("task, text, old", [("asr", ASR, old_wer), ("slu", SLU, old_accuracy)])
def test_scorers_give_the_old_figures(tmp_path, task, text, old):
    path = tmp_path / "generate-test.txt"
    path.write_text(text)
    hyps, refs = parse_generate(str(path))
    assert sorted(refs) == sorted(hyps) == [0, 1, 2, 3, 4]
    metric = "wer" if task == "asr" else "accuracy"
    new = subset_scores(SCORING[task], refs, hyps, subsets(metric, sorted(refs)))
    expected = {name: old(refs, hyps, ids) for name, ids in subsets(metric, sorted(refs)).items()}
    assert list(new) == list(expected)
    for name in expected:
        assert new[name] == expected[name] or (math.isnan(new[name]) and math.isnan(expected[name])), name
    assert math.isnan(new[f"{metric}_none"])  # an empty subset is not a perfect (or a zero) score


def test_the_figures_themselves(tmp_path):
    """Counted by hand: 1 + 0 + 1 + 1 + 3 edits over 4 + 6 + 5 + 2 + 3 words."""
    (tmp_path / "asr.txt").write_text(ASR)
    (tmp_path / "slu.txt").write_text(SLU)
    hyps, refs = parse_generate(str(tmp_path / "asr.txt"))
    assert hyps[3] == "" and refs[3] == "OPEN THE DOOR"
    wer = subset_scores("wer", refs, hyps, {"all": [0, 1, 2, 3, 4], "seen": [0, 2, 4]})
    assert wer == {"all": pytest.approx(100 * 6 / 20), "seen": pytest.approx(100 * 2 / 15)}
    hyps, refs = parse_generate(str(tmp_path / "slu.txt"))
    assert subset_scores("hjprune_accuracy", refs, hyps, {"all": [0, 1, 2, 3, 4]}) == {"all": pytest.approx(60.0)}


def test_the_demo_scores_with_what_fairseq_generate_used():
    assert set(SCORING.values()) <= set(SCORER_REGISTRY)


def test_missing_lines_are_refused(tmp_path):
    path = tmp_path / "generate-test.txt"
    path.write_text(ASR.replace("D-2\t-0.77\tA BIRD IN IN THE HAND\n", ""))
    with pytest.raises(RuntimeError, match="lacks T-/D- lines"):
        parse_generate(str(path))
