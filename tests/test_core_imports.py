"""Every module of ``hjprune_fairseq.core`` imports without fairseq, omegaconf and hydra.

Each module is imported in a fresh interpreter in which those three packages cannot be imported: a
finder placed first on ``sys.meta_path`` refuses them and their submodules, so an import of one, by
the core module itself or by any project module it imports, fails the test.

``import hjprune_fairseq.core.spec`` would first run ``hjprune_fairseq/__init__.py``, which imports
fairseq on purpose: under ``--user-dir`` / ``common.user_dir`` importing the package is what registers
the models, criteria, tasks and optimizer. That stays as it is (a fallback there that skips the
registration when fairseq is missing would hide a broken install). The check therefore puts an empty
stand-in for the parent package in ``sys.modules``, whose ``__path__`` is the real package folder:
Python then imports ``hjprune_fairseq.core`` and its modules from their files without running the
parent's ``__init__``, while a core module that reaches a fairseq-bound sibling (``compat``,
``models``, ``fairseq_import`` ...) still imports that sibling for real, and fails on its fairseq
import. ``test_the_check_refuses_fairseq_bound_modules`` shows that it does.
"""

import os
import subprocess
import sys

import pytest

import hjprune_fairseq

BLOCKED = ("fairseq", "omegaconf", "hydra")
CORE_DIR = os.path.join(os.path.dirname(hjprune_fairseq.__file__), "core")
CORE_MODULES = ["hjprune_fairseq.core"] + sorted(
    f"hjprune_fairseq.core.{name[:-3]}" for name in os.listdir(CORE_DIR)
    if name.endswith(".py") and name != "__init__.py"
)

IMPORT_WITHOUT_FAIRSEQ = """
import importlib, importlib.abc, importlib.util, sys, types

BLOCKED = {blocked!r}


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is not importable here (hjprune_fairseq.core must not need it)")
        return None


already = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not already, f"imported before the check started: {{already}}"
sys.meta_path.insert(0, Refuse())
folder = importlib.util.find_spec("hjprune_fairseq").submodule_search_locations  # does not run __init__
parent = types.ModuleType("hjprune_fairseq")
parent.__path__ = list(folder)
sys.modules["hjprune_fairseq"] = parent
importlib.import_module({module!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, f"loaded anyway: {{loaded}}"
print("imported", {module!r})
"""


def import_without_fairseq(module: str) -> subprocess.CompletedProcess:
    code = IMPORT_WITHOUT_FAIRSEQ.format(blocked=BLOCKED, module=module)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_core_modules_are_found():
    assert {"hjprune_fairseq.core.spec", "hjprune_fairseq.core.encoder", "hjprune_fairseq.core.parp"} <= set(CORE_MODULES)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_without_fairseq_omegaconf_hydra(module):
    r = import_without_fairseq(module)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"imported {module}"


@pytest.mark.parametrize("module", ["hjprune_fairseq.plugin.compat", "hjprune_fairseq.plugin.models.parp",
                                    "hjprune_fairseq.plugin.criterions.sparsity_config"])
def test_the_check_refuses_fairseq_bound_modules(module):
    """The same check fails for modules that need fairseq, omegaconf or hydra, directly or not."""
    r = import_without_fairseq(module)
    assert r.returncode != 0
    assert "is not importable here" in r.stderr
