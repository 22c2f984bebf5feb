"""`fmlab autothink`: train the video-QA model, answer with the confidence-gated early exit,
evaluate per question family, score completions, run the bench."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fmlab.core.cliutil import BENCH_OUT_HELP, bench_out, fail, log

app = typer.Typer(
    help="VideoAuto-R1: answer, think only when unsure, answer again.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """VideoAuto-R1: answer, think only when unsure, answer again."""


def _is_video_model(model: str) -> bool:
    cfg = Path(model) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "fmlab_video_llama"
    except (OSError, json.JSONDecodeError):
        return False


def _video_frames(path: Path):
    import torch

    from fmlab.autothink.videoqa import N_FRAMES
    from fmlab.core.video import read_video

    v = read_video(path, fps=2, max_frames=N_FRAMES, size=(32, 32), min_frames=N_FRAMES)
    return torch.from_numpy(v.frames[:N_FRAMES][None])


def _answer_video(model: str, video: Path | None, questions: list[str], tau: float,
                  max_new_tokens: int, text: bool) -> None:  # fmt: skip
    from fmlab.autothink import generate
    from fmlab.autothink.train import load_video_model
    from fmlab.autothink.videoqa import FRAME, N_FRAMES
    from fmlab.core.video import VideoError

    if video is None:
        fail(f"{model} is a video model: give the video with --video FILE.mp4 "
             "(e.g. one from `fmlab autothink make-video`)")  # fmt: skip
    try:
        frames = _video_frames(video)
        lm, tok, _ = load_video_model(model)
    except (VideoError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    prompts = [" ".join([FRAME] * N_FRAMES + [q]) for q in questions]
    try:
        results = generate(lm, tok, prompts, tau=tau, max_new_tokens=max_new_tokens, chat=False,
                           model_inputs={"frames": frames.expand(len(prompts), *frames.shape[1:])})  # fmt: skip
    except ValueError as e:
        fail(str(e))
    for r in results:
        typer.echo(json.dumps(r.to_dict(with_text=text)))


@app.command("answer")
def answer_cmd(
    question: list[str] = typer.Argument(..., help="one or more questions (decoded as a batch)"),
    model: str = typer.Option(
        "smollm2-135m-instruct",
        help="a local HF checkpoint directory (e.g. DIR/model from `fmlab autothink train`) "
        "or a bundled model name",
    ),
    video: Path = typer.Option(None, help="the video (mp4) a video model answers about"),
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
    if _is_video_model(model):
        return _answer_video(model, video, list(question), tau, max_new_tokens, text)
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


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., help="run directory (resumable); the model goes to OUT/model"),
    style: str = typer.Option("auto", help="auto (VideoAuto-R1), direct, think or switch"),
    n_train: int = typer.Option(2000, help="training questions"),
    sft_steps: int = typer.Option(1200, help="format warm-start (SFT) steps"),
    grpo_steps: int = typer.Option(60, help="GRPO steps"),
    seed: int = typer.Option(0, help="model init and rollout seed"),
    w1: float = typer.Option(0.9, help="reward weight of R(a1) (auto style)"),
    w2: float = typer.Option(1.1, help="reward weight of R(a2) (auto style)"),
    bonus: float = typer.Option(0.3, help="fallback bonus (auto style)"),
) -> None:
    """Train the tiny video-QA model on synthetic needle videos: warm start, then GRPO."""
    from fmlab.autothink.bench import make_splits
    from fmlab.autothink.train import Recipe, train_video_model

    try:
        recipe = Recipe(style=style, seed=seed, sft_steps=sft_steps, grpo_steps=grpo_steps,
                        w1=w1, w2=w2, bonus=bonus)  # fmt: skip
    except ValueError as e:
        fail(str(e))
    if n_train < 1:
        fail(f"--n-train must be at least 1, got {n_train}")
    items = make_splits(0, n_train, 0, 0)["train"]
    train_video_model(recipe, items, out, log=log)
    typer.echo(json.dumps({"model": str(out / "model"), "style": style}))


@app.command("eval")
def eval_cmd(
    model: Path = typer.Option(..., help="a trained video model directory (OUT/model)"),
    n: int = typer.Option(200, help="questions from the validation split"),
    tau: float = typer.Option(0.97, help="exit threshold (0: always a1; above 1: always think)"),
    a1_only: bool = typer.Option(False, "--a1-only/--no-a1-only", help="read a1 only"),
) -> None:
    """Accuracy, tokens, think rate, a1 confidence and routing recall per question family, on
    the validation questions (the bench's test split stays sealed)."""
    from fmlab.autothink.bench import make_splits
    from fmlab.autothink.evaluate import answer_rows, summarise
    from fmlab.autothink.train import load_video_model
    from fmlab.core.io import CheckpointError

    try:
        lm, tok, _ = load_video_model(model)
    except (FileNotFoundError, CheckpointError) as e:
        fail(str(e))
    items = make_splits(0, 0, n, 0)["val"]
    log(f"answering {len(items)} validation questions (tau={tau:g})")
    s = summarise(answer_rows(lm, tok, items, tau=tau, stop_at_a1=a1_only))
    typer.echo(json.dumps({k: v for k, v in s.items() if not isinstance(v, list)}, indent=1))


@app.command("make-video")
def make_video_cmd(
    out: Path = typer.Option(..., help="where to write the mp4"),
    seed: int = typer.Option(0, help="video seed"),
) -> None:
    """Write a seeded synthetic needle video (the video-QA model's input) and print its
    perception and reasoning questions with their answers."""
    from fmlab.autothink.videoqa import N_FRAMES, NEEDLE_LEN
    from fmlab.core.data.videos import make_video, qa_questions
    from fmlab.core.video import VideoError

    v = make_video(seed, N_FRAMES, needle_len=NEEDLE_LEN)
    try:
        v.write(out)
    except (VideoError, OSError) as e:
        fail(f"{out}: {e}")
    for q in qa_questions(v):
        typer.echo(json.dumps({"family": q.family, "question": q.text, "answer": q.answer}))


@app.command("bench")
def bench_cmd(
    out: Path = typer.Option(None, help=BENCH_OUT_HELP),
    quick: bool = typer.Option(False, help="one seed, tiny sizes (about a minute; claims nothing)"),
    seeds: int = typer.Option(3, help="number of test seeds (full run)"),
) -> None:
    """Direct-only RL, always-think RL, a trained switch, the auto model (a1 only, a2 always,
    τ sweep) and reward ablations, per question family (see docs/autothink.md)."""
    from fmlab.autothink.bench import AUTO, BenchConfig, estimated_minutes, run

    if seeds < 1:
        fail(f"--seeds must be at least 1, got {seeds}")
    cfg = BenchConfig.quick() if quick else BenchConfig(test_seeds=tuple(range(1, seeds + 1)))
    out = bench_out("autothink", out, quick)
    if not quick:
        log(f"full bench: roughly {estimated_minutes(cfg)} min on 2 cores; resumable")
    rec = run(out, cfg, command="fmlab autothink bench" + (" --quick" if quick else ""))
    m, t = rec.metrics, rec.baselines["think-rl"]
    typer.echo(f"{AUTO}: acc {m['acc']['mean']:.3f}, tokens {m['tokens']['mean']:.1f}; "
               f"think-rl: acc {t['acc']['mean']:.3f}, tokens {t['tokens']['mean']:.1f}; "
               f"wrote {out / 'autothink.json'}")  # fmt: skip
