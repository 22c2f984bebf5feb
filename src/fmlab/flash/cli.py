"""`fmlab flash`: measure, fit, search, prune, recover, export, bench (thin over fmlab.flash).

Archs are JSON files (``{"layers": [...], "ffn": ..., "kv_heads": ..., "attention": ...}``);
a bad arch exits 2 with every problem listed, before any model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail, log

app = typer.Typer(
    help="MobileLLM-Flash: latency-model-guided pruning search, attention skipping, export.",
    no_args_is_help=True,
    add_completion=False,
)

MODEL_HELP = "the backbone: smollm2-135m-instruct (bundled) or a HF Llama checkpoint directory"


def _arch(path: Path):
    from fmlab.flash import FlashArch, FlashArchError

    try:
        return FlashArch.load(path)
    except (FlashArchError, FileNotFoundError) as e:
        fail(str(e))


def _backbone(model: str, threads: int | None = None):
    import torch

    from fmlab.core.models import load_pretrained

    if threads:
        torch.set_num_threads(threads)
    try:
        m, tok = load_pretrained(model)
    except (ValueError, OSError) as e:
        fail(str(e))
    return m.eval().requires_grad_(False), tok


def _load_any(path: str, tokenizer: bool = False):
    """A saved Flash/Llama model directory or a bundled name (tokenizer only when asked)."""
    import fmlab.flash  # noqa: F401  (registers the Auto classes)
    from fmlab.core.models import BUNDLED_MODELS

    if path in BUNDLED_MODELS or tokenizer:
        return _backbone(path)
    from transformers import AutoModelForCausalLM

    from fmlab.core.models import check_model_dir

    try:
        check_model_dir(Path(path))
        m = AutoModelForCausalLM.from_pretrained(path)
    except (ValueError, OSError) as e:
        fail(str(e))
    return m.eval().requires_grad_(False), None


def _shape(model: str):
    """The backbone's shape from its config alone (checked before any weights load)."""
    from transformers import AutoConfig

    import fmlab.flash  # noqa: F401
    from fmlab.core.models import resolve_model_dir
    from fmlab.flash import BackboneShape

    try:
        return BackboneShape.of(AutoConfig.from_pretrained(resolve_model_dir(model)))
    except (ValueError, OSError) as e:
        fail(str(e))


def _calib(tok, corpus: str, seq_len: int, rows: int):
    from fmlab.core.data import load_corpus, split_documents
    from fmlab.flash.prune import calibration_ids

    docs = split_documents(load_corpus(corpus), seed=0)["train"]
    return calibration_ids([d.text for d in docs], tok, seq_len, rows)


def _ints(spec: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in spec.split(",") if x.strip())
    except ValueError:
        fail(f"--{name} {spec!r}: use comma-separated integers, e.g. 128,512")


def _check_arch_against(arch, model: str) -> None:
    from fmlab.flash import FlashArchError

    try:
        arch.validate(_shape(model))
    except FlashArchError as e:
        fail(str(e))


@app.command("prune")
def prune_cmd(
    arch: Path = typer.Option(..., help="arch JSON file"),
    out: Path = typer.Option(..., help="directory for the pruned model (must not exist)"),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    corpus: str = typer.Option("prose", help="calibration text: prose, code, or a .txt/.jsonl"),
    seq_len: int = typer.Option(256),
    rows: int = typer.Option(8, help="calibration rows of seq_len tokens"),
) -> None:
    """Prune a backbone to ARCH with inherited weights; save it (loads with AutoModel)."""
    from fmlab.core.io import atomic_dir
    from fmlab.flash.prune import prune

    a = _arch(arch)
    _check_arch_against(a, model)  # before any weights load
    m, tok = _backbone(model)
    try:
        p = prune(m, a, _calib(tok, corpus, seq_len, rows))
        with atomic_dir(out) as tmp:
            p.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    except (ValueError, OSError) as e:
        fail(str(e))
    typer.echo(f"pruned to {a.describe()}; saved {out}")


