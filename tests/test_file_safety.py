"""No command deletes or overwrites a file it did not write: hjprune-synth and hjprune-demo write
into new or empty folders or over their own earlier output (marker files, hjprune_manifests.output_dir),
and refuse anything else with one line; hjprune-export never writes over its input. Every file is written
with the mode open() would give it (the umask's, or the replaced file's own). The data tools' own refusals
are tested beside them (test_manifest_tools, test_sentencepiece)."""

import json
import os

import pytest
from fairseq_fixtures import save_like_trainer
from helpers import gated_model

from hjprune_fairseq.cli import demo, export
from hjprune_fairseq.tools.demo import pipeline as demo_pipeline
from hjprune_manifests import synth

TINY = ["--train", "2", "--valid", "1", "--test", "1"]
QUICK_DEMO = ["--quick", "--precision", "fp32"]  # no bf16 timing: the tests below fake the pipeline


def marker(path, tool):
    return json.load(open(os.path.join(path, f".{tool}")))


def write(path, text="mine"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(text)


def refused(capsys, tool, line):
    assert capsys.readouterr().err == f"{tool}: error: {line}\n"


# ---- hjprune-synth -------------------------------------------------------------------------------
def test_synth_new_folder_leaves_its_siblings_alone(tmp_path, capsys):
    write(str(tmp_path / "corpus.partial" / "keep.txt"))  # the old code's temporary name
    assert synth.main([str(tmp_path / "corpus"), *TINY]) == 0
    assert open(tmp_path / "corpus.partial" / "keep.txt").read() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["corpus", "corpus.partial"]  # no temporary sibling left
    m = marker(tmp_path / "corpus", "hjprune-synth")
    assert m["tool"] == "hjprune-synth" and "train.tsv" in m["entries"] and "wav" in m["entries"]
    assert set(os.listdir(tmp_path / "corpus")) == set(m["entries"]) | {".hjprune-synth"}
    assert oct(os.stat(tmp_path / "corpus").st_mode & 0o777) != oct(0o700)  # not mkdtemp's mode


def test_synth_empty_folder_is_filled_in_place(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    inode = os.stat(out).st_ino
    assert synth.main([str(out), *TINY]) == 0
    assert os.stat(out).st_ino == inode and os.path.exists(out / "train.tsv")
    assert os.listdir(tmp_path) == ["corpus"]


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_synth_refuses_a_folder_with_user_files(tmp_path, capsys, overwrite):
    out = tmp_path / "mine"
    write(str(out / "notes.txt"))
    write(str(out / "recordings" / "me.wav"))
    assert synth.main([str(out), *TINY, *overwrite]) == 2
    refused(capsys, "hjprune-synth", f"{out}: holds files this tool did not write (notes.txt, recordings/); "
                                     "choose a new or empty folder")
    assert sorted(os.listdir(out)) == ["notes.txt", "recordings"] and os.listdir(tmp_path) == ["mine"]
    assert open(out / "recordings" / "me.wav").read() == "mine"


def test_synth_refuses_the_current_project(tmp_path, capsys, monkeypatch):
    write(str(tmp_path / "project" / "src" / "train.py"))
    monkeypatch.chdir(tmp_path / "project")
    assert synth.main([".", *TINY, "--overwrite"]) == 2
    refused(capsys, "hjprune-synth", ".: holds files this tool did not write (src/); choose a new or empty folder")
    assert open(tmp_path / "project" / "src" / "train.py").read() == "mine"
    assert os.listdir(tmp_path) == ["project"]


def test_synth_overwrite_replaces_only_its_own_corpus(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert synth.main([str(out), *TINY, "--task", "slu"]) == 0
    assert synth.main([str(out), *TINY]) == 2
    refused(capsys, "hjprune-synth", f"{out}: already holds a corpus (pass --overwrite to replace it)")
    write(str(out / "notes.txt"))
    assert synth.main([str(out), *TINY, "--overwrite"]) == 2  # a user file beside the corpus
    refused(capsys, "hjprune-synth", f"{out}: holds files this tool did not write (notes.txt); "
                                     "choose a new or empty folder")
    assert os.path.exists(out / "train.label")
    os.remove(out / "notes.txt")
    assert synth.main([str(out), *TINY, "--overwrite"]) == 0  # asr over slu: its own .label files go too
    assert not os.path.exists(out / "train.label") and "train.label" not in marker(out, "hjprune-synth")["entries"]
    assert set(os.listdir(out)) == set(marker(out, "hjprune-synth")["entries"]) | {".hjprune-synth"}
    assert os.listdir(tmp_path) == ["corpus"]


# ---- hjprune-demo: the folder check in main(), the pipeline replaced -----------------------------
class Ran(RuntimeError):
    pass


def earlier_demo(out):
    """What an earlier run leaves: markers, a corpus, a checkpoint, a report."""
    write(str(out / "data" / "train.tsv"), "old corpus")
    json.dump({"tool": "hjprune-synth", "entries": ["train.tsv"]}, open(out / "data" / ".hjprune-synth", "w"))
    write(str(out / "checkpoints" / "pretrain" / "checkpoint_last.pt"), "old checkpoint")
    json.dump({"tool": "hjprune-demo", "entries": ["pretrain"]}, open(out / "checkpoints" / ".hjprune-demo", "w"))
    write(str(out / "report.json"), "{}")
    json.dump({"tool": "hjprune-demo", "entries": ["checkpoints", "data", "report.json"]},
              open(out / ".hjprune-demo", "w"))


@pytest.fixture
def no_pipeline(monkeypatch):
    """Demo.pipeline trains one stage (its fairseq run faked: one file in the save folder), then stops."""
    def step(self, name, cmd, cwd=None):
        save = next(c.split("=", 1)[1] for c in cmd if c.startswith("checkpoint.save_dir="))
        write(os.path.join(save, "checkpoint_last.pt"), "new checkpoint")
        write(os.path.join(cwd or self.out, ".hydra", "config.yaml"), "cfg")  # hydra's files, where the stage runs
        if getattr(self, "user_drops", None):
            write(self.user_drops, "mine")  # a user's file, put in OUT while the stage runs

    def pipeline(self):
        self.train("pretrain", demo_pipeline.config_set_dir("tiny"), "pretrain", [])
        raise Ran("pipeline stopped by the test")

    monkeypatch.setattr(demo_pipeline.Demo, "step", step)
    monkeypatch.setattr(demo_pipeline.Demo, "pipeline", pipeline)


def test_demo_refuses_a_folder_with_user_data(tmp_path, capsys, no_pipeline):
    out = tmp_path / "mywork"
    write(str(out / "data" / "my_corpus.tsv"))
    assert demo.main([*QUICK_DEMO, "--out", str(out)]) == 2
    refused(capsys, "hjprune-demo", f"{out}: holds files this tool did not write (data/); choose a new or empty folder")
    assert os.listdir(out) == ["data"] and os.listdir(out / "data") == ["my_corpus.tsv"]


def test_demo_refuses_earlier_results_without_overwrite(tmp_path, capsys, no_pipeline):
    earlier_demo(tmp_path)
    assert demo.main([*QUICK_DEMO, "--out", str(tmp_path)]) == 2
    refused(capsys, "hjprune-demo", f"{tmp_path}: already holds results (pass --overwrite to replace it)")
    assert open(tmp_path / "checkpoints" / "pretrain" / "checkpoint_last.pt").read() == "old checkpoint"


def test_demo_overwrite_refuses_earlier_results_beside_a_user_file(tmp_path, capsys, no_pipeline):
    earlier_demo(tmp_path)
    write(str(tmp_path / "notes.txt"))
    before = sorted(os.listdir(tmp_path))
    assert demo.main([*QUICK_DEMO, "--out", str(tmp_path), "--overwrite"]) == 2
    refused(capsys, "hjprune-demo", f"{tmp_path}: holds files this tool did not write (notes.txt); "
                                    "choose a new or empty folder")
    assert sorted(os.listdir(tmp_path)) == before and open(tmp_path / "notes.txt").read() == "mine"
    assert open(tmp_path / "report.json").read() == "{}"


def test_demo_overwrite_refuses_a_user_file_in_its_corpus(tmp_path, capsys, no_pipeline):
    earlier_demo(tmp_path)
    write(str(tmp_path / "data" / "my_corpus.tsv"))
    assert demo.main([*QUICK_DEMO, "--out", str(tmp_path), "--overwrite"]) == 2
    refused(capsys, "hjprune-demo", f"{tmp_path / 'data'}: holds files this tool did not write (my_corpus.tsv); "
                                    "choose a new or empty folder")
    assert open(tmp_path / "data" / "my_corpus.tsv").read() == "mine"


def test_demo_overwrite_replaces_its_checkpoints_and_keeps_a_user_file(tmp_path, capsys, no_pipeline):
    earlier_demo(tmp_path)
    write(str(tmp_path / "checkpoints" / "mine.pt"))  # inside the demo's own folder, not listed there
    assert demo.main([*QUICK_DEMO, "--out", str(tmp_path), "--overwrite"]) == 1
    assert capsys.readouterr().err == "hjprune-demo: error: pipeline stopped by the test\n"
    ckpts = tmp_path / "checkpoints"
    assert open(ckpts / "pretrain" / "checkpoint_last.pt").read() == "new checkpoint"
    assert open(ckpts / "mine.pt").read() == "mine"
    assert sorted(os.listdir(ckpts)) == [".hjprune-demo", "mine.pt", "pretrain"]  # no temporary folder left
    assert marker(ckpts, "hjprune-demo")["entries"] == ["pretrain"]
    assert set(marker(tmp_path, "hjprune-demo")["entries"]) == {"checkpoints", "data", "logs", "report.json"}


def test_demo_new_folder_records_what_it_wrote(tmp_path, capsys, no_pipeline):
    out = tmp_path / "new"
    assert demo.main([*QUICK_DEMO, "--out", str(out)]) == 1
    assert marker(out, "hjprune-demo") == {"tool": "hjprune-demo", "entries": ["checkpoints", "logs"]}
    assert demo.main([*QUICK_DEMO, "--out", str(out)]) == 2  # now it holds results of its own
    assert capsys.readouterr().err.endswith(f"{out}: already holds results (pass --overwrite to replace it)\n")


def test_demo_records_only_what_it_wrote(tmp_path, capsys, no_pipeline, monkeypatch):
    """A file a user puts in OUT during a run is not taken for the demo's: a later --overwrite refuses it."""
    out = tmp_path / "new"
    monkeypatch.setattr(demo_pipeline.Demo, "user_drops", str(out / "notes.txt"), raising=False)
    assert demo.main([*QUICK_DEMO, "--out", str(out)]) == 1
    assert marker(out, "hjprune-demo") == {"tool": "hjprune-demo", "entries": ["checkpoints", "logs"]}
    capsys.readouterr()
    monkeypatch.setattr(demo_pipeline.Demo, "user_drops", None)
    assert demo.main([*QUICK_DEMO, "--out", str(out), "--overwrite"]) == 2
    refused(capsys, "hjprune-demo", f"{out}: holds files this tool did not write (notes.txt); choose a new or empty folder")
    assert open(out / "notes.txt").read() == "mine"


def test_demo_refuses_a_users_file_where_it_would_write(tmp_path):
    """report.md put in OUT by a user during a run: refused before any report file is written, and kept."""
    from hjprune_fairseq.tools.demo.report import write_report
    from hjprune_manifests import output_dir

    out = tmp_path / "new"
    output_dir.claim(str(out), "hjprune-demo", False)
    write(str(out / "report.md"))
    with pytest.raises(FileExistsError, match=f"^{out / 'report.md'}: was not written by hjprune-demo; move it away "
                                              "or choose another folder$"):
        write_report(str(out), "asr", {"models": []}, {}, demo_pipeline.QUICK)
    assert open(out / "report.md").read() == "mine" and not os.path.exists(out / "report.json")
    assert sorted(os.listdir(out)) == [".hjprune-demo", "report.md"]


# ---- file modes: what open() would give, not mkstemp's 0600 ------------------------------------------
@pytest.fixture
def umask():
    """Sets the process's umask to 022 for the test (which may change it), and back after."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_get_the_umask_mode(tmp_path, umask, mask, mode):
    from hjprune_manifests.labels import write_dictionary, write_lines

    os.umask(mask)
    write_lines(str(tmp_path / "train.ltr"), ["H I |"])
    write_dictionary(str(tmp_path / "dict.ltr.txt"), [("H", 1)])
    written = [tmp_path / "train.ltr", tmp_path / "dict.ltr.txt"]
    if mask == 0o002:  # a group-shared corpus: its dictionary, manifests and marker alike
        assert synth.main([str(tmp_path / "corpus"), *TINY]) == 0
        written += [tmp_path / "corpus" / name for name in ("dict.ltr.txt", "train.tsv", ".hjprune-synth")]
    for path in written:
        assert oct(os.stat(path).st_mode & 0o777) == oct(mode), path


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    from hjprune_manifests.output_dir import write_atomically

    path = tmp_path / "slim.pt"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_atomically(str(path), lambda tmp: open(tmp, "w").write("new"))
    assert path.read_text() == "new" and oct(os.stat(path).st_mode & 0o777) == oct(0o640)
    elsewhere = tmp_path / "elsewhere"  # a file put at the temporary name by write (as the ONNX export does)
    elsewhere.write_text("moved")
    os.chmod(elsewhere, 0o600)  # as mkstemp makes it
    write_atomically(str(tmp_path / "new.onnx"), lambda tmp: os.replace(elsewhere, tmp))
    assert oct(os.stat(tmp_path / "new.onnx").st_mode & 0o777) == oct(0o644)


def test_check_files_refuses_an_input_behind_a_hard_link(tmp_path):
    from hjprune_manifests.output_dir import check_files

    (tmp_path / "train.ltr").write_text("mine")
    os.link(tmp_path / "train.ltr", tmp_path / "train.spm")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'train.spm'}: output would overwrite an input of this run "
                                         r"\(the letters\)$"):
        check_files([str(tmp_path / "train.spm")], True, {str(tmp_path / "train.ltr"): "the letters"})
    with pytest.raises(ValueError, match="this run would write it twice"):
        check_files([str(tmp_path / "a"), str(tmp_path / "a")], True)


# ---- hjprune-export ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gated(tmp_path_factory, w2v_pretrained):
    d = tmp_path_factory.mktemp("export")
    (d / "real").mkdir()
    return save_like_trainer(gated_model(w2v_pretrained), d / "real" / "gated.pt")


@pytest.mark.parametrize("link", ["symlinked folder", "hard link"])
def test_export_refuses_its_input_behind_a_link(gated, tmp_path, capsys, link):
    if link == "hard link":
        out = tmp_path / "gated.pt"
        os.link(gated, out)
    else:
        os.symlink(os.path.dirname(gated), tmp_path / "link")
        out = tmp_path / "link" / "gated.pt"
    before = open(gated, "rb").read()
    assert export.main([gated, str(out), "--overwrite"]) == 2
    refused(capsys, "hjprune-export", f"{out}: output would overwrite the input checkpoint")
    assert open(gated, "rb").read() == before


def test_export_writes_through_a_fresh_temporary_name(gated, tmp_path):
    """A user's file named like the old fixed temporary (SLIM.tmp) is not overwritten."""
    from hjprune_fairseq.convert.slim_export import export_slim

    (tmp_path / "slim.pt.tmp").write_text("mine")
    export_slim(gated, str(tmp_path / "slim.pt"))
    assert (tmp_path / "slim.pt.tmp").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["slim.pt", "slim.pt.tmp"]


def test_label_files_are_written_without_touching_a_users_tmp_file(tmp_path):
    from hjprune_manifests.labels import write_lines

    mine = tmp_path / "train.ltr.tmp"  # what the writer's temporary file was once named
    mine.write_text("keep me\n")
    write_lines(str(tmp_path / "train.ltr"), ["H I |"])
    assert (tmp_path / "train.ltr").read_text() == "H I |\n" and mine.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.ltr", "train.ltr.tmp"]  # no temporary left
