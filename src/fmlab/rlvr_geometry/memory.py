"""Peak memory of ``fmlab rlvr-geometry analyze`` on the bundled SmolLM2 against a modified copy.

The issue's "Must show": analyze runs with peak RSS well below the model size. The copy is the
bundled SmolLM2-135M-Instruct (float32 safetensors) with seeded sparse noise added to a few
tensors (the embedding among them, so the streamed path is exercised), written tensor by
tensor. Each command runs in its own process, forked from a small launcher
(:func:`fmlab.core.measure.measure_command`), so its peak RSS is its own. Baselines measured in
the same run: the model's size on disk, loading both state dicts with safetensors
``load_file`` (what a non-streaming tool holds), and the floor of importing torch and fmlab.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from fmlab.core.checkpoint import TensorSource, write_sharded
from fmlab.core.measure import fmlab_executable, measure_command, single_thread_env
from fmlab.core.results import ResultRecord, write_record

__all__ = ["MODIFIED", "make_modified_copy", "measure_memory"]

CLAIM = (
    "fmlab rlvr-geometry analyze streams checkpoints tensor by tensor, so its peak memory stays "
    "well below the size of the models it compares."
)
# (tensor, fraction of entries changed, relative noise): a few tensors, one of each kind
MODIFIED = (
    ("model.embed_tokens.weight", 0.1, 1e-2),
    ("model.layers.0.self_attn.q_proj.weight", 0.2, 1e-2),
    ("model.layers.14.mlp.down_proj.weight", 0.2, 1e-2),
    ("model.layers.29.self_attn.v_proj.weight", 0.5, 1e-3),
)


def make_modified_copy(base: str | os.PathLike, out: str | os.PathLike, seed: int = 0) -> Path:
    """Copy checkpoint ``base`` to ``out`` with sparse noise on the :data:`MODIFIED` tensors
    (w += rel · |w| · N(0, 1) on a random fraction of entries), streamed tensor by tensor."""
    src = TensorSource.open(base)
    specs = [src.spec(k) for k in sorted(src.keys())]
    plan = {name: (frac, rel) for name, frac, rel in MODIFIED}
    missing = sorted(set(plan) - set(src.keys()))
    if missing:
        raise ValueError(f"{base}: no tensors {missing}; the copy expects a SmolLM2 checkpoint")

    def tensors():
        for i, s in enumerate(specs):
            t = src.get(s.name)
            if s.name in plan:
                frac, rel = plan[s.name]
                g = torch.Generator().manual_seed(seed * 100_003 + i)
                mask = torch.rand(s.shape, generator=g) < frac
                noise = torch.randn(s.shape, generator=g) * t.abs() * rel
                t = t + noise * mask
            yield s.name, t

    out = Path(out)
    out.mkdir(parents=True)
    write_sharded(out, specs, tensors(), max_shard_size="200MB")
    for f in Path(src.root).iterdir():
        if f.suffix == ".json" and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    return out


_LOAD_BOTH = """
import sys
from pathlib import Path
from safetensors.torch import load
sds = []
for d in sys.argv[1:]:  # read into process memory (load_file would only map the files)
    sd = {}
    for f in sorted(Path(d).glob('*.safetensors')):
        sd.update(load(f.read_bytes()))
    sds.append(sd)
print(sum(float(v.double().sum()) for sd in sds for v in sd.values()))
"""


def measure_memory(
    out_dir: str | os.PathLike,
    model: str = "smollm2-135m-instruct",
    work: str | os.PathLike | None = None,
    ks: str = "1,4,16,64",
    alpha: float = 0.5,
    log=print,
) -> ResultRecord:
    """Measure analyze's peak RSS and wall time; write ``analyze_memory.json`` in ``out_dir``."""
    from fmlab.core.io import read_json
    from fmlab.core.models import resolve_model_dir

    t_all = time.perf_counter()
    base = resolve_model_dir(model)
    fmlab_bin = fmlab_executable()
    # one thread: on a shared machine MKL's threaded SVD can be ~100x slower (memory does not
    # depend on it); the load average is recorded beside the timings
    env = single_thread_env()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        copy = make_modified_copy(base, Path(tmp) / "modified")
        rep_path, plots = Path(tmp) / "geometry.json", Path(tmp) / "plots"
        cmd = ["rlvr-geometry", "analyze", str(base), str(copy), "--json", str(rep_path)]
        cmd += ["--plots", str(plots), "--k", ks, "--alpha", str(alpha), "--no-progress"]
        cmd += ["--threads", "1"]
        log(f"measuring: fmlab {' '.join(cmd)}")
        tool = measure_command([str(fmlab_bin), *cmd], env)
        if tool["returncode"] != 0:
            raise RuntimeError(f"analyze failed:\n{tool['output_tail']}")
        report = read_json(rep_path)
        load = measure_command([sys.executable, "-c", _LOAD_BOTH, str(base), str(copy)], env)
        floor = measure_command(
            [sys.executable, "-c", "import torch, fmlab.rlvr_geometry.analyze"], env
        )
        model_bytes = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    src = TensorSource.open(base)
    largest = max(src.spec(k).nbytes for k in src)
    model_mb = model_bytes / 2**20
    overall = report["checkpoints"][0]["summary"]["overall"]
    changed = [e["name"] for e in report["checkpoints"][0]["tensors"] if e["changed"]]
    metrics = {
        "peak_rss_mb": tool["peak_rss_mb"],
        "wall_s": tool["wall_s"],
        "rss_over_model_size": tool["peak_rss_mb"] / model_mb,
        "rss_above_import_floor_mb": tool["peak_rss_mb"] - floor["peak_rss_mb"],
        "model_size_mb": model_mb,
        "largest_tensor_mb": largest / 2**20,
        "tensors_analyzed": overall["n_tensors"],
        "tensors_seen_changed": len(changed),
        "sparsity_bf16_overall": overall["sparsity_bf16"],
    }
    rec = ResultRecord(
        method="rlvr_geometry",
        claim=CLAIM,
        setup={
            "model": f"{model} (float32 safetensors, {base})",
            "modified_copy": [
                {"tensor": n, "fraction_changed": f, "relative_noise": r} for n, f, r in MODIFIED
            ],
            "command": "fmlab rlvr-geometry measure-memory --out " + str(out_dir),
            "measured_command": "fmlab rlvr-geometry analyze BASE COPY --json OUT --plots DIR "
            f"--k {ks} --alpha {alpha} --no-progress --threads 1",
            "measurement": "peak RSS (ru_maxrss via os.wait4) of each command in its own process",
            "threads": 1,
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]],
        },
        metrics=metrics,
        baselines={
            "model size on disk": {"peak_rss_mb": model_mb},
            "loading both state dicts into memory (safetensors, measured)": {
                "peak_rss_mb": load["peak_rss_mb"],
                "wall_s": load["wall_s"],
            },
            "import torch + fmlab only (floor, measured)": {
                "peak_rss_mb": floor["peak_rss_mb"],
                "wall_s": floor["wall_s"],
            },
        },
        wall_s=time.perf_counter() - t_all,
        notes=[
            f"{len(changed)} of {overall['n_tensors']} analysed tensors changed in the copy "
            f"({', '.join(changed)}); the others report sparsity 1 and NSS 0.",
            "The floor is what importing torch costs before any tensor is read; the tool's own "
            "working set is rss_above_import_floor_mb.",
        ],
        headline=["peak_rss_mb", "rss_over_model_size", "wall_s"],
    )
    out = Path(out_dir)
    write_record(rec, out / "analyze_memory.json")
    return rec
