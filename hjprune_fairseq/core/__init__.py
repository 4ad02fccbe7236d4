"""The torch-only core of hjprune: everything that does not need fairseq, omegaconf or hydra.

- ``spec``: :class:`EncoderSpec`, the one description of an encoder's shape (torch and stdlib only);
- ``presets``: named shapes (wav2vec2-base, HuBERT-base, ...);
- ``gate_state``: :class:`GateMasks`, the gate values of one forward pass, and what "not gated" means;
- ``hard_concrete``: the HardConcrete L0 gate maths and its gate module;
- ``gates``: :class:`EncoderGates`, the HardConcrete gates of every prunable group of an encoder;
- ``encoder``: the maskable wav2vec2/HuBERT encoder (gated and slim alike); fairseq's feature masking
  and gradient scaling are passed in (:class:`~.encoder.TrainingFns`), not imported;
- ``cost_model``: parameters and MACs, the project's one cost model;
- ``sparsity``: the augmented-Lagrangian sparsity constraint (and its budget ladder) and its logged values;
- ``budget``: the 0/1 masks that meet a sparsity target exactly, moved in log_alpha order (export, logs);
- ``slim``: physical removal of pruned units from a state dict;
- ``parp``: PARP's magnitude-pruning maths.

Modules here take typed arguments, never a fairseq config; the registered fairseq classes
(``models/``, ``criterions/``, ``tasks/``, ``optim/``) read ``cfg`` and call them. This package
imports none of its siblings' fairseq-bound modules (``tests/test_core_imports.py`` checks it).
"""
