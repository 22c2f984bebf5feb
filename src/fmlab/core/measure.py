"""Wall time and peak RSS of a command, measured in its own process.

On Linux a forked child's ``ru_maxrss`` starts at its parent's resident size at fork time,
so forking the measured command straight from a large process (a bench that already imported
torch and holds models) would floor every measurement at the parent's footprint. The command
is therefore forked from a fresh, small interpreter, which reads the child's own rusage with
``os.wait4``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["measure_command"]

_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": time.perf_counter() - t0, "peak_rss_mb": ru.ru_maxrss / 1024,
               "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def measure_command(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; return ``wall_s``, its own ``peak_rss_mb`` (MiB), ``returncode`` and the
    last 2,000 characters of its combined output (``output_tail``). Linux (ru_maxrss in KiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        p = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(stats), *cmd],
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
