"""The dense benchmark's generator (design; issue 16 step 5)."""

import re

import numpy as np
import pytest

from fmlab.core.experiment import SealedSplitError
from fmlab.tempo.dense import dense_splits, make_dense_video, preconditions
from fmlab.tempo.pipeline import segment_truth


@pytest.mark.parametrize("seed", range(6))
def test_dense_segments_and_questions_that_target_one_object(seed):
    v = make_dense_video(seed, 256)
    n_seg = 256 // 8
    per_seg = np.bincount([o.start // 8 for o in v.needles], minlength=n_seg)
    assert per_seg.min() >= 3 and per_seg.max() <= 4  # dense: 3-4 objects, 2 attributes each
    att, loc = v.questions
    target = v.needles[att.needles[0]]
    q = int(re.search(r"\bq(\d)\b", att.text).group(1)) - 1
    quarter = [o for o in v.needles if q * 64 <= o.start < (q + 1) * 64]
    assert [o for o in quarter if o.shape == "plus"] == [target]  # one plus in that quarter
    assert att.answer == target.colour
    assert any(o.shape == "plus" and o.colour != target.colour for o in v.needles)  # distractors
    assert any(o.start == target.start and o.shape == "square" for o in v.needles)
    lt = v.needles[loc.needles[0]]
    same = [o for o in v.needles if o.shape == "plus" and o.colour == lt.colour]
    assert same == [lt] and loc.answer == f"q{lt.start * 4 // 256 + 1}"
    assert segment_truth(v, att, 8).sum() == 1  # the oracle knows exactly one segment
    # the target is drawn: its colour at its centre while its segment is on
    from fmlab.tempo.synth import COLOURS

    px = v.frames[target.start : target.end, target.y, target.x].astype(int)
    assert np.abs(px - np.array(COLOURS[target.colour])).max() <= 12
    # slowly changing: consecutive segments share most objects
    same_obj = [
        len({(o.x // 16, o.y // 16, o.shape, o.colour) for o in v.needles if o.start == 8 * i}
            & {(o.x // 16, o.y // 16, o.shape, o.colour) for o in v.needles if o.start == 8 * i + 8})
        for i in range(n_seg - 1)
    ]  # fmt: skip
    assert np.mean(same_obj) >= 1.5


def test_preconditions_run_on_dev_only():
    import torch

    from fmlab.tempo.pipeline import Stack

    splits = dense_splits(n_dev=2, n_test=2, n_frames=64)
    with pytest.raises(SealedSplitError):
        splits["test"]
    torch.manual_seed(0)
    r = preconditions(Stack("agnostic").eval(), Stack("tempo").eval(), splits, (1, 4))
    assert r["split"] == "dev" and set(r["a_agnostic_accuracy_by_tokens_per_segment"]) == {"1", "4"}
    assert isinstance(r["a_holds"], bool) and isinstance(r["b_holds"], bool)
    assert r["questions"] == 4 and r["b_budget"] == 64  # 1 token/frame
    assert r["holds"] == (r["a_holds"] and r["b_holds"])
    # a holds only when the paired per-question interval of the rise lies above 0
    assert r["a_holds"] == (r["a_most_minus_fewest"]["per_item"]["lo"] > 0)
    with pytest.raises(SealedSplitError):  # still sealed after the design step
        splits["test"]


def test_dense_questions_use_only_words_the_model_knows():
    from fmlab.tempo.model import Vocab

    vocab = Vocab()
    for seed in range(4):
        for q in make_dense_video(seed, 64).questions:
            assert vocab.check(q.text) == [], q.text
