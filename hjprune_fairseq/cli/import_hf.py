"""hjprune-import-hf: a Hugging Face transformers wav2vec2 / HuBERT / WavLM folder as an hjprune checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from hjprune_manifests.cli import USER_ERRORS, run_cli


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="hjprune-import-hf",
        description="Convert a Hugging Face transformers model folder (config.json, model.safetensors or "
                    "pytorch_model.bin; preprocessor_config.json or processor_config.json; for CTC models vocab.json "
                    "and the tokenizer files) of Wav2Vec2Model, "
                    "Wav2Vec2ForPreTraining, Wav2Vec2ForCTC, HubertModel, HubertForCTC, WavLMModel or WavLMForCTC (or "
                    "a folder written by hjprune-export --hf) "
                    "into OUT_DIR/model.pt, a dense hjprune_slim_ctc checkpoint that every stage takes as "
                    "model.w2v_path, and for a CTC model OUT_DIR/dict.ltr.txt, the fairseq dictionary its output "
                    "layer is reordered to (transformers' blank becomes fairseq's index 0): fairseq-generate "
                    "--task hjprune_audio_finetuning decodes it as transformers does. A setting the encoder "
                    "cannot reproduce is refused with one line naming the file and the field.",
    )
    p.add_argument("hf_dir", help="the transformers model folder (as save_pretrained writes it)")
    p.add_argument("out_dir", help="output folder: new, empty, or this tool's earlier output (with --overwrite)")
    norm = p.add_mutually_exclusive_group()
    norm.add_argument("--normalize", dest="normalize", action="store_const", const=True, default=None,
                      help="the model expects zero-mean, unit-variance audio (needed, with --no-normalize, only when "
                           "HF_DIR has no feature extractor settings, in preprocessor_config.json or nested in "
                           "processor_config.json; otherwise their do_normalize is used)")
    norm.add_argument("--no-normalize", dest="normalize", action="store_const", const=False,
                      help="the model expects raw audio")
    p.add_argument("--overwrite", action="store_true", help="replace this tool's earlier output in OUT_DIR")
    a = p.parse_args(argv)

    def go() -> int:
        from ..convert.hf_import import import_hf

        print(json.dumps(import_hf(a.hf_dir, a.out_dir, a.normalize, a.overwrite), indent=2))
        return 0

    return run_cli("hjprune-import-hf", go, USER_ERRORS + (ImportError,))


if __name__ == "__main__":
    sys.exit(main())
