# The two commands of the README: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hjprune-installed

.PHONY: setup test demo bench smoke-base clean

setup: $(STAMP)

# torch==2.13.0 is installed first when the venv has no torch: an unpinned torch (asked for by
# fairseq-fixed) would download several GB of CUDA packages. fairseq-fixed also pulls torchaudio, whose
# library loads with no torch 2.13 (no release matches it): with it installed, `from transformers import ...`
# of any audio class fails with OSError. Neither fairseq's code this package uses nor the package imports
# torchaudio (fairseq only lazily, for fbank/TTS features), so it is removed again. The stamp depends on this
# Makefile too, so an existing .venv gets each change of the recipe.
$(STAMP): setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test,hf,onnx]"  # the optional extras too, so their tests always run
	$(BIN)/pip uninstall -y torchaudio
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests  # two workers, a test file each at a time

demo: setup
	$(BIN)/hjprune-demo --out demo_out/asr --overwrite

bench: setup
	$(BIN)/hjprune-bench --preset wav2vec2_base --seconds 10 --macs-sparsity 0.5 --json

# Every base-scale config (wav2vec2-base, HuBERT-base) for a few updates on CPU: about 15 minutes.
smoke-base: setup
	$(BIN)/hjprune-smoke-base

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
