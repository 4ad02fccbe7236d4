"""hjprune_fairseq: HJ-Pruning (Peng et al., ICASSP 2023) of wav2vec2/HuBERT as a fairseq user-dir."""

from . import compat

with compat.keep_root_logging():  # importing fairseq reconfigures the root logger (compat quirk 3)
    compat.install()
    # fairseq imports models/ itself under --user-dir; importing here registers them for scripts too.
    from .models import hjprune_cls, hjprune_ctc, hjprune_distill  # noqa: E402,F401
    # fairseq auto-imports only models/ and tasks/ of a user dir.
    from .criterions import hjprune_cross_entropy, hjprune_ctc as _ctc_criterion, hjprune_distill as _distill_criterion  # noqa: E402,F401,E501
    from .optim import hjprune_adamw, hjprune_tri_stage  # noqa: E402,F401
    from .tasks import hjprune_audio  # noqa: E402,F401
    from . import scoring  # noqa: E402,F401

__version__ = "0.1.0"
