"""The experiment harness: each piece fails on purpose where a bench would go wrong."""

import json
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy import stats

from fmlab.core.experiment import (
    GridEdgeWarning,
    SealedSplitError,
    SplitError,
    Splits,
    bootstrap_interval,
    compare,
    content_hash,
    format_delta,
    interval_plot,
    paired,
    ratio_interval,
    record_fields,
    run_arms,
    t_interval,
    timeit_interleaved,
    tune,
)
from fmlab.core.io import Memo
from fmlab.core.results import (
    ResultRecord,
    delta_text,
    load_record,
    render_record,
    render_results_table,
    write_record,
)


def make_items(seed: int, n: int = 30, leak: int = 0) -> dict:
    """A seeded split builder; ``leak`` copies that many test items into train."""
    rng = np.random.default_rng(seed)
    prompts = [f"q{seed}-{i}-{rng.integers(1 << 30)}" for i in range(n)]
    train, val, test = prompts[: n // 2], prompts[n // 2 : 2 * n // 3], prompts[2 * n // 3 :]
    return {"train": train + test[:leak], "val": val, "test": test}


# -- content hashes -------------------------------------------------------------------------
def test_content_hash_is_stable_and_covers_arrays_and_tensors():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert content_hash(a) == content_hash(a.copy()) == content_hash(torch.arange(6.0).view(2, 3))
    assert content_hash(a) != content_hash(a.T)  # shape is part of the content
    assert content_hash(a) != content_hash(a.astype(np.float64))
    assert content_hash(torch.ones(3, dtype=torch.bfloat16)) != content_hash(torch.ones(3))
    assert content_hash({"b": 1, "a": [1, 2]}) == content_hash({"a": (1, 2), "b": 1})
    assert content_hash({1, 2, 3}) == content_hash({3, 2, 1})

    @dataclass
    class Item:
        prompt: str
        x: np.ndarray

    assert content_hash(Item("p", a)) == content_hash(Item("p", a.copy()))
    with pytest.raises(TypeError, match="key="):
        content_hash(object())


# -- splits ---------------------------------------------------------------------------------
def test_overlapping_splits_raise_naming_both_and_the_count():
    with pytest.raises(SplitError, match=r"'train' and 'test' share 3 items"):
        Splits.build(make_items, seed=0, leak=3)
    ok = Splits.build(make_items, seed=0)
    s = ok.summary()
    assert s["disjoint"] is True and set(s["overlaps"].values()) == {0}
    assert s["builder"].endswith("make_items") and s["splits"]["train"]["n"] == 15
    assert len(s["splits"]["test"]["digest"]) == 64
    # allowed sharing is counted, recorded and not raised
    shared = Splits.build(make_items, seed=0, leak=2, allow_overlap=[("train", "test")])
    assert shared.summary()["overlaps"]["train/test"] == 2 and not shared.summary()["disjoint"]


def test_overlap_by_key_catches_items_that_differ_only_in_other_fields():
    items = {"pairs": [{"prompt": "p1", "y": "a"}], "test": [{"prompt": "p1", "y": "b"}]}
    Splits(items)  # different items as a whole
    with pytest.raises(SplitError, match="share 1 items"):
        Splits(items, key=lambda it: it["prompt"])


def test_sealed_test_split_and_seeds_lifecycle():
    sp = Splits.build(make_items, seed=1, dev_seeds=(0, 1), test_seeds=(2, 3))
    assert len(sp["val"]) == 5 and sp.dev_seeds == (0, 1)
    with pytest.raises(SealedSplitError, match="open_test"):
        sp["test"]
    with pytest.raises(SealedSplitError, match="open_test"):
        _ = sp.test_seeds
    with sp.design("choose k"), pytest.raises(SealedSplitError, match="design step"):
        sp["test"]
    sp.open_test()
    assert len(sp["test"]) == 10 and sp.test_seeds == (2, 3)
    with pytest.raises(SealedSplitError, match=r"after splits\.open_test"), sp.design("late"):
        pass
    with pytest.raises(SplitError, match="already opened"):
        sp.open_test()
    s = sp.summary()
    assert s["test_opened"] is True and s["test_opened_after"] == ["choose k"]
    with pytest.raises(KeyError, match="choose one of: train, val, test"):
        sp["dev"]


def test_seeds_dev_and_test_disjoint_and_seen_in_design():
    with pytest.raises(SplitError, match=r"\[2\] are both dev and test"):
        Splits.build(make_items, seed=0, dev_seeds=(0, 2), test_seeds=(2, 3))
    sp = Splits.build(make_items, seed=0, dev_seeds=(0, 1), test_seeds=(5, 6))
    sp.declare_seen(9)
    assert sp.seeds_seen_in_design == [0, 1, 9]
    with pytest.raises(SplitError, match=r"\[5\] were seen in design but are test seeds"):
        sp.declare_seen(5)


# -- tuning ---------------------------------------------------------------------------------
def quad(center: dict):
    """A val score peaked at ``center`` (per axis), for every arm."""

    def score(arm, params, val):
        assert len(val) == 5
        return -sum((math.log10(params[k]) - math.log10(c)) ** 2 for k, c in center[arm].items())

    return score


def test_tuning_on_a_sealed_split_raises():
    sp = Splits.build(make_items, seed=0)
    sp.open_test()
    with pytest.raises(SealedSplitError, match="tune refuses the sealed split 'test'"):
        tune(["a"], {"lr": [1, 2]}, lambda *a: 0.0, val=sp["test"])

    sp2 = Splits.build(make_items, seed=0)

    def peeks(arm, params, val):
        return float(len(sp2["test"]))  # a scorer that touches test while tuning

    with pytest.raises(SealedSplitError, match="design step"):
        tune(["a"], {"lr": [1, 2]}, peeks, val=sp2["val"])


def test_interior_optimum_does_not_warn_and_budget_is_equal():
    sp = Splits.build(make_items, seed=0)
    grid = {"a": {"lr": [0.01, 0.1, 1.0]}, "b": {"w": [1, 2, 3, 4, 5, 6]}, "fixed": {}}
    score = quad({"a": {"lr": 0.1}, "b": {"w": 3}, "fixed": {}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridEdgeWarning)
        t = tune(["a", "b", "fixed"], grid, score, val=sp["val"], budget=3)
    assert t.chosen["a"] == {"lr": 0.1} and t.chosen["fixed"] == {}
    assert t.arms["a"].evaluated == t.arms["b"].evaluated == 3  # b's 6 points sampled to 3
    assert t.arms["b"].sampled and t.arms["fixed"].fixed and t.arms["fixed"].evaluated == 1
    rec = t.to_record()
    assert rec["split"]["name"] == "val" and len(rec["arms"]["a"]["points"]) == 3
    assert sp.summary()["design_steps"] == ["tune a, b, fixed on 'val'"]
    with pytest.raises(ValueError, match="fewer grid points than the budget 4"):
        tune(["a", "b", "fixed"], grid | {"a": {"lr": [0.1, 1.0]}}, score, val=sp["val"], budget=4)


def test_edge_optimum_warns_and_widens_geometrically_then_linearly():
    sp = Splits.build(make_items, seed=0)
    # gamma's optimum (30) lies beyond the grid's upper edge 3.0: log axis, widened x10 steps
    score = quad({"uvd": {"gamma": 30.0, "k": 5}})
    grid = {"gamma": [0.03, 0.3, 3.0], "k": [4, 5, 6], "mode": ["x", "y"]}
    with pytest.warns(GridEdgeWarning, match=r"'uvd' has its best gamma=3.0 on the upper edge"):
        t = tune(["uvd"], grid, score, val=sp["val"])
    a = t.arms["uvd"]
    assert a.chosen["gamma"] == pytest.approx(30.0) and a.chosen["k"] == 5
    assert [w["value"] for w in a.widened if w["axis"] == "gamma"][:2] == [30.0, 300.0]
    assert a.evaluated == 18 + len(a.widened) and not a.on_edge
    assert "mode" not in {w["axis"] for w in a.widened}  # categorical: never widened

    # linear axis, lower edge, integers; bounded by 0 for a non-negative axis
    def lin(arm, params, val):
        return -abs(params["n"] - 1)

    with pytest.warns(GridEdgeWarning, match="lower edge"):
        t2 = tune(["x"], {"n": [4, 6, 8]}, lin, val=sp["val"], max_widen=5)
    assert [w["value"] for w in t2.arms["x"].widened] == [2, 0]  # 0 is the bound
    assert t2.chosen["x"]["n"] == 2 and t2.arms["x"].on_edge == []

    # still on the edge after max_widen: a second warning, and the record says so
    with pytest.warns(GridEdgeWarning) as caught:
        t3 = tune(["y"], {"g": [1.0, 10.0]}, quad({"y": {"g": 1e9}}), val=sp["val"], max_widen=2)
    assert ["upper edge" in str(w.message) for w in caught] == [True, False]
    assert "still on the edge of ['g'] after 2 added values" in str(caught[1].message)
    assert t3.arms["y"].on_edge == ["g"] and t3.arms["y"].evaluated == 4


def test_tuning_resumes_from_a_memo(tmp_path):
    sp = Splits.build(make_items, seed=0)
    calls = []

    def score(arm, params, val):
        calls.append(params)
        return params["lr"] * (2 - params["lr"])

    memo = Memo(tmp_path / "tune.json", key="v1")
    tune(["a"], {"lr": [0.5, 1.0, 1.5]}, score, val=sp["val"], memo=memo)
    n = len(calls)
    again = tune(
        ["a"],
        {"lr": [0.5, 1.0, 1.5]},
        score,
        val=sp["val"],
        memo=Memo(tmp_path / "tune.json", key="v1"),
    )
    assert len(calls) == n and again.chosen["a"] == {"lr": 1.0}


def test_two_tunings_on_one_memo_need_distinct_contexts(tmp_path):
    """A bench that tunes once per setting (e.g. per sparsity) on one memo must not read the
    second tuning's scores back from the first (rsparse did once: every sparsity got 30%'s)."""
    sp = Splits.build(make_items, seed=0)
    memo = Memo(tmp_path / "tune.json", key="v1")
    grid = {"lr": [0.5, 1.0, 1.5]}

    def at(shift):
        return lambda arm, params, val: -((params["lr"] - shift) ** 2)

    t1 = tune(["a"], grid, at(0.5), val=sp["val"], memo=memo, context="s=0.3")
    with pytest.raises(ValueError, match="distinct context"):
        tune(["a"], grid, at(1.5), val=sp["val"], memo=memo, context="s=0.3")
    t2 = tune(["a"], grid, at(1.0), val=sp["val"], memo=memo, context="s=0.4")
    assert t1.chosen["a"] == {"lr": 0.5} and t2.chosen["a"] == {"lr": 1.0}
    scores = [p["score"] for p in t2.arms["a"].points]
    assert scores == [-0.25, 0.0, -0.25]  # its own scores, not the first tuning's


# -- arms x seeds ---------------------------------------------------------------------------
def test_run_arms_resumes_from_the_memo_without_recomputing(tmp_path):
    calls = []

    def evaluate(arm, settings, seed):
        calls.append((arm, seed))
        if len(calls) == 4 and not (tmp_path / "stop").exists():
            (tmp_path / "stop").touch()
            raise KeyboardInterrupt  # interrupted mid-run
        return {"acc": settings["k"] * 0.1 + seed * 0.01, "per_item": [1, 0, seed % 2]}

    arms = {"ours": {"k": 2}, "base": {"k": 1}}
    logged = []
    with pytest.raises(KeyboardInterrupt):
        run_arms(arms, [0, 1, 2], evaluate, Memo(tmp_path / "m.json", key="k"), log=logged.append)
    assert len(calls) == 4  # 3 finished, the 4th interrupted
    runs = run_arms(
        arms, [0, 1, 2], evaluate, Memo(tmp_path / "m.json", key="k"), log=logged.append
    )
    assert runs.resumed == 3 and runs.computed == 3 and len(calls) == 4 + 3
    assert runs.per_seed("ours", "acc") == pytest.approx([0.2, 0.21, 0.22])
    assert runs.mean_std("base")["acc"]["n"] == 3 and "per_item" not in runs.mean_std("base")
    assert runs.values["ours"][2]["per_item"] == [1, 0, 0]
    assert any("resumed" in line for line in logged) and any("[6/6]" in x for x in logged)
    # changed settings are not taken from the memo
    rerun = run_arms(
        {"ours": {"k": 3}}, [0], evaluate, Memo(tmp_path / "m.json", key="k"), log=None
    )
    assert rerun.computed == 1 and rerun.values["ours"][0]["acc"] == pytest.approx(0.3)
    with pytest.raises(KeyError, match="has no metric 'f1'; it has: acc, per_item"):
        runs.per_seed("ours", "f1")


# -- paired intervals -----------------------------------------------------------------------
def test_per_seed_t_interval_matches_a_hand_computation():
    a, b = [0.71, 0.74, 0.69, 0.75, 0.72], [0.70, 0.71, 0.70, 0.72, 0.69]
    d = np.subtract(a, b)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    iv = paired(a, b, names=("dtrpo", "sft"), metric="acc").per_seed
    assert iv.estimate == pytest.approx(d.mean())
    assert (iv.lo, iv.hi) == pytest.approx((d.mean() - half, d.mean() + half))
    ref = stats.ttest_rel(a, b)
    assert iv.p == pytest.approx(ref.pvalue)
    assert (iv.lo, iv.hi) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    with pytest.raises(ValueError, match="at least 2 seeds"):
        t_interval([0.1])
    same = t_interval([0.02, 0.02, 0.02])
    assert same.lo == same.hi == 0.02


def test_bootstrap_covers_a_planted_difference_and_a_zero_one_includes_zero():
    rng = np.random.default_rng(0)
    base = rng.random(600)
    ours = base + 0.05 + rng.normal(0, 0.1, 600)  # planted +0.05 per item
    iv = bootstrap_interval(ours - base, resamples=2000, seed=0)
    assert iv.contains(0.05) and not iv.contains(0.0) and iv.p < 0.01
    # the same resamples by hand: the percentile interval of resampled means
    d = ours - base
    idx = np.random.default_rng(0).integers(0, 600, size=(2000, 600))
    lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
    assert (iv.lo, iv.hi) == pytest.approx((lo, hi))
    null = paired(items_a=base + rng.normal(0, 0.1, 600), items_b=base, names=("x", "y"))
    assert null.per_item.contains(0.0) and null.per_item.p > 0.05 and null.per_seed is None
    zero = bootstrap_interval(np.zeros(50))
    assert zero.lo == zero.hi == 0.0 and zero.p == 1.0


def test_paired_two_dimensional_items_and_compare_on_runs():
    def evaluate(arm, settings, seed):
        r = np.random.default_rng(seed)
        items = (r.random(40) < (0.7 if arm == "ours" else 0.5)).astype(float)
        return {"acc": float(items.mean()), "items": items.tolist()}

    runs = run_arms(["ours", "base"], [0, 1, 2], evaluate, log=None)
    p = compare(runs, "ours", "base", "acc", items="items")
    assert p.per_seed.n == 3 and p.per_item.n == 40
    assert p.main is p.per_item and p.label == "acc: ours − base"
    text = format_delta(p)
    assert text.startswith("Δ = +") and "[" in text
    assert delta_text(0.019, -0.001, 0.041) == "+0.019 [−0.001, +0.041]"
    assert format_delta(t_interval([0.01, 0.02, 0.03]), digits=2) == "Δ = +0.02 [−0.00, +0.04]"


# -- interleaved timing ---------------------------------------------------------------------
def test_interleaved_timing_alternates_arms_and_restores_threads():
    log = []
    reads = {"n": 0}

    def reader(k):
        def fn():
            reads["n"] += k

        return fn

    old = torch.get_num_threads()
    t = timeit_interleaved(
        {"a": reader(1), "b": reader(10), "c": reader(100)},
        repeats=4,
        threads=1,
        warmup=1,
        counters={"bytes": lambda: reads["n"]},
        peak_rss=True,
        log_call=lambda name, phase, r: log.append((phase, r, name)),
    )
    assert torch.get_num_threads() == old and t.threads == 1
    timed = [name for phase, _, name in log if phase == "timed"]
    assert timed == list("abcbcacababc")  # round-robin, rotated every repeat
    assert [name for phase, _, name in log[:3]] == list("abc") and log[0][0] == "warmup"
    assert t.orders[1] == ["b", "c", "a"]
    assert t.counters["b"]["bytes"] == [10.0] * 4  # counted per timed call only
    s = t.summary()
    assert s["a"]["n"] == 4 and s["a"]["q1_s"] <= s["a"]["median_s"] <= s["a"]["q3_s"]
    assert s["c"]["bytes"]["median"] == 100.0 and "peak_rss_delta_mb" in s["c"]
    rec = t.to_record()
    assert rec["threads"] == 1 and rec["warmup"] == 1 and len(rec["orders"]) == 4
    json.dumps(rec)


def test_peak_rss_sees_an_allocation():
    from fmlab.core.experiment import measure_peak_rss

    def alloc():
        x = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        return float(x.sum())

    _, mb = measure_peak_rss(alloc)
    assert mb > 32


# -- the record -----------------------------------------------------------------------------
def _full_record(tmp_path):
    sp = Splits.build(make_items, seed=0, dev_seeds=(0,), test_seeds=(1, 2, 3))
    tuning = tune(
        ["ours", "base"], {"k": [1, 2, 3]}, lambda arm, p, val: -abs(p["k"] - 2), val=sp["val"]
    )
    sp.open_test()

    def evaluate(arm, settings, seed):
        return {"acc": 0.6 + 0.1 * (arm == "ours") + 0.01 * seed}

    runs = run_arms(tuning.chosen, sp.test_seeds, evaluate, log=None)
    diff = compare(runs, "ours", "base", "acc")
    s = runs.summary()
    rec = ResultRecord(
        method="demo_method",
        claim="Ours beats base.",
        setup={"seeds": [1, 2, 3]},
        metrics=s["ours"],
        baselines={"base": s["base"]},
        headline=["acc"],
        **record_fields(sp, tuning, [diff]),
    )
    return write_record(rec, tmp_path / "results" / "demo_method" / "r.json"), diff


def test_record_round_trips_the_new_fields_and_old_records_still_load(tmp_path):
    path, diff = _full_record(tmp_path)
    d = load_record(path)
    assert d["splits"]["disjoint"] is True and d["splits"]["test_opened"] is True
    assert d["seeds_seen_in_design"] == [0]
    assert d["tuning"]["chosen"] == {"ours": {"k": 2}, "base": {"k": 2}}
    assert d["tuning"]["arms"]["ours"]["evaluated"] == 3
    iv = d["intervals"]["acc: ours − base"]
    assert iv["per_seed"]["lo"] == pytest.approx(diff.per_seed.lo) and iv["headline"] is True
    per_seed_tunings = {"seed 0": tune(["a"], {"k": ["x", "y"]}, lambda *a: 1.0, val=[1, 2])}
    assert record_fields(tuning=per_seed_tunings)["tuning"]["seed 0"]["budget"] == 2
    with pytest.raises(ValueError, match="two intervals are labelled 'acc: ours − base'"):
        record_fields(intervals=[diff, diff])
    old = {k: v for k, v in d.items() if k not in ("splits", "tuning", "intervals")}
    old.pop("seeds_seen_in_design")
    (path.parent / "old.json").write_text(json.dumps(old))
    assert "Differences" not in render_record(load_record(path.parent / "old.json"))


def test_render_record_and_readme_table_show_the_interval(tmp_path):
    path, diff = _full_record(tmp_path)
    d = load_record(path)
    text = render_record(d)
    iv = diff.per_seed
    shown = delta_text(iv.estimate, iv.lo, iv.hi)
    assert f"- Δ ours − base (acc): {shown} (per-seed t, 95%, 3 seeds" in text
    table = render_results_table(tmp_path / "results", base=tmp_path)
    assert f"Δ acc ours − base = {shown}" in table
    # per-item bootstrap beside the per-seed one
    p = paired(
        [0.1, 0.2, 0.3],
        [0.0, 0.1, 0.1],
        items_a=np.ones(20),
        items_b=np.r_[np.ones(10), np.zeros(10)],
        names=("dtrpo", "sft"),
    )
    line = p.format()
    assert (
        line.startswith("Δ dtrpo − sft: +0.50 [") and "(per-item bootstrap, 95%, 20 items" in line
    )
    assert "; per-seed t: " in line
    png = interval_plot(tmp_path / "iv.png", [p, diff])
    assert png.stat().st_size > 1000


# -- the docs example -----------------------------------------------------------------------
def test_docs_writing_a_bench_example_runs(tmp_path):
    """docs/core.md's "Writing a bench" example, with toy stand-ins for the method's own
    functions, runs, resumes, and writes a record with every harness field."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "core.md").read_text(encoding="utf-8")
    start = text.index("```python", text.index("## Writing a bench")) + len("```python\n")
    code = text[start : text.index("```", start)]

    def generate(n, seed):
        r = np.random.default_rng(seed)
        return [{"prompt": f"p{seed}-{i}-{r.random()}", "y": r.random()} for i in range(n)]

    def correct(model, ex):
        bonus = 0.1 if model["arm"] == "ours" else 0.0
        return ex["y"] < 0.5 + bonus - abs(model["lr"] - 3e-4) * 1000

    ns = {
        "generate": generate,
        "correct": correct,
        "fit": lambda arm, train, seed, lr: {"arm": arm, "lr": lr, "seed": seed},
        "accuracy": lambda model, items: float(np.mean([correct(model, ex) for ex in items])),
    }
    exec(compile(code, "docs/core.md", "exec"), ns)
    rec = ns["run"](tmp_path)
    assert rec.splits["test_opened"] and rec.tuning["chosen"]["ours"] == {"lr": 3e-4}
    assert "acc: ours − sft" in rec.intervals and rec.seeds_seen_in_design == [0]
    assert "Δ ours − sft (acc)" in render_record(load_record(tmp_path / "mymethod.json"))


def test_paired_items_distinct_across_seeds_are_each_resampled():
    from fmlab.core.experiment import paired

    rng = np.random.default_rng(0)
    a, b = rng.random((3, 10)), rng.random((3, 10))
    same = paired(items_a=a, items_b=b)
    distinct = paired(items_a=a, items_b=b, items_across_seeds="distinct")
    assert same.per_item.n == 10 and distinct.per_item.n == 30
    assert distinct.per_item.estimate == pytest.approx(float((a - b).mean()))
    with pytest.raises(ValueError, match="items_across_seeds"):
        paired(items_a=a, items_b=b, items_across_seeds="other")


def test_ratio_interval_is_the_t_interval_of_log_ratios():
    dense = [1.0, 1.1, 0.95, 1.05, 1.2]
    sparse = [0.8, 0.82, 0.77, 0.8, 0.9]
    r = ratio_interval(dense, sparse)
    logs = np.log(np.array(dense) / np.array(sparse))
    t = t_interval(logs)
    assert r.estimate == pytest.approx(math.exp(logs.mean()))  # geometric mean of the ratios
    assert (r.lo, r.hi) == pytest.approx((math.exp(t.lo), math.exp(t.hi)))
    assert r.lo < r.estimate < r.hi and r.lo > 1 and r.p == t.p and r.n == 5
    assert r.method == "per-repeat t on log ratio"
    flat = ratio_interval([1.0, 2.0], [1.0, 2.0])  # identical repeats: ratio exactly 1
    assert (flat.estimate, flat.lo, flat.hi, flat.p) == (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="positive"):
        ratio_interval([1.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="paired"):
        ratio_interval([1.0, 2.0], [1.0])
