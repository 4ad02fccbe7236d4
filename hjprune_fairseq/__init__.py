"""hjprune_fairseq: HJ-Pruning (Peng et al., ICASSP 2023) of wav2vec2/HuBERT as a fairseq user-dir."""

from .plugin import compat

with compat.keep_root_logging():  # importing fairseq reconfigures the root logger (compat quirk 3)
    compat.install()
    # fairseq imports models/ itself under --user-dir; importing here registers them for scripts too.
    from .plugin.models import classifier, ctc, distill  # noqa: E402,F401
    # fairseq auto-imports only models/ and tasks/ of a user dir.
    from .plugin.criterions import cross_entropy_loss, ctc_loss, distill_loss  # noqa: E402,F401
    from .plugin.optim import hjprune_adamw, hjprune_tri_stage  # noqa: E402,F401
    from .plugin.tasks import hjprune_audio  # noqa: E402,F401
    from .plugin import scoring  # noqa: E402,F401

__version__ = "0.1.0"
