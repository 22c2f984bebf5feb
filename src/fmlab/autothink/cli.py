"""`fmlab autothink`: answer with the confidence-gated early exit; score completions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fmlab.core.cliutil import fail, log

app = typer.Typer(
    help="VideoAuto-R1: answer, think only when unsure, answer again (training and the bench "
    "are not built yet).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """VideoAuto-R1: answer, think only when unsure, answer again."""


@app.command("answer")
def answer_cmd(
    question: list[str] = typer.Argument(..., help="one or more questions (decoded as a batch)"),
    model: str = typer.Option(
        "smollm2-135m-instruct", help="a local HF checkpoint directory or a bundled model name"
    ),
    tau: float = typer.Option(0.97, help="exit threshold on the a1 confidence (official 0.97)"),
    max_new_tokens: int = typer.Option(256, help="generation budget per question"),
    instruction: bool = typer.Option(
        True,
        "--instruction/--no-instruction",
        help="send the format instruction as a system message",
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
    text: bool = typer.Option(False, "--text/--no-text", help="include the generated text"),
) -> None:
    """Print one JSON line per question: answer, thought, confidence, tokens, seconds, stop."""
    from fmlab.autothink import FORMAT_INSTRUCTION, generate
    from fmlab.core.io import CheckpointError
    from fmlab.core.models import load_pretrained

    try:
        lm, tok = load_pretrained(model, device=device)
        results = generate(
            lm,
            tok,
            list(question),
            tau=tau,
            max_new_tokens=max_new_tokens,
            system=FORMAT_INSTRUCTION if instruction else None,
        )
    except (CheckpointError, FileNotFoundError, ModuleNotFoundError, ValueError) as e:
        fail(str(e))
    for r in results:
        typer.echo(json.dumps(r.to_dict(with_text=text)))


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        fail(f"{path}: no such file; give a JSONL file of {{prompt, completion, answer}} lines")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                fail(f"{path}:{n}: not valid JSON ({e.msg}); one JSON object per line")
            if not isinstance(row, dict) or "completion" not in row or "answer" not in row:
                fail(
                    f"{path}:{n}: each line needs the keys 'completion' and 'answer' "
                    "(and optionally 'prompt')"
                )
            rows.append(row)
    if not rows:
        fail(f"{path}: no lines to score")
    return rows


@app.command("reward")
def reward_cmd(
    completions: Path = typer.Option(
        ..., help="JSONL, one {prompt, completion, answer} per line (completion: text or messages)"
    ),
    w1: float = typer.Option(0.9, help="weight of R(a1)"),
    w2: float = typer.Option(1.1, help="weight of R(a2)"),
    w_format: float = typer.Option(1.0, help="weight of R_format"),
    bonus: float = typer.Option(0.3, help="bonus when a1 is the fallback and a2 is right"),
) -> None:
    """Score completions with the VideoAuto-R1 reward: one JSON line per input line (reward and
    its terms), the mean on stderr."""
    from fmlab.autothink import score

    rows = _read_rows(completions)
    total = 0.0
    for i, row in enumerate(rows):
        s = score(row["completion"], row["answer"])
        r = w1 * s["a1"] + w2 * s["a2"] + w_format * s["format"] + bonus * s["bonus"]
        total += r
        typer.echo(json.dumps({"index": i, "reward": r, **s}))
    log(f"{len(rows)} completions, mean reward {total / len(rows):.4f}")
