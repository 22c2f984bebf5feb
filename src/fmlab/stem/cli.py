"""`fmlab stem`: train, eval, edit, offload, bench (thin over fmlab.stem)."""

from __future__ import annotations

from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail

app = typer.Typer(
    help="STEM: FFN up-projection replaced by per-layer token-indexed tables.",
    no_args_is_help=True,
    add_completion=False,
)


def _layers(spec: str, n: int) -> list[int]:
    if spec == "all-but-0":
        return list(range(1, n))
    if spec == "half":
        return list(range(1, n, 2))
    if spec == "none":
        return []
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        fail(f"--stem-layers {spec!r}: use all-but-0, half, none or a list like 1,3,5")


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import fmlab.stem  # noqa: F401  (registers the Auto classes)
    from fmlab.core.models import check_model_dir

    check_model_dir(path)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., help="output directory (checkpoint, metrics, model/)"),
    corpus: str = typer.Option("prose", help="prose, code, or a .txt/.jsonl path"),
    vocab: int = typer.Option(4096, help="BPE vocabulary trained on the corpus"),
    hidden: int = typer.Option(256),
    layers: int = typer.Option(6),
    heads: int = typer.Option(8),
    stem_layers: str = typer.Option("all-but-0", help="all-but-0 | half | none | 1,3,5"),
    steps: int = typer.Option(300),
    batch_size: int = typer.Option(16),
    seq_len: int = typer.Option(128),
    lr: float = typer.Option(3e-3),
    row_sparse: bool = typer.Option(
        False, "--row-sparse/--dense-updates", help="update only the rows of tokens in the batch"
    ),
    seed: int = typer.Option(0),
) -> None:
    """Train a tiny STEM model from scratch (resumes from --out's checkpoint)."""
    from fmlab.core.data import load_corpus, pack_documents, split_documents
    from fmlab.core.models import train_bpe_tokenizer
    from fmlab.core.train import BlockSampler, TrainConfig
    from fmlab.stem import StemError, build_stem, train_stem

    try:
        splits = split_documents(load_corpus(corpus), seed=seed)
        tok = train_bpe_tokenizer((d.text for d in splits["train"]), vocab_size=vocab)
        train_blocks = pack_documents(tok, splits["train"], seq_len)
        val_blocks = pack_documents(tok, splits["val"], seq_len)
        model = build_stem(len(tok), _layers(stem_layers, layers), seed=seed, hidden_size=hidden,
                           num_layers=layers, num_heads=heads, max_position_embeddings=max(512, seq_len))  # fmt: skip
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed)
        res = train_stem(
            model,
            BlockSampler(train_blocks, seed=seed),
            cfg,
            out,
            row_sparse=row_sparse,
            val_blocks=val_blocks,
        )
    except (StemError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    res.raise_if_signalled("fmlab stem train")
    tok.save_pretrained(out / "model")
    typer.echo(f"trained {res.steps} steps: val_loss {res.val_loss:.3f}; model in {out / 'model'}")


@app.command("eval")
def eval_cmd(
    model: Path = typer.Option(..., help="a saved STEM (or Llama) model directory"),
    corpus: str = typer.Option("prose"),
    seq_len: int = typer.Option(128),
    batches: int = typer.Option(16),
) -> None:
    """Validation loss, parameter counts and FLOPs per token."""
    from fmlab.core.data import load_corpus, pack_documents, split_documents
    from fmlab.core.evaluate import lm_loss
    from fmlab.stem import StemError, flops_per_token, param_counts

    try:
        m, tok = _load(model)
        val = pack_documents(tok, split_documents(load_corpus(corpus))["val"], seq_len)
        loss = lm_loss(m, val, 8, batches)
    except (StemError, ValueError, FileNotFoundError, OSError) as e:
        fail(str(e))
    pc = param_counts(m)
    typer.echo(f"val_loss {loss:.4f}  total {pc['total']:,}  active/token {pc['active_per_token']:,}  "
               f"forward FLOPs/token {flops_per_token(m, seq_len):,.0f}")  # fmt: skip


@app.command("edit")
def edit_cmd(
    model: Path = typer.Option(..., help="a saved STEM model directory"),
    source: str = typer.Option(..., help="the entity whose rows are replaced"),
    target: str = typer.Option(..., help="the entity whose knowledge source gets"),
    out: Path = typer.Option(..., help="where the edited model is saved (must not exist)"),
    layers: str = typer.Option("", help="comma-separated STEM layers (default: all)"),
    prompt: str = typer.Option("", help="a prompt to complete before and after the edit"),
) -> None:
    """Copy target's STEM rows into source's (same prompt, same compute)."""
    from fmlab.core.evaluate import generate
    from fmlab.core.io import atomic_dir
    from fmlab.stem import StemError, edit

    try:
        m, tok = _load(model)
        before = generate(m, tok, [prompt], 8, chat=False)[0] if prompt else None
        e = edit(m, tok, source, target, [int(x) for x in layers.split(",")] if layers else None)
        after = generate(m, tok, [prompt], 8, chat=False)[0] if prompt else None
        with atomic_dir(out) as tmp:
            m.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    except (StemError, ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        fail(str(e))
    typer.echo(f"edited {len(e.pairs)} token rows in {len(e.saved)} layers; saved {out}")
    if prompt:
        typer.echo(f"before: {prompt}{before}\nafter:  {prompt}{after}")


@app.command("offload")
def offload_cmd(
    model: Path = typer.Option(..., help="a saved STEM model directory"),
    out: Path = typer.Option(..., help="directory for the table files (must not exist)"),
    cache_rows: int = typer.Option(256, help="rows cached per layer"),
    prompt: str = typer.Option(
        "The", help="generate from this prompt through the offloaded tables"
    ),
    max_new_tokens: int = typer.Option(16),
) -> None:
    """Write the tables to memory-mapped files and generate through them (counters shown)."""
    from fmlab.stem import StemError, offload

    try:
        m, tok = _load(model)
        h = offload(m, out, cache_rows=cache_rows)
        ids = tok(prompt, return_tensors="pt").input_ids
        gen = h.generate(
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    except (StemError, ValueError, FileNotFoundError, FileExistsError, OSError) as e:
        fail(str(e))
    s = h.stats()
    h.close()
    typer.echo(tok.decode(gen[0], skip_special_tokens=True))
    typer.echo(f"tables in {out}; {s['bytes_per_token']:.0f} bytes/token, hit rate {s['hit_rate']:.2f}, "
               f"stall {s['stall_s'] * 1000:.1f} ms, resident {s['resident_fraction']:.1%} of rows")  # fmt: skip


@app.command("bench")
def bench_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="one seed, tiny sizes (about a minute; claims nothing)"),
    seeds: int = typer.Option(3, help="number of seeds (full run)"),
) -> None:
    """STEM vs dense, widened dense and half-STEM at matched tokens (see docs/stem.md)."""
    from fmlab.stem.bench import BenchConfig, run

    cfg = BenchConfig.quick() if quick else BenchConfig(seeds=tuple(range(seeds)))
    out = bench_out("stem", out, quick)
    rec = run(out, cfg, command="fmlab stem bench" + (" --quick" if quick else ""))
    m = rec.metrics
    typer.echo(f"stem_all: test_loss {m['test_loss']['mean']:.3f}, fact_recall {m['fact_recall']['mean']:.3f}, "
               f"edit_success {m['edit_success']['mean']:.3f}; wrote {out / 'stem.json'}")  # fmt: skip
