"""Show a library module's progress messages (``logging``, INFO) as plain lines while a command runs."""

import contextlib
import logging
from typing import Iterator, TextIO


@contextlib.contextmanager
def progress_lines(logger: str, stream: TextIO) -> Iterator[None]:
    """Write the INFO messages of ``logger`` to ``stream``, one plain line each, until the block ends.

    They do not also reach the root logger: fairseq may have given it a handler of its own format.
    """
    log = logging.getLogger(logger)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
