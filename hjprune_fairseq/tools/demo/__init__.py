"""The demo behind hjprune-demo: the whole HJ-Pruning story on a synthetic corpus, on CPU.

- ``pipeline``: the stages (each one the real tool as a subprocess), the parallel runner of sweep and
  baseline points, and the side-by-side CPU latency of the models.
- ``scores``: WER / accuracy per subset of the test split, from fairseq-generate's output, by the
  scorer fairseq-generate itself used.
- ``report``: report.json, the PNG plots and report.md.
"""
