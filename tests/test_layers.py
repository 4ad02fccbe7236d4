"""hjprune_manifests (the data tools) is the lower layer: it imports neither hjprune_fairseq nor fairseq
nor torch, and the plugin takes wav2vec2-base's conv stack from it (one definition)."""

import os
import pkgutil
import subprocess
import sys


def test_the_data_tools_import_nothing_of_the_plugin():
    import hjprune_manifests

    names = sorted(m.name for m in pkgutil.iter_modules(hjprune_manifests.__path__, "hjprune_manifests."))
    assert {"hjprune_manifests.data_checks", "hjprune_manifests.output_dir", "hjprune_manifests.audio"} <= set(names)
    code = ("import importlib, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'hjprune_fairseq', 'fairseq', 'torch'}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_wav2vec2_conv_has_one_definition():
    from hjprune_fairseq.core import presets
    from hjprune_manifests import audio, data_checks

    assert presets.WAV2VEC2_CONV is audio.WAV2VEC2_CONV is data_checks.WAV2VEC2_CONV
    assert presets.PRESETS["wav2vec2_base"].conv_layers == audio.WAV2VEC2_CONV
