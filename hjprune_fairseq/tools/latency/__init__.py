"""Latency tables (``core/latency_table.py``): measuring them and checking what they predict.

- ``probes``: each component of a table as a module of its own;
- ``graphs``: what is timed, as recipes a worker process rebuilds; each exported to ONNX once (and quantised once)
  for every backend and thread count of a run, before any timing; how a backend runs one (PyTorch, onnxruntime
  fp32 and int8, CUDA);
- ``measure``: the table of an encoder family on this machine (``hjprune-latency-table``);
- ``bench``: predicted against measured latency on random slim shapes, and pruning to a latency target with the
  constraint alone (``hjprune-latency-bench``).
"""
