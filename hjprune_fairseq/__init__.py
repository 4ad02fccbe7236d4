"""hjprune_fairseq: HJ-Pruning (Peng et al., ICASSP 2023) of wav2vec2/HuBERT as a fairseq user-dir."""

from . import compat

compat.install()

from . import models  # noqa: E402,F401  (fairseq imports models/ itself; importing here registers them too)
from .models import hjprune_ctc  # noqa: E402,F401

__version__ = "0.1.0"
