"""The one error wrapper of every command, in both packages.

A command's expected failures (a bad input, a refused folder: exceptions whose message names the
file and what was wrong) end as one line ``PROG: error: MESSAGE`` on stderr and an exit status, not a
traceback. It lives in ``hjprune_manifests``, the lower layer, so that ``hjprune_fairseq``'s commands
import it from here without an import circle (this package never imports ``hjprune_fairseq``).
"""

import sys
from typing import Callable, Optional, Tuple, Type

# What a command refuses with one line: inputs it cannot use and outputs it will not write over.
USER_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)


def run_cli(prog: Optional[str], fn: Callable[[], int],
            errors: Tuple[Type[BaseException], ...] = USER_ERRORS, status: int = 2) -> int:
    """Run ``fn`` and return its exit status; if it raises one of ``errors``, print
    ``PROG: error: MESSAGE`` to stderr (``error: MESSAGE`` when ``prog`` is None) and return ``status``.

    Anything else propagates: a traceback is for bugs. Code ``fn`` runs in ``finally`` still runs.
    """
    try:
        return fn()
    except errors as e:
        print(f"{prog}: error: {e}" if prog else f"error: {e}", file=sys.stderr)
        return status
