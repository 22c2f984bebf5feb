"""`fmlab param-delta`: merge, diagnose, bench."""

from __future__ import annotations

from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail

app = typer.Typer(
    help="ParamΔ: Θ'_base + α·(Θ_post − Θ_base), streamed over HF checkpoints.",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)


@app.callback()
def merge(
    ctx: typer.Context,
    post: str = typer.Option(None, help="post-trained (instruct) checkpoint dir or bundled name"),
    base: str = typer.Option(None, help="the base that post was trained from"),
    new_base: str = typer.Option(None, "--new-base", help="the updated base to transfer onto"),
    out: Path = typer.Option(None, help="output directory (must not exist)"),
    scale: float = typer.Option(1.0, help="α, the weight of the post-training delta"),
    dtype: str = typer.Option(None, help="output dtype (default: the new base's per-tensor dtype)"),
    compute_dtype: str = typer.Option("float32", help="float32 or float64 arithmetic"),
    vocab_policy: str = typer.Option("error", help="error | shared-rows"),
    max_shard_size: str = typer.Option("5GB", help="largest output shard"),
    allow_pickle: bool = typer.Option(
        False, help="accept .bin pickle inputs (loaded weights_only)"
    ),
    dry_run: bool = typer.Option(False, help="validate and print the plan; write nothing"),
    hash_inputs: bool = typer.Option(
        True, "--hash/--no-hash", help="SHA-256 of every input file in the manifest"
    ),
    tokenizer_policy: str = typer.Option(
        "error", help="error | allow: what to do when the inputs' tokenizers differ"
    ),
    tokenizer_from: str = typer.Option(
        "new-base", help="new-base | post: where the output's tokenizer files come from"
    ),
    chat_template_from: str = typer.Option(
        "post",
        help="post | new-base: where the chat template and generation_config.json come from",
    ),
    check_finite: bool = typer.Option(
        True, "--check-finite/--no-check-finite", help="refuse NaN/Inf in any input tensor"
    ),
    recipe: Path = typer.Option(
        None, help="a YAML/JSON recipe of several deltas (see merge-recipe); replaces the inputs"
    ),
) -> None:
    """Merge: write Θ'_base + α·(Θ_post − Θ_base) to --out (or run a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    if recipe is not None:
        _run_recipe(recipe, out, dry_run, hash_inputs)
        return
    missing = [
        f"--{n.replace('_', '-')}"
        for n, v in (("post", post), ("base", base), ("new_base", new_base), ("out", out))
        if v is None
    ]
    if missing and not (dry_run and out is None and len(missing) == 1):
        typer.echo(ctx.get_help())
        fail(f"missing {', '.join(missing)}")
    from fmlab.core.io import CheckpointError
    from fmlab.param_delta import ParamDeltaError, param_delta

    try:
        m = param_delta(
            post,
            base,
            new_base,
            out if out is not None else Path("/nonexistent-dry-run"),
            scale=scale,
            dtype=dtype,
            compute_dtype=compute_dtype,
            vocab_policy=vocab_policy,
            max_shard_size=max_shard_size,
            allow_pickle=allow_pickle,
            dry_run=dry_run,
            hash_inputs=hash_inputs,
            progress=True,
            tokenizer_policy=tokenizer_policy,
            tokenizer_from=tokenizer_from,
            chat_template_from=chat_template_from,
            check_finite=check_finite,
        )
    except (ParamDeltaError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        fail(str(e))
    for note in m["notes"]:
        typer.echo(f"note: {note}")
    size_mb = m["output_bytes"] / 2**20
    if dry_run:
        typer.echo(f"dry run OK: {m['tensors']} tensors, {size_mb:.1f} MiB would be written")
    else:
        typer.echo(f"wrote {out}: {m['tensors']} tensors, {size_mb:.1f} MiB in {m['wall_s']:.1f} s")


def _run_recipe(recipe: Path, out: Path | None, dry_run: bool, hash_inputs: bool) -> None:
    from fmlab.core.io import CheckpointError
    from fmlab.param_delta import ParamDeltaError
    from fmlab.param_delta.recipe import run_recipe

    try:
        m = run_recipe(recipe, out, dry_run=dry_run, progress=True, hash_inputs=hash_inputs)
    except (ParamDeltaError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        fail(str(e))
    for note in m["notes"]:
        typer.echo(f"note: {note}")
    n, size_mb = m["tensors"], m["output_bytes"] / 2**20
    k = len(m["recipe"]["deltas"])
    if dry_run:
        typer.echo(f"dry run OK: {k} deltas, {n} tensors, {size_mb:.1f} MiB would be written")
    else:
        where = out or m["recipe"]["out"]
        typer.echo(
            f"wrote {where}: {k} deltas, {n} tensors, {size_mb:.1f} MiB in {m['wall_s']:.1f} s"
        )


@app.command("merge-recipe")
def merge_recipe_cmd(
    recipe: Path = typer.Argument(..., help="recipe .yaml/.yml/.json: new_base, deltas, out, ..."),
    out: Path = typer.Option(None, help="output directory (overrides the recipe's out)"),
    dry_run: bool = typer.Option(False, help="validate and scan the inputs; write nothing"),
    hash_inputs: bool = typer.Option(True, "--hash/--no-hash", help="SHA-256 of the inputs"),
) -> None:
    """Several deltas in one pass: Θ'_base + Σ αᵢ(Θ_postᵢ − Θ_baseᵢ) from a recipe file."""
    _run_recipe(recipe, out, dry_run, hash_inputs)


