"""The fairseq plugin: the registered models, criteria, tasks and optimizers, and the glue only they
use (fairseq's workarounds, reading fairseq checkpoints, saving ours, decoding, scoring, the config
sets). The only layer that reads cfg or touches fairseq; it imports the core.
"""
