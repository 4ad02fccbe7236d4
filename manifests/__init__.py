"""hjprune_manifests (folder ``manifests/``): the data tools, the lower layer of the project.

Manifests, labels and dictionaries, dataset checks, synthetic corpora and safe output folders.
Standard library, numpy and soundfile only: it never imports ``hjprune_fairseq`` (nor fairseq or
torch), and ``hjprune_fairseq`` builds on it (``audio.WAV2VEC2_CONV``, ``data_checks``, ``output_dir``).
"""