@app.command("extract-lora")
def extract_lora_cmd(
    post: str = typer.Option(..., help="post-trained checkpoint"),
    base: str = typer.Option(..., help="its base"),
    out: Path = typer.Option(..., help="adapter directory to write (must not exist)"),
    rank: int = typer.Option(..., help="LoRA rank r of every factorized matrix"),
    new_base: str = typer.Option(
        None,
        "--new-base",
        help="the base the adapter is for; with it, norm weights go in whole (modules_to_save)",
    ),
    scale: float = typer.Option(1.0, help="α, the weight of the delta"),
    dtype: str = typer.Option("float32", help="adapter dtype: float32 | bfloat16 | float16"),
    allow_pickle: bool = typer.Option(False),
) -> None:
    """The delta α(Θ_post − Θ_base) as a PEFT LoRA adapter (per-tensor truncated SVD)."""
    from fmlab.core.io import CheckpointError
    from fmlab.param_delta import ParamDeltaError
    from fmlab.param_delta.lora import extract_lora

    try:
        m = extract_lora(
            post, base, out, rank, new_base=new_base, scale=scale, dtype=dtype,
            allow_pickle=allow_pickle, progress=True,
        )  # fmt: skip
    except (ParamDeltaError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        fail(str(e))
    err = m["error_at_rank"]
    typer.echo(
        f"wrote {out}: rank {rank}, {m['tensors_factorized']} matrices, "
        f"{m['adapter_bytes'] / 2**20:.1f} MiB; relative Frobenius error of ΔW "
        f"{err['rel_frob_error_all']:.4f} (matrices only {err['rel_frob_error_linear']:.4f})"
    )
    if m["left_out"]:
        typer.echo(
            f"note: {len(m['left_out'])} non-matrix tensors left out ({m['left_out_delta_share']:.2%} "
            "of ‖Δ‖²); pass --new-base to store them whole"
        )
    typer.echo(
        "load: peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(NEW_BASE), OUT)"
    )


@app.command("lora-bench")
def lora_bench_cmd(
    post: str = typer.Option(..., help="post-trained checkpoint"),
    base: str = typer.Option(..., help="its base"),
    new_base: str = typer.Option(..., "--new-base", help="the updated base"),
    ranks: str = typer.Option("1,4,16,64", help="comma-separated ranks"),
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    delta: str = typer.Option("", help="what the delta is, for the record"),
) -> None:
    """Reconstruction error by rank of LoRA-extracted deltas (ΔW and logits), as lora.json."""
    from fmlab.param_delta.lora_bench import run_lora_record

    out = bench_out("param_delta", out)
    rs = tuple(int(x) for x in ranks.split(",") if x.strip())
    rec = run_lora_record(out, post, base, new_base, rs, delta_description=delta)
    for r, row in rec.metrics["by_rank"].items():
        typer.echo(
            f"rank {r}: rel. Frobenius error {row['rel_frob_error_all']:.4f}, max |Δlogit| "
            f"{row['max_abs_logit_diff']:.4g}, {row['adapter_mb']:.1f} MiB"
        )
    typer.echo(f"wrote {out / 'lora.json'}")


@app.command("diagnose")
def diagnose_cmd(
    post: str = typer.Option(..., help="post-trained checkpoint"),
    base: str = typer.Option(..., help="its base"),
    new_base: str = typer.Option(..., "--new-base", help="the updated base"),
    top: int = typer.Option(20, help="rows to print (largest post-delta norm first); 0 for all"),
    json_out: Path = typer.Option(None, "--json", help="write every row as JSON"),
    allow_pickle: bool = typer.Option(False),
) -> None:
    """Per-tensor cosine(Δ_post, Δ_update) and norm ratios."""
    from rich.console import Console
    from rich.table import Table

    from fmlab.core.io import CheckpointError, atomic_write_json
    from fmlab.param_delta import ParamDeltaError, diagnose

    try:
        rows = diagnose(post, base, new_base, allow_pickle=allow_pickle, progress=True)
    except (ParamDeltaError, CheckpointError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if json_out is not None:
        atomic_write_json(json_out, rows)
    shown = sorted(rows, key=lambda r: -r["post_delta_norm"])
    shown = shown[:top] if top else shown
    t = Table(title=f"ParamΔ diagnose ({len(rows)} tensors)")
    for c in (
        "tensor",
        "cos(Δpost,Δupd)",
        "‖Δpost‖",
        "‖Δupd‖",
        "‖Δpost‖/‖Δupd‖",
        "‖Δpost‖/‖Θbase‖",
    ):
        t.add_column(c, justify="right" if c != "tensor" else "left")
    for r in shown:
        t.add_row(
            r["tensor"],
            f"{r['cosine']:+.3f}",
            f"{r['post_delta_norm']:.3g}",
            f"{r['update_delta_norm']:.3g}",
            f"{r['post_over_update']:.3g}",
            f"{r['post_delta_over_base']:.3g}",
        )
    Console().print(t)
    import statistics

    cos = [r["cosine"] for r in rows if r["cosine"] == r["cosine"]]
    if cos:
        typer.echo(f"median cosine {statistics.median(cos):+.4f} over {len(cos)} tensors")


@app.command("bench")
def bench_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(
        False, help="one seed, tiny budgets (about a minute; claims nothing)"
    ),
    seeds: int = typer.Option(
        3, help="number of test seeds (full run): 10, 11, ...; seeds 0-2 are dev seeds"
    ),
    resume_dir: Path = typer.Option(
        Path("runs/param_delta_bench"), help="finished seeds are kept here; a rerun skips them"
    ),
) -> None:
    """Reproduce the transfer claim on tiny models trained here (ParamΔ vs oracle and baselines)."""
    from fmlab.param_delta.bench import TransferConfig, run_transfer

    cfg = TransferConfig.quick() if quick else TransferConfig(seeds=tuple(range(10, 10 + seeds)))
    out = bench_out("param_delta", out, quick)
    rec = run_transfer(out, cfg, resume_dir=resume_dir)
    m = rec.metrics
    typer.echo(
        f"ParamΔ: instruction_acc {m['instruction_acc']['mean']:.3f}, new_knowledge_acc "
        f"{m['new_knowledge_acc']['mean']:.3f}, over oracle {m['paramdelta_over_oracle']['mean']:.3f} "
        f"± {m['paramdelta_over_oracle']['std']:.3f}; wrote {out / 'transfer.json'}"
    )


@app.command("speed-bench")
def speed_bench_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    inputs: str = typer.Option(
        "smollm2,random-1b,random-1.6b",
        help="comma-separated: tiny, smollm2, random-1b, random-1.6b",
    ),
    work: Path = typer.Option(
        None, help="scratch directory for the generated checkpoints (needs ~12 GB)"
    ),
    shard: str = typer.Option("200MB", help="output shard size of fmlab and matched mergekit"),
    repeats: int = typer.Option(
        4, help="interleaved timed rounds (a multiple of the 4 arms keeps the rotation balanced)"
    ),
    quick: bool = typer.Option(False, help="tiny inputs, 2 repeats (seconds; claims nothing)"),
) -> None:
    """Time and memory against mergekit task_arithmetic at matched and default shard sizes
    (needs the bench extra: make setup)."""
    from fmlab.param_delta.speed import SpeedConfig, run_speed

    out = bench_out("param_delta", out, quick)
    if quick:
        cfg = SpeedConfig.quick()
    else:
        kinds = tuple(x.strip() for x in inputs.split(",") if x.strip())
        cfg = SpeedConfig(kinds=kinds, shard=shard, repeats=repeats)
    try:
        rec = run_speed(out, work=str(work) if work else None, cfg=cfg)
    except FileNotFoundError as e:
        fail(str(e))
    m, b = rec.metrics, rec.baselines
    mk = b["mergekit matched shards"]
    typer.echo(
        f"fmlab {m['wall_s']:.1f} s / anon {m['peak_anon_mb']:.0f} MiB; mergekit (matched shards) "
        f"{mk['wall_s']:.1f} s / anon {mk['peak_anon_mb']:.0f} MiB; max |diff| "
        f"{m['max_abs_diff']:.2e}; wrote {out / 'speed.json'}"
    )


