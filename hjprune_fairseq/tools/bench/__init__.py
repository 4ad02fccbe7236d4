"""The benchmarks behind hjprune-bench and hjprune-bench-train: what is timed against what.

- ``latency``: CPU latency of a dense encoder against slim ones with fewer MACs (paper Fig. 5 pattern).
- ``train_update``: one pruning update against one stock fairseq wav2vec_ctc update on the same batch.
"""
