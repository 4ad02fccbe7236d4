"""The one registry of hjprune model architectures, filled where each model class is defined.

Every hjprune model is registered with :func:`register` instead of fairseq's ``register_model``: it
registers the class with fairseq under its name (the ``_name`` of configs and checkpoints), sets the
class's ``ARCH`` to that name, and records an :class:`Arch`: what kind of model it is (``gated``: has
HardConcrete gates and a slim counterpart that ``hjprune-export`` writes; ``slim``: physically pruned,
or dense, without gates; ``parp``: dense with PARP's unstructured zeros) and what its output is
(``ctc``: per-frame vocabulary logits; ``classifier``: one prediction per utterance; ``distill``:
prediction heads of hidden states, no vocabulary). Checkpoint loading, export and the cost report
look architectures up here instead of keeping lists of names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

from fairseq.models import register_model as fairseq_register_model

KINDS = ("gated", "slim", "parp")
HEADS = ("ctc", "classifier", "distill")

_ARCHS: Dict[str, "Arch"] = {}


@dataclasses.dataclass(frozen=True)
class Arch:
    """One registered hjprune architecture."""

    name: str  # the registered fairseq model name (cfg.model._name)
    model_class: type
    config_class: type  # its FairseqDataclass
    kind: str  # one of KINDS
    head: str  # one of HEADS
    slim_name: Optional[str] = None  # gated only: the architecture hjprune-export writes

    @property
    def slim(self) -> "Arch":
        """The slim counterpart of a gated architecture."""
        if self.slim_name is None:
            raise ValueError(f"{self.name} is a {self.kind} model: it has no slim counterpart (only gated ones do)")
        return get(self.slim_name)

    @property
    def gate_fields(self) -> Tuple[str, ...]:
        """The config fields of a gated architecture that its slim counterpart lacks (dropped by export),
        in the gated config's order."""
        slim_fields = {f.name for f in dataclasses.fields(self.slim.config_class)}
        return tuple(f.name for f in dataclasses.fields(self.config_class) if f.name not in slim_fields)

    @property
    def per_frame(self) -> bool:
        """The output layer runs once per frame (CTC), not once per utterance (classifier)."""
        return self.head != "classifier"


def register(name: str, config_class: type, kind: str, head: str, slim: Optional[str] = None) -> Callable[[type], type]:
    """Class decorator: register an hjprune model with fairseq as ``name`` and record its :class:`Arch`.

    ``slim`` names the slim counterpart; a gated architecture needs one, the others have none.
    """
    if kind not in KINDS:
        raise ValueError(f"{name}: kind must be one of {KINDS}, got {kind!r}")
    if head not in HEADS:
        raise ValueError(f"{name}: head must be one of {HEADS}, got {head!r}")
    if (kind == "gated") != (slim is not None):
        raise ValueError(f"{name}: a gated architecture names its slim counterpart, and only a gated one "
                         f"(kind {kind!r}, slim {slim!r})")

    def wrap(cls: type) -> type:
        registered = fairseq_register_model(name, dataclass=config_class)(cls)
        if registered is cls:  # fairseq keeps the first class of a name registered twice
            cls.ARCH = name
            _ARCHS[name] = Arch(name, cls, config_class, kind, head, slim)
        return registered

    return wrap


def find(name: Optional[str]) -> Optional[Arch]:
    """The architecture registered as ``name``, or None (e.g. a stock fairseq model's name)."""
    return _ARCHS.get(name) if isinstance(name, str) else None


def get(name: str) -> Arch:
    """The architecture registered as ``name``; ValueError naming the registered ones otherwise."""
    arch = find(name)
    if arch is None:
        raise ValueError(f"architecture {name!r} is not an hjprune model (expected one of {names()})")
    return arch


def names(kind: Optional[str] = None, head: Optional[str] = None) -> List[str]:
    """The registered names, sorted; only those of ``kind`` and ``head`` when given."""
    return sorted(a.name for a in _ARCHS.values() if kind in (None, a.kind) and head in (None, a.head))
