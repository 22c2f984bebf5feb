"""The speed bench's quick configuration: every arm runs interleaved, RSS split, same tensors."""

import json
import sys
from pathlib import Path

import pytest

from fmlab.param_delta.speed import ARMS, SpeedConfig, measure_split, run_speed


def test_measure_split_reports_anonymous_and_file_backed_memory():
    r = measure_split(
        [sys.executable, "-c", "x = bytearray(200 * 2**20); import time; time.sleep(0.3)"]
    )
    assert r["returncode"] == 0 and r["peak_anon_mb"] >= 190
    assert r["peak_file_mb"] > 0 and r["peak_rss_mb"] >= r["peak_anon_mb"]


@pytest.mark.slow
def test_quick_speed_bench_writes_a_complete_record(tmp_path):
    if not (Path(sys.executable).parent / "mergekit-yaml").exists():
        pytest.skip("mergekit not installed (pip install -e '.[bench]')")
    run_speed(tmp_path, cfg=SpeedConfig.quick(), log=lambda *_: None)
    d = json.loads((tmp_path / "speed.json").read_text())
    row = d["metrics"]["by_input"]["tiny"]
    assert set(row["arms"]) == set(ARMS) and set(d["baselines"]) == set(ARMS[1:])
    for a in ARMS:
        assert len(row["arms"][a]["wall_s_all"]) == 2
        assert row["arms"][a]["peak_anon_mb"] > 0 and row["arms"][a]["peak_file_mb"] > 0
    assert row["orders"][0] != row["orders"][1]  # interleaved, order rotated
    assert row["max_abs_diff_matched"] <= 1e-6 and row["max_abs_diff_default"] <= 1e-6
    assert int(row["mergekit_matched_out_shard_size_params"]) == 2_000_000 // 4
