"""The R-Sparse speed bench on SmolLM2 cut to 2 layers: every cell interleaves its arms, the
speed-up carries an interval over the paired repeats, the verdict comes from that interval,
and the traffic comes from the kernel's counters (per row and union over the batch)."""

import json

import pytest

from fmlab.rsparse.bench import _cut_model
from fmlab.rsparse.speed import SpeedConfig, run_speed


@pytest.mark.slow
def test_speed_record_has_intervals_verdict_and_measured_traffic(tmp_path):
    cfg = SpeedConfig(model=_cut_model(2, tmp_path), threads=(1,), batches=(1, 4),
                      dtypes=("float32",), prompt_tokens=16, new_tokens=3, prefill_tokens=32,
                      repeats=3, calib_windows=1)  # fmt: skip
    run_speed(tmp_path / "out", cfg, log=lambda *_: None)
    rec = json.loads((tmp_path / "out/speed.json").read_text())
    m = rec["metrics"]
    dec = m["cells"]["float32|threads=1|batch=1|decode"]
    assert dec["kernel_threads"] == 1 and len(dec["loadavg_before"]) == 3
    rs = dec["arms"]["rsparse"]
    lo, hi = rs["speedup_ci95"]
    assert lo <= rs["speedup_geomean"] <= hi and m["decode_speedup_ci95"] == [lo, hi]
    assert m["verdict"]["decode_faster_than_dense"] == (lo > 1.0)
    assert m["verdict"]["prefill_no_slower_within_5pct"] == (m["prefill_speedup_ci95"][0] >= 0.95)
    ends = m["verdict"]["prefill_lower_ends"]
    assert set(ends) == {"float32@batch1", "float32@batch4"}
    assert m["verdict"]["prefill_all_within_5pct"] == all(v >= 0.95 for v in ends.values())
    assert 0.2 < rs["kept_fraction_measured"] < 0.8  # ~50% sparsity, measured not budgeted
    assert 0 < rs["block_bytes_fraction_read"] < 1 and rs["lm_head_bytes_per_step"] > 0
    assert len(rs["counters_per_repeat"]["bytes_read"]) == 3
    b4 = m["cells"]["float32|threads=1|batch=4|decode"]["arms"]["rsparse"]
    # a channel any row keeps is read once: the union is at least each row's own share
    assert b4["union_kept_fraction_measured"] >= b4["kept_fraction_measured"]
    # the no-linears arm times everything but the block linears: their share and the ceiling
    row = m["by_dtype"]["float32@1t"]
    assert 0 < row["block_linear_share_of_dense_decode"] < 1
    assert row["speedup_ceiling_at_bytes_read"] > 1 and "decode_b4_rsparse-fallback" in row
    heads = [k for k, v in rec["intervals"].items() if v["headline"]]
    assert heads and all("log tokens/s" in k for k in heads)
    # an interrupted run resumes from the memo beside the record: every cell comes back
    # untimed, with the same intervals (recomputed from the stored per-repeat seconds)
    lines = []
    run_speed(tmp_path / "out", cfg, log=lines.append)
    again = json.loads((tmp_path / "out/speed.json").read_text())
    n = len(m["cells"])
    assert again["metrics"]["resumed_cells"] == n
    assert sum(" from " in ln for ln in lines) == n
    assert again["metrics"]["cells"] == m["cells"] and again["intervals"] == rec["intervals"]
