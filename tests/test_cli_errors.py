"""One error wrapper (hjprune_manifests.cli.run_cli) for every command of both packages: one line
``PROG: error: MESSAGE`` and the command's exit status; other exceptions are not swallowed."""

import glob
import os
import subprocess
import sys

import pytest

from hjprune_fairseq.cli import cost, examples
from hjprune_manifests import sentencepiece_labels, synth, tools
from hjprune_manifests.cli import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_returns_the_status_of_the_command(capsys):
    assert run_cli("tool", lambda: 0) == 0 and run_cli("tool", lambda: 1) == 1
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("error", [ValueError("a.tsv:3: bad row"), FileNotFoundError("a.tsv: not found"),
                                   FileExistsError("out: exists")])
def test_a_user_error_is_one_line_and_status_2(capsys, error):
    def fail():
        raise error

    assert run_cli("hjprune-x", fail) == 2
    assert capsys.readouterr().err == f"hjprune-x: error: {error}\n"


def test_chosen_errors_status_and_no_prog(capsys):
    def fail():
        raise RuntimeError("stage failed")

    assert run_cli("hjprune-x", fail, (RuntimeError,), status=1) == 1
    assert capsys.readouterr().err == "hjprune-x: error: stage failed\n"
    assert run_cli(None, fail, (RuntimeError,)) == 2
    assert capsys.readouterr().err == "error: stage failed\n"


def test_other_errors_propagate_and_cleanup_runs():
    done = []

    def fail():
        try:
            raise KeyError("a bug")
        finally:
            done.append(True)

    with pytest.raises(KeyError):
        run_cli("hjprune-x", fail, (ValueError,))
    assert done == [True]


@pytest.mark.parametrize("main, argv, line", [
    (examples.main, ["no_such_set"], "hjprune-examples: error: "),
    (cost.main, ["{tmp}/nope.pt"], "hjprune-cost: error: {tmp}/nope.pt"),
    (tools.validate_main, ["{tmp}", "--conv-layers", "[(1, 2)"], "hjprune-validate: error: "),
    (tools.manifest_main, ["{tmp}/nope", "{tmp}/out"], "error: {tmp}/nope: folder not found"),
    (sentencepiece_labels.main, ["{tmp}"], "hjprune-spm: error: {tmp}"),
    (synth.main, ["{tmp}/corpus", "--unseen-fraction", "0.1"], "hjprune-synth: error: --unseen-fraction"),
])
def test_each_command_keeps_its_line_and_status(tmp_path, capsys, main, argv, line):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line.format(tmp=tmp_path)) and err.count("\n") == 1, err


def test_no_command_writes_its_own_error_line():
    files = (glob.glob(os.path.join(REPO, "hjprune_fairseq", "cli", "*.py"))
             + glob.glob(os.path.join(REPO, "manifests", "*.py")))
    own = [f for f in files if "error: {e}" in open(f).read() and not f.endswith(os.path.join("manifests", "cli.py"))]
    assert own == []


def test_the_wrapper_does_not_import_hjprune_fairseq():
    code = ("import sys, hjprune_manifests.cli\n"
            "print(sorted(m for m in sys.modules if m.startswith(('hjprune_fairseq', 'fairseq', 'torch'))))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
