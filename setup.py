from setuptools import find_packages, setup

# The data tools live in the top-level folder manifests/ but install as hjprune_manifests; the
# config sets in examples/ (the one copy in git) install as hjprune_fairseq/examples/ (config_sets.py).
setup(
    name="hjprune-fairseq",
    version="0.1.0",
    description="HJ-Pruning (heterogeneous joint structured pruning) of wav2vec2/HuBERT as a fairseq user-dir plugin",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hjprune_fairseq", "hjprune_fairseq.*"]) + ["hjprune_manifests", "hjprune_fairseq.examples"],
    package_dir={"hjprune_manifests": "manifests", "hjprune_fairseq.examples": "examples"},
    # hf_remote/: the modelling code hjprune-export --hf copies into an exported folder (data, not a package)
    package_data={"hjprune_fairseq.examples": ["*/*.yaml", "*/*/*.yaml"], "hjprune_fairseq.convert": ["hf_remote/*.py"]},
    install_requires=[
        "torch>=2.1",  # set-up installs torch==2.13.0 first where no torch is present (Makefile)
        "fairseq-fixed==0.12.3.1",
        "numpy",
        "soundfile",  # fairseq's audio datasets use it without declaring it
        "editdistance",  # likewise (WER)
        "sentencepiece",
        "tensorboardX",
        "scipy",  # resampling of the synthetic speech
        "espeakng-loader",  # eSpeak NG library and voices for hjprune-synth (no system package)
        "matplotlib",  # the demo report's plots
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "pyyaml"],
        # Hugging Face checkpoints in (hjprune-import-hf) and out (hjprune-export --hf)
        "hf": ["transformers>=4.40", "safetensors"],
        # ONNX export, int8 quantisation and the onnxruntime benchmark
        "onnx": ["onnx", "onnxruntime", "onnxscript"],
    },
    entry_points={
        "console_scripts": [
            "hjprune-cost=hjprune_fairseq.cli.cost:main",
            "hjprune-export=hjprune_fairseq.cli.export:main",
            "hjprune-import-hf=hjprune_fairseq.cli.import_hf:main",
            "hjprune-score-export=hjprune_fairseq.cli.score_export:main",
            "hjprune-bench=hjprune_fairseq.cli.bench:main",
            "hjprune-latency-table=hjprune_fairseq.cli.latency_table:main",
            "hjprune-latency-bench=hjprune_fairseq.cli.latency_bench:main",
            "hjprune-bench-train=hjprune_fairseq.cli.bench_train:main",
            "hjprune-smoke-base=hjprune_fairseq.cli.smoke_base:main",
            "hjprune-demo=hjprune_fairseq.cli.demo:main",
            "hjprune-examples=hjprune_fairseq.cli.examples:main",
            "hjprune-spm=hjprune_manifests.sentencepiece_labels:main",
            "hjprune-synth=hjprune_manifests.synth:main",
            "hjprune-manifest=hjprune_manifests.tools:manifest_main",
            "hjprune-labels=hjprune_manifests.tools:labels_main",
            "hjprune-validate=hjprune_manifests.tools:validate_main",
        ]
    },
)
