"""Wall time and peak RSS of a command, measured in its own process.

On Linux a forked child's ``ru_maxrss`` starts at its parent's resident size at fork time,
so forking the measured command straight from a large process (a bench that already imported
torch and holds models) would floor every measurement at the parent's footprint. The command
is therefore forked from a fresh, small interpreter, which reads the child's own rusage with
``os.wait4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["fmlab_executable", "measure_command", "single_thread_env"]

_LAUNCHER = """
import json, os, sys, time
sample = sys.argv[2] == "1"
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[3], sys.argv[3:])
peak = {"RssAnon": 0, "RssFile": 0}
while True:
    done, status, ru = os.wait4(pid, os.WNOHANG if sample else 0)
    if done:
        break
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in peak:
                    peak[k] = max(peak[k], int(v.split()[0]))
    except (OSError, ValueError):
        pass
    time.sleep(0.005)
res = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": ru.ru_maxrss / 1024,
       "returncode": os.waitstatus_to_exitcode(status)}
if sample:
    res.update(peak_anon_mb=peak["RssAnon"] / 1024, peak_file_mb=peak["RssFile"] / 1024)
with open(sys.argv[1], "w") as f:
    json.dump(res, f)
"""


def measure_command(cmd: list[str], env: dict | None = None, split_rss: bool = False) -> dict:
    """Run ``cmd``; return ``wall_s``, its own ``peak_rss_mb`` (MiB), ``returncode`` and the
    last 2,000 characters of its combined output (``output_tail``). Linux (ru_maxrss in KiB).

    ``split_rss`` also samples ``/proc/<pid>/status`` every 5 ms for the peaks of anonymous
    and file-backed resident memory (``peak_anon_mb``, ``peak_file_mb``): memory-mapped input
    pages count in RSS but the kernel can drop them, so a fair comparison reports them apart."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        p = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(stats), "1" if split_rss else "0", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        if not stats.is_file():
            raise RuntimeError(
                f"measuring {cmd[0]} failed:\n{p.stdout.decode(errors='replace')[-2000:]}"
            )
        res = json.loads(stats.read_text())
    res["output_tail"] = p.stdout.decode(errors="replace")[-2000:]
    return res


def fmlab_executable() -> Path:
    """The ``fmlab`` command of this environment (measured commands run it as a user would)."""
    path = Path(sys.executable).parent / "fmlab"
    if not path.exists():
        raise FileNotFoundError(f"{path}: the fmlab command is not installed in this env")
    return path


def single_thread_env() -> dict[str, str]:
    """This process's environment with one OpenMP/MKL thread: on a shared machine threaded
    kernels can be orders of magnitude slower, and memory does not depend on the thread count."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
