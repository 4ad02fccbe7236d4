"""Where the shipped fairseq-hydra-train config sets (``tiny/``, ``wav2vec2_base/``, ...) and the plugin
folder (``common.user_dir``) are, for the tools that build fairseq commands (hjprune-demo,
hjprune-smoke-base) and for users (``hjprune-examples``).

The repository's top-level ``examples/`` is the one copy in git; setup.py installs it into the
package as ``hjprune_fairseq/examples/``. An installed wheel therefore finds it inside the package,
a source tree (editable install) beside the package.
"""

import os
from typing import List

USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the hjprune_fairseq package, for common.user_dir
_CANDIDATES = (
    os.path.join(USER_DIR, "examples"),  # installed from a wheel (setup.py package_data)
    os.path.join(os.path.dirname(USER_DIR), "examples"),  # the source tree (editable install)
)
_MARKER = os.path.join("tiny", "prune.yaml")  # a file every copy of the config sets has


def examples_dir() -> str:
    """The folder holding the config sets: the installed copy if there is one, else the source tree's."""
    for candidate in _CANDIDATES:
        if os.path.isfile(os.path.join(candidate, _MARKER)):
            return candidate
    raise FileNotFoundError(f"no config sets found: expected {_MARKER} in {' or '.join(_CANDIDATES)} "
                            "(reinstall hjprune-fairseq)")


def config_sets() -> List[str]:
    """Names of the shipped config sets (folders of ``examples_dir()``)."""
    root = examples_dir()
    return sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))


def config_set_dir(name: str) -> str:
    """The folder of config set ``name``, for ``fairseq-hydra-train --config-dir``."""
    path = os.path.join(examples_dir(), name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no config set {name!r} (expected one of {', '.join(config_sets())})")
    return path
