"""hjprune_fairseq: HJ-Pruning (Peng et al., ICASSP 2023) of wav2vec2/HuBERT as a fairseq user-dir."""

from .plugin import compat

with compat.keep_root_logging():  # importing fairseq reconfigures the root logger (compat quirk 3)
    compat.install()
    # Every registered class, for fairseq's --user-dir / common.user_dir and for scripts alike (fairseq would
    # import only a user dir's top-level models/ and tasks/ folders; the plugin's are in plugin/).
    from .plugin.models import classifier, ctc, distill  # noqa: E402,F401
    from .plugin.criterions import cross_entropy_loss, ctc_loss, distill_loss  # noqa: E402,F401
    from .plugin.optim import hjprune_adamw, hjprune_tri_stage  # noqa: E402,F401
    from .plugin.tasks import hjprune_audio  # noqa: E402,F401
    from .plugin import scoring  # noqa: E402,F401

__version__ = "0.1.0"
