"""The bench's own logic without a model: its splits, the picks and latency matching."""

import pytest

from fmlab.core.experiment import Splits
from fmlab.flash import BackboneShape, FlashArch
from fmlab.flash.bench import _matched, _picks, candidate_splits, text_splits
from fmlab.flash.search import SearchResult

SHAPE = BackboneShape(num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9,
                      num_kv_heads=3, head_dim=64)  # fmt: skip


def test_text_splits_are_disjoint_documents():
    s = Splits.build(text_splits, seed=0)  # raises on any shared document
    assert all(len(s[n]) > 0 for n in ("calib", "recover", "val"))
    assert s.overlaps and not any(s.overlaps.values())


def test_candidate_splits_are_distinct_valid_archs():
    items = candidate_splits(0, 12, 4, SHAPE.__dict__, [i / 30 for i in range(30)],
                             [0.5] * 30, {"min_layers": 8})  # fmt: skip
    s = Splits.build(candidate_splits, seed=0, key=lambda a: FlashArch.from_dict(a).to_json(),
                     n_fit=12, n_test=4, shape=SHAPE.__dict__, block=[i / 30 for i in range(30)],
                     attention=[0.5] * 30, space={"min_layers": 8})  # fmt: skip
    assert len(items["fit"]) == 12 and len(s["fit"]) == 12
    for a in items["fit"] + items["test"]:
        arch = FlashArch.from_dict(a).validate(SHAPE)
        assert len(arch.layers) >= 8
        # depth n keeps the n layers of highest block importance (here: the last n)
        assert arch.layers == list(range(30 - len(arch.layers), 30))


def test_picks_take_the_best_front_member_under_each_goal():
    trials = [{"arch": FlashArch([i], 64, 1).to_dict(), "latency": lat, "ppl": ppl}
              for i, (lat, ppl) in enumerate([(0.3, 9.0), (0.5, 5.0), (0.7, 3.0), (0.9, 2.0)])]  # fmt: skip
    res = SearchResult(trials, [0, 1, 2, 3], 0.0, (1.0, 10.0))
    picks = _picks(res, (0.55, 0.1))
    assert picks[0].layers == [1]  # best perplexity at latency <= 0.55
    assert picks[1].layers == [0]  # nothing under 0.1: the fastest


def test_latency_matching_corrects_a_biased_model():
    """Options whose true latency is 1.25 x what the model predicts: the first pick misses the
    goal, the corrected second one lands within 3%."""
    options = [FlashArch([0], w, 1) for w in range(16, 1537, 16)]

    class Model:
        def predict(self, a):
            return {"t": a.ffn[0] / 1536}

    def measured(a):
        return 1.25 * a.ffn[0] / 1536

    arch, got, tries = _matched(options, Model(), {"t": 1.0}, 0.5, measured)
    assert len(tries) == 2 and tries[0]["measured_rel"] == pytest.approx(0.625, abs=0.01)
    assert got == pytest.approx(0.5, rel=0.03) and arch.ffn[0] in (608, 624)