@app.command("pretrained-bench")
def pretrained_bench_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(
        False, help="1 seed, 2 steps per fine-tune (plumbing; claims nothing)"
    ),
    seeds: int = typer.Option(3, help="number of seeds (full run)"),
    lora_rank: int = typer.Option(0, help="0: full fine-tunes; r: LoRA fine-tunes merged back"),
    work: Path = typer.Option(
        Path("runs/param_delta_pretrained"), help="checkpoints and memo (a rerun resumes)"
    ),
    model: str = typer.Option("smollm2-135m-instruct", help="bundled name or local HF dir"),
) -> None:
    """ParamΔ vs the oracle on the pretrained SmolLM2 (skill fine-tune, knowledge update)."""
    from fmlab.param_delta.pretrained import PretrainedConfig, run_pretrained

    cfg = (
        PretrainedConfig.quick(model)
        if quick
        else PretrainedConfig(model=model, seeds=tuple(range(seeds)))
    )
    cfg.lora_rank = lora_rank or None
    out = bench_out("param_delta", out, quick)
    rec = run_pretrained(out, cfg, work=work / ("quick" if quick else "full"))
    m = rec.metrics
    typer.echo(
        f"ParamΔ skill {m['skill_acc']['mean']:.3f}, knowledge {m['knowledge_acc']['mean']:.3f}, "
        f"over oracle {m['paramdelta_over_oracle']['mean']:.3f} ± "
        f"{m['paramdelta_over_oracle']['std']:.3f}; wrote {out / 'pretrained_transfer.json'}"
    )
