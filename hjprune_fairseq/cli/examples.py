"""hjprune-examples: print the folder of the shipped fairseq-hydra-train config sets.

    fairseq-hydra-train --config-dir $(hjprune-examples)/tiny --config-name prune \\
        common.user_dir=$(hjprune-examples --user-dir) task.data=DATA model.w2v_path=FINETUNED.pt
"""

import argparse
import sys
from typing import Optional, Sequence

from hjprune_manifests.cli import run_cli

from ..plugin.config_sets import USER_DIR, config_set_dir, config_sets, examples_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="hjprune-examples", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="print this config set's folder instead (tiny, wav2vec2_base, ...)")
    p.add_argument("--list", action="store_true", help="print the names of the config sets, one a line")
    p.add_argument("--user-dir", action="store_true", help="print the plugin's folder, for common.user_dir")
    a = p.parse_args(argv)

    def go() -> int:
        if a.user_dir:
            print(USER_DIR)
        elif a.list:
            print("\n".join(config_sets()))
        else:
            print(config_set_dir(a.name) if a.name else examples_dir())
        return 0

    return run_cli("hjprune-examples", go, (FileNotFoundError,))


if __name__ == "__main__":
    sys.exit(main())
