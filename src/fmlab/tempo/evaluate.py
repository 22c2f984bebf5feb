"""Scoring an arm on synthetic videos: accuracy per question family, tokens actually used,
localisation IoU and the router's relevance scores (for AUROC)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from fmlab.core.data.videos import FAMILIES, SynthVideo
from fmlab.core.evaluate import auroc
from fmlab.tempo.pipeline import Stack, segment_truth

__all__ = ["NEEDLE_FAMILIES", "evaluate_arm", "quarter_iou"]

NEEDLE_FAMILIES = ("attribute", "count", "order", "localise", "reasoning")


def quarter_iou(answer: str, start: int, end: int, n_frames: int) -> float:
    """IoU of the predicted quarter (q1..q4) of the video with the frames [start, end)."""
    if not (len(answer) == 2 and answer[0] == "q" and answer[1] in "1234"):
        return 0.0
    k = int(answer[1]) - 1
    a, b = k * n_frames / 4, (k + 1) * n_frames / 4
    inter = max(0.0, min(b, end) - max(a, start))
    return inter / (max(b, end) - min(a, start))


@torch.no_grad()
def evaluate_arm(
    stack: Stack, videos: list[SynthVideo], arm: str, budget: int, seed: int = 0
) -> dict:
    rng = np.random.default_rng(seed)
    correct: dict[str, list[bool]] = defaultdict(list)
    used, frames, ious, scores, labels = [], [], [], [], []
    for v in videos:
        for q in v.questions:
            truth = segment_truth(v, q, stack.cfg.seg_len)
            blocks, info = stack.blocks(v.frames, q.text, budget, arm, truth, rng)
            pred = stack.vocab.answers[int(stack.logits([(blocks, q.text)]).argmax(-1))]
            correct[q.family].append(pred == q.answer)
            used.append(sum(len(t) for _, t in blocks))
            frames.append(len(v.frames))
            if q.family == "localise":
                n = v.needles[q.needles[0]]
                ious.append(quarter_iou(pred, n.start, n.end, len(v.frames)))
            if q.needles and "scores" in info:
                scores.extend(info["scores"].tolist())
                labels.extend(truth.tolist())
    acc = {f: float(np.mean(correct[f])) for f in FAMILIES if correct[f]}
    needle = [x for f in NEEDLE_FAMILIES for x in correct.get(f, [])]
    out = {
        "accuracy": acc,
        "overall": float(np.mean([x for xs in correct.values() for x in xs])),
        "needle_accuracy": float(np.mean(needle)) if needle else float("nan"),
        "tokens_per_frame": float(np.sum(used) / np.sum(frames)),
        "budget_per_frame": float(budget * len(used) / np.sum(frames)),
        "localise_iou": float(np.mean(ious)) if ious else float("nan"),
        "questions": len(used),
    }
    if scores and 0 < sum(labels) < len(labels):
        out["router_auroc"] = auroc(scores, labels)
    return out
