"""The wheel works on its own: built from the source tree and installed (not editable) into a fresh
virtualenv, its commands run from outside the repository and find the config sets shipped inside the
package; the editable dev install finds the repository's examples/.

Nothing is downloaded or compiled: the wheel is built with this environment's setuptools
(--no-build-isolation --no-index --no-deps) from a copy of the tree's files (an in-tree build would
write build/ and *.egg-info here, and a stale build/lib can put deleted modules in a wheel), and the
new env sees this env's site-packages (torch, fairseq) through a .pth file. A directory named in a
.pth file is added to sys.path without processing the .pth files inside it, so this env's editable
finder (__editable__.*.pth) stays inactive there: the packages come from the wheel alone.
"""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 120


def run(cmd, cwd, **kw):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r


def yaml_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs if f.endswith(".yaml"))


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(bin folder, site-packages, a working folder outside the repository) of a fresh env holding the wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout.split("\0")
    for rel in filter(None, files):  # what a checkout holds (tracked and new files), nothing git ignores
        if os.path.isfile(os.path.join(REPO, rel)):
            os.makedirs(src / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), src / rel)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("hjprune_fairseq-*.whl")
    env = tmp / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=tmp)
    bin_dir = env / "bin"
    site = run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=tmp).stdout.strip()
    with open(os.path.join(site, "parent_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # torch, fairseq, ... of this env
    run([*pip, "--python", str(bin_dir / "python"), "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
    outside = tmp / "elsewhere"
    outside.mkdir()
    return bin_dir, site, outside


def test_the_wheel_ships_both_packages_and_every_config(wheel_env):
    _, site, _ = wheel_env
    assert sorted(n for n in os.listdir(site) if not n.endswith((".dist-info", ".pth"))) == ["hjprune_fairseq", "hjprune_manifests"]
    installed, source = os.path.join(site, "hjprune_fairseq", "examples"), os.path.join(REPO, "examples")
    assert yaml_files(installed) == yaml_files(source) and "tiny/prune.yaml" in yaml_files(installed)
    remote = os.path.join(site, "hjprune_fairseq", "convert", "hf_remote")  # the modelling code of hjprune-export --hf
    shipped = sorted(n for n in os.listdir(remote) if n.endswith(".py"))
    assert shipped == ["configuration_hjprune.py", "modeling_hjprune.py"]
    for rel in yaml_files(source):
        assert open(os.path.join(installed, rel)).read() == open(os.path.join(source, rel)).read(), rel


def test_the_packages_and_the_demo_lookup_resolve_inside_the_env(wheel_env):
    bin_dir, site, outside = wheel_env
    code = ("import sys, hjprune_fairseq, hjprune_manifests\n"
            "from hjprune_fairseq.tools import smoke_base\n"
            "from hjprune_fairseq.tools.demo import pipeline as demo\n"
            "assert smoke_base.config_set_dir is demo.config_set_dir\n"
            "print(hjprune_fairseq.__file__, hjprune_manifests.__file__, demo.config_set_dir('tiny'), demo.USER_DIR,"
            " sep='\\n')\n"
            "print(any('editable' in m for m in sys.modules))\n")
    out = run([str(bin_dir / "python"), "-c", code], cwd=outside).stdout.splitlines()
    assert out == [os.path.join(site, "hjprune_fairseq", "__init__.py"), os.path.join(site, "hjprune_manifests", "__init__.py"),
                   os.path.join(site, "hjprune_fairseq", "examples", "tiny"), os.path.join(site, "hjprune_fairseq"), "False"]


def test_hjprune_examples_prints_the_installed_config_sets(wheel_env):
    bin_dir, site, outside = wheel_env
    folder = run([str(bin_dir / "hjprune-examples")], cwd=outside).stdout.strip()
    assert folder == os.path.join(site, "hjprune_fairseq", "examples")
    assert os.path.isfile(os.path.join(folder, "tiny", "prune.yaml")) and not folder.startswith(REPO)
    # fairseq-hydra-train composes a config set from that folder (--cfg job: print it, do not train)
    r = run([str(bin_dir / "python"), "-m", "fairseq_cli.hydra_train", "--config-dir", os.path.join(folder, "tiny"),
             "--config-name", "prune", "--cfg", "job", "mode=size"], cwd=outside)
    assert "_name: hjprune_ctc" in r.stdout and "sparsity_mode: size" in r.stdout, r.stdout[-2000:]


def test_hjprune_cost_export_demo_and_validate_run_from_the_wheel(wheel_env):
    bin_dir, _, outside = wheel_env
    assert "tiny (preset)" in run([str(bin_dir / "hjprune-cost"), "--preset", "tiny"], cwd=outside).stdout
    for tool in ("hjprune-export", "hjprune-demo", "hjprune-validate"):
        assert run([str(bin_dir / tool), "--help"], cwd=outside).stdout.startswith(f"usage: {tool}")


def test_the_editable_install_finds_the_repository_config_sets():
    from hjprune_fairseq.plugin import config_sets

    if not config_sets.USER_DIR.startswith(REPO):
        pytest.skip(f"hjprune_fairseq is installed from {config_sets.USER_DIR}, not this source tree")
    assert config_sets.examples_dir() == os.path.join(REPO, "examples")
    exe = os.path.join(os.path.dirname(sys.executable), "hjprune-examples")
    assert run([exe, "tiny"], cwd=REPO).stdout.strip() == os.path.join(REPO, "examples", "tiny")
