import os

import pytest
import torch

import hjprune_fairseq  # noqa: F401  (registers the models, installs the torch.load safe globals)

from fairseq_fixtures import letter_dictionary, make_pretrained, make_stock_ctc


def _share_the_cores() -> None:
    """Under pytest-xdist (make test: ``-n 2``) each of the N workers, and every process it starts (through the
    environment), uses cores / N threads: N processes of a thread per core each oversubscribe the cores, and
    OpenMP's waiting threads spin on cores another worker needs. A test about threads sets its own."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = str(max(1, len(os.sched_getaffinity(0)) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, threads)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores()


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    letter_dictionary(str(d / "dict.ltr.txt"))
    return d


@pytest.fixture(scope="session")
def w2v_pretrained(ckpt_dir):
    return make_pretrained(str(ckpt_dir / "w2v.pt"), "wav2vec2")


@pytest.fixture(scope="session")
def hubert_pretrained(ckpt_dir):
    return make_pretrained(str(ckpt_dir / "hubert.pt"), "hubert", seed=1)


@pytest.fixture(scope="session")
def w2v_large_style(ckpt_dir):
    """Pre-LN Transformer, LayerNorm CNN with conv bias: the wav2vec2-large layout."""
    return make_pretrained(
        str(ckpt_dir / "w2v_large.pt"), "wav2vec2", seed=2, layer_norm_first=True, extractor_mode="layer_norm",
        conv_bias=True,
    )


@pytest.fixture(scope="session")
def stock_ctc(ckpt_dir, w2v_pretrained):
    """(path, model) of fairseq's own wav2vec_ctc fine-tuned from ``w2v_pretrained``."""
    path = str(ckpt_dir / "stock_ctc.pt")
    model = make_stock_ctc(w2v_pretrained, path, str(ckpt_dir))
    return path, model.eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# The longest files first: with `-n 2 --dist loadfile` (make test) pytest-xdist hands out whole files in
# collection order, so a long file collected late would run alone at the end while the other worker idles.
LONGEST_FIRST = ("test_demo.py", "test_hf_import.py", "test_prune_train.py", "test_fairseq_train.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def fixture_latency_table(ckpt_dir, w2v_pretrained):
    """A latency table (PyTorch, coarse grids, 0.5 s) of ``w2v_pretrained``'s encoder family: for
    ``criterion.latency_table`` in tests that build or train with sparsity_mode=latency. Its times are real but
    rough; the tests check that it is used, not what it predicts."""
    from fairseq_fixtures import make_latency_table
    from hjprune_fairseq.plugin.fairseq_import import read_checkpoint

    return make_latency_table(str(ckpt_dir / "latency_w2v.json"), read_checkpoint(w2v_pretrained).spec)
