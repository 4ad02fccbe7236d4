"""Decoding in the form fairseq-generate expects from ``task.build_generator``: greedy CTC for
speech recognition, argmax for utterance classification.

``generate(models, sample)`` returns, per utterance, one hypothesis dict with ``tokens`` (the
collapsed, blank-free label sequence), ``score`` (log-probability of the best path), ``alignment``
(None) and ``positional_scores`` (log-probability of each emitted token at its first frame).
Log-probabilities of an ensemble are averaged. Blank is the dictionary's index 0 (``<s>``), as in
fairseq's wav2vec2 CTC fine-tuning.
"""

from __future__ import annotations

from typing import Dict, List

import torch


class GreedyCTCGenerator:
    def __init__(self, tgt_dict, blank: int = 0):
        self.tgt_dict = tgt_dict
        self.blank = blank
        self.symbols_to_strip_from_output = {tgt_dict.bos(), tgt_dict.eos(), tgt_dict.pad()}

    @torch.no_grad()
    def generate(self, models, sample: Dict, **kwargs) -> List[List[Dict]]:
        lprobs, pad = None, None
        for model in models:
            net_output = model(**sample["net_input"])
            lp = model.get_normalized_probs(net_output, log_probs=True).transpose(0, 1)  # B x T x V
            lprobs = lp if lprobs is None else lprobs + lp
            pad = net_output.get("padding_mask")
        lprobs = lprobs / len(models)
        best, path = lprobs.max(-1)  # B x T
        lengths = (~pad).sum(-1) if pad is not None else torch.full((path.size(0),), path.size(1), device=path.device)
        hypos = []
        for b in range(path.size(0)):
            p, s = path[b, : lengths[b]], best[b, : lengths[b]]
            starts = torch.ones_like(p, dtype=torch.bool)
            starts[1:] = p[1:] != p[:-1]
            keep = starts & (p != self.blank)
            hypos.append([{
                "tokens": p[keep].cpu(),
                "score": s.sum().cpu(),
                "alignment": None,
                "positional_scores": s[keep].cpu(),
            }])
        return hypos


class ClassifierGenerator:
    """One hypothesis per utterance: the most probable class (a label-dictionary index)."""

    def __init__(self, tgt_dict):
        self.tgt_dict = tgt_dict
        self.symbols_to_strip_from_output = {tgt_dict.bos(), tgt_dict.eos(), tgt_dict.pad()}

    @torch.no_grad()
    def generate(self, models, sample: Dict, **kwargs) -> List[List[Dict]]:
        lprobs = sum(m.get_normalized_probs(m(**sample["net_input"]), log_probs=True) for m in models) / len(models)
        best, label = lprobs.max(-1)
        return [[{"tokens": label[b:b + 1].cpu(), "score": best[b].cpu(), "alignment": None,
                  "positional_scores": best[b:b + 1].cpu()}] for b in range(label.size(0))]
