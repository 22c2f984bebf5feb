import sys

from fmlab.core.measure import fmlab_executable, measure_command, single_thread_env


def test_measure_command_reports_the_childs_own_memory_and_its_kinds():
    code = "x = bytearray(60_000_000); x[::4096] = b'1' * len(x[::4096])"
    r = measure_command([sys.executable, "-c", code], split_rss=True)
    assert r["returncode"] == 0 and r["peak_rss_mb"] > 55
    assert r["peak_anon_mb"] > 50 and "peak_file_mb" in r
    assert "peak_anon_mb" not in measure_command([sys.executable, "-c", "pass"])


def test_single_thread_env_and_the_fmlab_command():
    env = single_thread_env()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1" and "PATH" in env
    assert fmlab_executable().name == "fmlab"
