"""Word error rate of exported CTC models (ONNX graphs, Hugging Face folders) on a labelled split, decoded as
fairseq-generate decodes the checkpoint they came from, so the two can be compared hypothesis by hypothesis.

Everything but the network is fairseq-generate's own path through this plugin:

- the split (``{split}.tsv``, ``{split}.{labels}``, ``dict.{labels}.txt``) is checked, read (soundfile),
  normalised (fairseq's per-utterance ``layer_norm`` when the export says ``normalize``: ONNX metadata,
  or ``do_normalize`` of the folder's feature extractor, ``hf_import.read_normalize``), batched and padded by the task
  ``hjprune_audio_finetuning`` with fairseq's batch iterator, as fairseq-generate does with the same
  ``--batch-size`` / ``--max-tokens`` (default one utterance a batch: a padded batch changes the output of
  a CNN that normalises over time, so a hypothesis would depend on its neighbours);
- the export's logits (B, T, V) and frame padding (B, T) are decoded by the task's own greedy CTC decoder
  (``decoding.GreedyCTCGenerator``: best class per frame, repeats merged, the blank, index 0, dropped), and
  references and hypotheses become text as fairseq-generate's ``T-`` / ``D-`` lines (fairseq's
  ``Dictionary.string`` with ``post_process``: ``letter`` joins the letters and prints ``|`` as a space);
- WER is fairseq's own scorer (``--scoring wer``, through ``plugin.scoring.score``).

An ONNX graph must be hjprune-export's CTC graph (inputs ``source``, ``padding_mask``; outputs ``logits``,
``frame_padding_mask``; metadata ``normalize``, ``sample_rate`` and ``min_samples``) with as many outputs as the
dictionary has symbols (the graph carries no symbols); a batch shorter than its ``min_samples`` is refused. A
Hugging Face folder is loaded with ``AutoModelForCTC.from_pretrained(folder, trust_remote_code=True)``; its
vocabulary is mapped to fairseq's indices by ``hf_import.ctc_vocabulary`` and must be the split's dictionary.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from fairseq import utils
from hjprune_manifests import data_checks
from hjprune_manifests.audio import SAMPLE_RATE
from hjprune_manifests.labels import write_lines
from omegaconf import OmegaConf

from ..plugin.decoding import GreedyCTCGenerator
from ..plugin.scoring import parse_generate, score
from ..plugin.tasks.hjprune_audio import HJPruneAudioFinetuningConfig, HJPruneAudioFinetuningTask

KINDS = ("onnx", "hf")
ONNX_CTC_OUTPUTS = ("logits", "frame_padding_mask")  # onnx_export.OUTPUTS["ctc"]
SHOWN_IDS = 20  # differing utterance ids listed per model


class ExportedCtc:
    """An exported CTC model as ``GreedyCTCGenerator`` decodes a fairseq model: ``model(source, padding_mask)``
    -> ``{"encoder_out": logits (T, B, V), "padding_mask": frame padding (B, T) bool}``, and
    ``get_normalized_probs`` as ``models.base.HJPruneModel``'s (log-softmax in fp32 over V).

    Subclasses give ``kind``, ``path``, ``normalize`` (whether the model expects normalised audio) and
    :meth:`logits`; their output rows are in the fairseq dictionary's order."""

    kind: str
    path: str
    normalize: bool

    def logits(self, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """source (B, S) float, padding_mask (B, S) bool (True at padding) -> logits (B, T, V), frame padding (B, T)."""
        raise NotImplementedError

    def check_dictionary(self, symbols: Sequence[str], path: str) -> None:
        """Raise unless the model's outputs are the symbols of dictionary ``path``."""
        raise NotImplementedError

    def __call__(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **_: Any) -> Dict[str, Any]:
        if padding_mask is None:
            padding_mask = torch.zeros(source.shape, dtype=torch.bool)
        logits, frame_pad = self.logits(source, padding_mask)
        return {"encoder_out": logits.transpose(0, 1), "padding_mask": frame_pad}

    def get_normalized_probs(self, net_output: Dict[str, Any], log_probs: bool, sample=None) -> torch.Tensor:
        logits = net_output["encoder_out"].float()
        return utils.log_softmax(logits, dim=-1) if log_probs else utils.softmax(logits, dim=-1)


class OnnxCtc(ExportedCtc):
    """The CTC graph of ``hjprune-export --onnx`` (fp32 or int8) in an onnxruntime CPU session of ``threads``
    intra-op threads (0: onnxruntime's choice); ``min_samples``: the shortest batch it takes (its metadata)."""

    kind = "onnx"

    def __init__(self, path: str, threads: int = 0):
        from .onnx_export import graph_min_samples, session

        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: ONNX model not found")
        self.path = path
        # Idle threads do not spin: the sessions of every model stay open while the others decode.
        self.session = session(path, threads, spinning=False)
        outputs = [o.name for o in self.session.get_outputs()]
        if tuple(outputs) != ONNX_CTC_OUTPUTS:
            raise ValueError(f"{path}: the graph's outputs are {outputs} (expected {list(ONNX_CTC_OUTPUTS)}: a CTC "
                             "model's graph written by hjprune-export --onnx)")
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("normalize") not in ("true", "false"):
            raise ValueError(f"{path}: metadata normalize={meta.get('normalize')!r} (expected 'true' or 'false', as "
                             "hjprune-export --onnx writes it)")
        if meta.get("sample_rate") != str(SAMPLE_RATE):
            raise ValueError(f"{path}: metadata sample_rate={meta.get('sample_rate')!r} (expected '{SAMPLE_RATE}')")
        self.normalize = meta["normalize"] == "true"
        self.min_samples = graph_min_samples(self.session, path)
        self.vocab_size = self.session.get_outputs()[0].shape[-1]

    def check_dictionary(self, symbols: Sequence[str], path: str) -> None:
        if self.vocab_size != len(symbols):
            raise ValueError(f"{self.path}: the graph has {self.vocab_size} outputs but {path} makes {len(symbols)} "
                             "symbols (expected the dictionary the model was trained with)")

    def logits(self, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        from .onnx_export import check_samples, run

        check_samples(source.shape[1], self.min_samples, self.path)
        logits, frame_pad = run(self.session, source.float(), padding_mask)
        return torch.from_numpy(logits), torch.from_numpy(frame_pad)


class HfCtc(ExportedCtc):
    """A transformers CTC folder (``hjprune-export --hf``) loaded with ``AutoModelForCTC`` and
    ``trust_remote_code``; its output rows reordered to fairseq's indices (``hf_import.ctc_vocabulary``: a
    fairseq index without a row never wins)."""

    kind = "hf"

    def __init__(self, folder: str):
        from ..plugin.compat import import_transformers
        from . import hf_import

        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: Hugging Face folder not found")
        self.path = folder
        tr = import_transformers()
        config = hf_import.read_config(folder)
        self.normalize = hf_import.read_normalize(folder, None)
        self.model = tr.AutoModelForCTC.from_pretrained(folder, trust_remote_code=True).eval()
        rows = self.model.config.vocab_size
        self.vocabulary = hf_import.ctc_vocabulary(folder, config, rows)
        kept = [i for i, r in enumerate(self.vocabulary.rows) if r is not None]
        self.fairseq_index = torch.tensor(kept, dtype=torch.long)
        self.hf_row = torch.tensor([self.vocabulary.rows[i] for i in kept], dtype=torch.long)

    def check_dictionary(self, symbols: Sequence[str], path: str) -> None:
        from .hf_import import VOCAB

        problem = data_checks.dictionary_difference(self.vocabulary.symbols, os.path.join(self.path, VOCAB),
                                                    list(symbols), path)
        if problem:
            raise ValueError(problem)

    @torch.no_grad()
    def logits(self, source: torch.Tensor, padding_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        from .hf_import import NEVER_WINS

        out = self.model(input_values=source, attention_mask=(~padding_mask).long())
        hf_logits = out.logits
        frame_mask = getattr(out, "frame_mask", None)
        if frame_mask is not None:
            frame_pad = frame_mask == 0
        elif not padding_mask.any():  # nothing padded: every frame is real
            frame_pad = torch.zeros(hf_logits.shape[:2], dtype=torch.bool)
        else:
            raise ValueError(f"{self.path}: the model's output has no frame_mask, so the frames of a padded batch "
                             "are unknown (expected a folder written by hjprune-export --hf, or --batch-size 1)")
        logits = hf_logits.new_full((*hf_logits.shape[:2], len(self.vocabulary.rows)), NEVER_WINS)
        logits[..., self.fairseq_index] = hf_logits[..., self.hf_row]
        return logits, frame_pad


def load_export(kind: str, path: str, threads: int = 0) -> ExportedCtc:
    """The export ``path`` of ``kind`` (``onnx``: a graph file; ``hf``: a folder)."""
    if kind == "onnx":
        return OnnxCtc(path, threads)
    if kind == "hf":
        return HfCtc(path)
    raise ValueError(f"{path}: unknown export kind {kind!r} (expected one of {KINDS})")


# ---- the split, as fairseq-generate reads it ------------------------------------------------------
def split_task(data: str, labels: str = "ltr") -> HJPruneAudioFinetuningTask:
    """The task fairseq-generate sets up for ``data`` (its dictionary ``dict.{labels}.txt`` checked and read)."""
    # tpu and seed interpolate the common section by default, which a task outside fairseq's CLI has not.
    cfg = OmegaConf.structured(HJPruneAudioFinetuningConfig(data=data, labels=labels, tpu=False, seed=1))
    return HJPruneAudioFinetuningTask.setup_task(cfg)


def batches(task: HJPruneAudioFinetuningTask, subset: str, normalize: bool, batch_size: int,
            max_tokens: Optional[int]) -> Iterable[Dict[str, Any]]:
    """fairseq's batches of split ``subset`` (the task's checks first; audio normalised with ``normalize``),
    grouped as fairseq-generate ``--batch-size`` / ``--max-tokens`` group them (fairseq_cli/generate.py)."""
    task.load_dataset(subset, task_cfg=OmegaConf.merge(task.cfg, {"normalize": normalize}))
    dataset = task.dataset(subset)
    return task.get_batch_iterator(dataset=dataset, max_tokens=max_tokens, max_sentences=batch_size,
                                   max_positions=task.max_positions(), ignore_invalid_inputs=False,
                                   required_batch_size_multiple=1, seed=1).next_epoch_itr(shuffle=False)


@dataclass
class Decoded:
    """What one model made of a split: {utterance id: hypothesis}, {id: reference} (fairseq-generate's ``D-``
    and ``T-`` texts) and the wall time of reading and decoding it (seconds)."""

    hyps: Dict[int, str]
    refs: Dict[int, str]
    seconds: float


def decode(model: ExportedCtc, task: HJPruneAudioFinetuningTask, subset: str, batch_size: int = 1,
           max_tokens: Optional[int] = None, post_process: str = "letter") -> Decoded:
    """Decode split ``subset`` with ``model``: greedy CTC as fairseq-generate's, texts as its ``T-`` / ``D-``
    lines (``post_process`` as its ``--post-process``)."""
    tgt_dict = task.target_dictionary
    model.check_dictionary(tgt_dict.symbols, task.dictionary_path)
    generator = GreedyCTCGenerator(tgt_dict)
    strip = generator.symbols_to_strip_from_output
    hyps: Dict[int, str] = {}
    refs: Dict[int, str] = {}
    start = time.perf_counter()
    for sample in batches(task, subset, model.normalize, batch_size, max_tokens):
        hypos = generator.generate([model], sample)
        for i, sample_id in enumerate(sample["id"].tolist()):
            # As fairseq_cli/generate.py writes its T- and D- lines (no tokenizer, no BPE). Its D- text is what
            # utils.post_process_prediction returns, which also adds the text's words to the dictionary: not called.
            target = utils.strip_pad(sample["target"][i, :], tgt_dict.pad()).int().cpu()
            refs[sample_id] = tgt_dict.string(target, post_process, escape_unk=True, extra_symbols_to_ignore=strip)
            hyps[sample_id] = tgt_dict.string(hypos[i][0]["tokens"].int().cpu(), post_process,
                                              extra_symbols_to_ignore=strip)
    return Decoded(hyps, refs, time.perf_counter() - start)


# ---- comparison and the report --------------------------------------------------------------------
def reference_hypotheses(path: str, refs: Dict[int, str], manifest: str) -> Dict[int, str]:
    """{id: hypothesis} of fairseq-generate's output ``path`` (``generate-SUBSET.txt``), which must cover the
    same utterances with the same references (``refs``, of ``manifest``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: fairseq-generate output not found")
    hyps, their_refs = parse_generate(path)
    if their_refs.keys() != refs.keys():
        missing, extra = sorted(refs.keys() - their_refs.keys()), sorted(their_refs.keys() - refs.keys())
        raise ValueError(f"{path}: has T-/D- lines for {len(their_refs)} utterances but {manifest} has {len(refs)} "
                         f"(missing ids {missing[:5]}, unknown ids {extra[:5]}; expected fairseq-generate's output "
                         "of the same split)")
    differ = sorted(i for i in refs if their_refs[i] != refs[i])
    if differ:
        raise ValueError(f"{path}: the reference of utterance {differ[0]} is {their_refs[differ[0]]!r} but "
                         f"{refs[differ[0]]!r} here (expected fairseq-generate's output of the same split and "
                         "--post-process)")
    return hyps


def write_hypotheses(path: str, refs: Dict[int, str], decoded: Dict[str, Decoded]) -> None:
    """A TSV: ``id``, ``reference`` and one column of hypotheses per model (named by its path), by utterance id."""
    names = list(decoded)
    rows = ["\t".join(["id", "reference", *names])]
    rows += ["\t".join([str(i), refs[i], *(decoded[n].hyps[i] for n in names)]) for i in sorted(refs)]
    write_lines(path, rows)


def score_exports(data: str, exports: Sequence[Tuple[str, str]], subset: str = "test", labels: str = "ltr",
                  batch_size: int = 1, max_tokens: Optional[int] = None, post_process: str = "letter",
                  threads: int = 0, compare: Optional[str] = None, hyps_path: Optional[str] = None,
                  overwrite: bool = False) -> Dict[str, Any]:
    """Decode split ``subset`` of ``data`` with every ``(kind, path)`` of ``exports`` (see :func:`load_export`)
    and score it with fairseq's WER scorer; with ``compare`` (a fairseq-generate output of the same split), also
    its WER and, per model, how many hypotheses differ from it and the WER change (percentage points); with
    ``hyps_path``, write the hypotheses (:func:`write_hypotheses`; an existing file only with ``overwrite``,
    refused before anything is decoded). Returns the report (a dict)."""
    if hyps_path and os.path.exists(hyps_path) and not overwrite:
        raise FileExistsError(f"{hyps_path}: already exists (pass --overwrite to replace it)")
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: expected at least 1")
    if not exports:
        raise ValueError(f"{data}: no model to score (expected at least one ONNX graph or Hugging Face folder)")
    names = [path for _, path in exports]
    if len(set(names)) != len(names):
        raise ValueError(f"{data}: a model is given twice ({sorted(n for n in names if names.count(n) > 1)[0]})")
    task = split_task(data, labels)
    models = [load_export(kind, path, threads) for kind, path in exports]  # every model loads before decoding
    decoded = {m.path: decode(m, task, subset, batch_size, max_tokens, post_process) for m in models}
    refs = next(iter(decoded.values())).refs
    ids = sorted(refs)
    manifest = os.path.join(data, f"{subset}.tsv")
    report: Dict[str, Any] = {"data": data, "subset": subset, "utterances": len(ids), "batch_size": batch_size,
                              "max_tokens": max_tokens, "post_process": post_process}
    reference = None
    if compare is not None:
        reference = reference_hypotheses(compare, refs, manifest)
        report["reference"] = {"generate": compare, "wer": score("wer", refs, reference, ids)}
    rows: List[Dict[str, Any]] = []
    for m in models:
        d = decoded[m.path]
        row = {"kind": m.kind, "path": m.path, "normalize": m.normalize, "wer": score("wer", refs, d.hyps, ids),
               "seconds": round(d.seconds, 3)}
        if reference is not None:
            differ = [i for i in ids if d.hyps[i] != reference[i]]
            row.update(differing_hypotheses=len(differ), differing_ids=differ[:SHOWN_IDS],
                       wer_change=row["wer"] - report["reference"]["wer"])
        rows.append(row)
    report["models"] = rows
    if hyps_path is not None:
        write_hypotheses(hyps_path, refs, decoded)
        report["hyps"] = hyps_path
    return report