@app.command("measure")
def measure_cmd(
    model: str = typer.Option("smollm2-135m-instruct", help="a model directory or bundled name"),
    prefill: str = typer.Option("128,512", help="prefill lengths"),
    decode: str = typer.Option("128,2048", help="decode context lengths"),
    threads: int = typer.Option(1),
    repeats: int = typer.Option(5),
    runtime: str = typer.Option(
        "eager", help="eager | executorch (.pte per target; decode with a static KV cache)"
    ),
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Median prefill seconds and decode seconds/token (KV cache) at fixed threads."""
    from fmlab.flash.latency import measure

    lengths, contexts = _ints(prefill, "prefill"), _ints(decode, "decode")
    m, _ = _load_any(model)
    try:
        lat = measure(m, lengths, contexts, runtime=runtime,
                      threads=threads, repeats=repeats)  # fmt: skip
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    if json_out:
        typer.echo(json.dumps(lat))
    else:
        for t, s in lat.items():
            typer.echo(f"{t}: {s * 1e3:.2f} ms" + ("/token" if t.startswith("decode") else ""))


@app.command("fit")
def fit_cmd(
    measurements: Path = typer.Option(..., help="JSONL: one {arch, latency: {target: s}} a line"),
    out: Path = typer.Option(..., help="where the latency model JSON goes"),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    kind: str = typer.Option("gp", help="gp | gbr | linear"),
) -> None:
    """Fit a latency model on measured archs; print cross-validated R² and MAPE."""
    from fmlab.core.io import atomic_write_json
    from fmlab.flash import FlashArch, FlashArchError
    from fmlab.flash.latency import LatencyModel

    if not measurements.is_file():
        fail(f"{measurements} does not exist; write it with `fmlab flash measure --json` rows")
    archs, lats = [], []
    for n, line in enumerate(measurements.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            archs.append(FlashArch.from_dict(row["arch"]))
            lats.append({k: float(v) for k, v in row["latency"].items()})
        except (json.JSONDecodeError, KeyError, TypeError, FlashArchError) as e:
            fail(f"{measurements}:{n}: not an {{arch, latency}} row ({e})")
    shape = _shape(model)
    try:
        lm = LatencyModel(shape, kind).fit(archs, lats)
        cv = lm.cross_validate()
    except (ValueError, OSError) as e:
        fail(str(e))
    atomic_write_json(out, {**lm.to_dict(), "cv": cv})
    from fmlab.flash.plots import fit_plot

    fit_plot(out.with_suffix(".png"), cv, f"{kind}, out-of-fold")
    for t, r in cv.items():
        typer.echo(f"{t}: R² {r['r2']:.3f}  MAPE {r['mape']:.1%}  (FLOPs: Spearman "
                   f"{r['flops_spearman']:.3f}; params: {r['params_spearman']:.3f})")  # fmt: skip
    typer.echo(f"wrote {out} and {out.with_suffix('.png')}")


@app.command("search")
def search_cmd(
    latency_model: Path = typer.Option(..., help="a latency model JSON from `fmlab flash fit`"),
    out: Path = typer.Option(..., help="where the search result JSON goes"),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    trials: int = typer.Option(100),
    population: int = typer.Option(20),
    min_layers: int = typer.Option(8),
    seed: int = typer.Option(0),
) -> None:
    """NSGA-II over (predicted latency / backbone, calibration perplexity): the Pareto set."""
    import math

    from fmlab.core.evaluate import lm_loss
    from fmlab.core.io import atomic_write_json, read_json
    from fmlab.flash import BackboneShape, FlashArch
    from fmlab.flash.latency import LatencyModel
    from fmlab.flash.prune import importance, prune
    from fmlab.flash.search import SearchSpace, search

    try:
        lm = LatencyModel.from_dict(read_json(latency_model))
    except (ValueError, OSError) as e:
        fail(f"{latency_model}: {e}")
    m, tok = _backbone(model)
    shape = BackboneShape.of(m)
    if shape != lm.shape:
        fail(f"{latency_model} was fitted on a backbone of shape {lm.shape}, not {model}'s")
    calib = _calib(tok, "prose", 256, 8)
    imp = importance(m, calib)
    ref = lm.predict(FlashArch.uniform(shape))
    blocks = __import__("torch").cat([calib, calib[:, :1]], 1)

    def rel(a):
        p = lm.predict(a)
        return sum(p[t] / ref[t] for t in ref) / len(ref)

    res = search(shape, imp, rel, lambda a: math.exp(lm_loss(prune(m, a, scores=imp), blocks, 4)),
                 space=SearchSpace(min_layers=min_layers), trials=trials, population=population,
                 seed=seed, log=log)  # fmt: skip
    atomic_write_json(out, res.to_dict())
    from fmlab.flash.plots import pareto_plot

    pareto_plot(out.with_suffix(".png"), res.trials, res.pareto)
    for i in res.pareto:
        t = res.trials[i]
        typer.echo(f"latency {t['latency']:.3f}  ppl {t['ppl']:.2f}  "
                   f"{FlashArch.from_dict(t['arch']).describe()}")  # fmt: skip
    typer.echo(f"hypervolume {res.hypervolume:.4f}; wrote {out} and {out.with_suffix('.png')}")


@app.command("recover")
def recover_cmd(
    student: Path = typer.Option(..., help="a pruned model directory (`fmlab flash prune`)"),
    out: Path = typer.Option(..., help="training directory (checkpoint, metrics, model/)"),
    teacher: str = typer.Option("smollm2-135m-instruct", help="the unpruned model"),
    tokens: int = typer.Option(200_000, help="distillation token budget"),
    corpus: str = typer.Option("prose"),
    seq_len: int = typer.Option(256),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(3e-4),
    seed: int = typer.Option(0),
) -> None:
    """Distil the teacher into the pruned student (KL), resumable from --out."""
    from fmlab.core.data import load_corpus, pack_documents, split_documents
    from fmlab.flash.recover import recover

    s, tok = _load_any(str(student), tokenizer=True)
    t, _ = _backbone(teacher)
    try:
        docs = split_documents(load_corpus(corpus), seed=seed)
        blocks = pack_documents(tok, docs["train"], seq_len)
        val = pack_documents(tok, docs["val"], seq_len)
        res = recover(s.train().requires_grad_(True), t, blocks, tokens, out,
                      batch_size=batch_size, lr=lr, val_blocks=val, seed=seed)  # fmt: skip
    except (ValueError, OSError) as e:
        fail(str(e))
    res.raise_if_signalled("fmlab flash recover")
    tok.save_pretrained(out / "model")
    typer.echo(f"recovered {res.steps} steps ({res.tokens:,} tokens): val_loss {res.val_loss:.3f}; "
               f"model in {out / 'model'}")  # fmt: skip


@app.command("export")
def export_cmd(
    model: str = typer.Option(..., help="a (pruned) model directory"),
    out: Path = typer.Option(..., help="the .pte file to write"),
    seq_len: int = typer.Option(
        64,
        help="the exported prompt length (static shape); with --max-len: the tokens the "
        "parity check decodes (at most max-len)",
    ),
    max_len: int = typer.Option(
        0,
        help="export the decode step with a static KV cache of this many positions "
        "instead of the prefill (0: the prefill)",
    ),
    atol: float = typer.Option(1e-3, help="max |logits .pte - eager| allowed"),
) -> None:
    """torch.export -> ExecuTorch .pte (XNNPACK), with an eager-vs-.pte logits check."""
    from fmlab.flash.export import ExportError, executorch_available, export, export_decode

    why = executorch_available()
    if why:
        fail(why)
    if max_len < 0:
        fail(f"--max-len {max_len}: use a positive cache length, or 0 for the prefill")
    m, _ = _load_any(model)
    try:
        if max_len:
            rep = export_decode(m, out, max_len, steps=min(seq_len, max_len), atol=atol)
        else:
            rep = export(m, out, seq_len, atol=atol)
    except (ExportError, OSError, ValueError) as e:
        fail(str(e))
    what = f" over {rep['steps']} decode steps" if max_len else ""
    typer.echo(f"wrote {out} ({rep['bytes']:,} bytes); max |Δlogits|{what} "
               f"{rep['max_abs_diff']:.2e}")  # fmt: skip


@app.command("bench")
def bench_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="SmolLM2 cut to 6 layers, tiny sizes (claims nothing)"),
    seeds: int = typer.Option(3, help="recovery seeds (full run)"),
    candidates: int = typer.Option(120, help="measured candidates for the latency fit"),
) -> None:
    """Measure, fit, search, recover and time on SmolLM2-135M (see docs/flash.md)."""
    from fmlab.flash.bench import BenchConfig, run

    cfg = (BenchConfig.quick() if quick
           else BenchConfig(seeds=tuple(range(1, seeds + 1)), candidates=candidates))  # fmt: skip
    out = bench_out("flash", out, quick)
    rec = run(out, cfg, command="fmlab flash bench" + (" --quick" if quick else ""))
    lm = rec.metrics["latency_model"]["held_out"]
    typer.echo("held-out latency R²: " + ", ".join(f"{t} {v['r2']:.3f}" for t, v in lm.items()))
    for name, p in rec.metrics["picks"].items():
        typer.echo(f"{name}: test ppl {p['ppl']['mean']:.2f} (before recovery "
                   f"{p['ppl_before']['mean']:.2f}); speed-up "
                   + ", ".join(f"{t} {v:.2f}x" for t, v in p["speedup"].items()))  # fmt: skip
    typer.echo(f"wrote {out / 'flash.json'}")
