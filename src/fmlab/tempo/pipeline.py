"""Tempo end to end: segments → compressor (memory tokens + relevance) → allocation → global
model; the frame baselines (uniform frame sampling, uniform pooling) through the same global
model; and the staged training of each stack (the part the paper did not release).

Arms (what reaches the global model under a budget of B visual tokens):

- ``tempo``: query-aware compressor + ATA on its relevance scores, head truncation;
- ``uniform-alloc``: query-aware compressor, every segment min(M, ⌊B/N⌋) tokens;
- ``agnostic``: a compressor trained without the query, uniform allocation;
- ``random-ata``: ATA on random scores;
- ``oracle``: ATA on the true needle relevance;
- ``m0``: ATA with minimum 0 (segments can be dropped: no temporal anchors);
- ``tail``: ATA with tail truncation;
- ``uniform-tail``: uniform allocation, tail truncation (the last k memory tokens: front-loading);
- ``frames``: ⌊B/P⌋ uniformly sampled frames of P patch tokens each;
- ``pool``: all frames' patch tokens average-pooled, in time-major order, into B tokens.
"""

from __future__ import annotations

import itertools
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmlab.core.cliutil import log as log_stderr
from fmlab.core.data.videos import COLOURS, FAMILIES, SynthVideo, make_video
from fmlab.tempo.allocate import allocate, truncate
from fmlab.tempo.model import Compressor, GlobalModel, TempoConfig, Vocab, frame_encoder

__all__ = [
    "ARMS",
    "VIDEO_SOURCES",
    "Stack",
    "TrainConfig",
    "UnknownWordsWarning",
    "segments_of",
    "train_stack",
    "video_sampler",
]

COMPRESSOR_ARMS = ("tempo", "uniform-alloc", "random-ata", "oracle", "m0", "tail")
ARMS = (*COMPRESSOR_ARMS, "agnostic", "frames", "pool")
KINDS = ("tempo", "agnostic", "frames", "pool")  # what gets trained
TRAIN_STATE = "train_state.pt"  # optimizer + RNG states inside a training checkpoint


def segments_of(frames: np.ndarray, seg_len: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 → (N, seg_len, 3, H, W); the last segment repeats its last frame."""
    t = len(frames)
    n = math.ceil(t / seg_len)
    pad = n * seg_len - t
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    return x.reshape(n, seg_len, *x.shape[1:])


def segment_colours(video: SynthVideo, question, seg_len: int, query_aware: bool) -> np.ndarray:
    """Per segment: index of the colour of a needle it shows that the question is about (any
    needle for a query-agnostic compressor), or len(COLOURS) for none."""
    n = math.ceil(len(video.frames) / seg_len)
    out = np.full(n, len(COLOURS), dtype=np.int64)
    wanted = set(question.needles) if query_aware else set(range(len(video.needles)))
    for i, nd in enumerate(video.needles):
        if i in wanted:
            out[nd.start // seg_len : (nd.end - 1) // seg_len + 1] = list(COLOURS).index(nd.colour)
    return out


def segment_truth(video: SynthVideo, question, seg_len: int) -> np.ndarray:
    """1 for segments that show a needle the question is about."""
    m = video.needle_frames(question)
    n = math.ceil(len(m) / seg_len)
    m = np.concatenate([m, np.zeros(n * seg_len - len(m), dtype=bool)])
    return m.reshape(n, seg_len).any(axis=1).astype(np.float32)


class UnknownWordsWarning(UserWarning):
    """A question with words outside the model's (closed) vocabulary."""


class Stack(nn.Module):
    """One trained model: a compressor + global model (kinds tempo / agnostic) or a frame
    encoder + global model (kinds frames / pool).

    The compressor is the tiny SVLM built from ``cfg`` unless an ``HFCompressor``
    (``fmlab.tempo.hf``, a Hugging Face vision-language model) is passed.
    """

    def __init__(self, kind: str, cfg: TempoConfig | None = None, compressor=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        cfg = cfg or TempoConfig()
        if kind == "agnostic":
            cfg = TempoConfig(**{**cfg.to_dict(), "query_aware": False})
        if compressor is not None:
            if kind not in ("tempo", "agnostic"):
                raise ValueError(f"a '{kind}' stack has no compressor")
            compressor.query_aware = cfg.query_aware
            cfg = TempoConfig(**{
                **cfg.to_dict(), "mem_tokens": compressor.mem_tokens,
                "d_svlm": compressor.hidden_size, "frame_size": compressor.frame_size,
            })  # fmt: skip
        self.kind, self.cfg, self.vocab = kind, cfg, Vocab()
        if kind in ("tempo", "agnostic"):
            self.compressor = compressor if compressor is not None else Compressor(cfg, self.vocab)
        else:
            self.frame_encoder = frame_encoder(cfg, cfg.d_svlm)
        self.glob = GlobalModel(cfg, self.vocab, cfg.d_svlm)

    @property
    def hf(self) -> bool:
        """Whether the compressor is a Hugging Face vision-language model."""
        return hasattr(self, "compressor") and not isinstance(self.compressor, Compressor)

    # -- visual tokens under a budget ----------------------------------------------------
    def compress(self, frames: np.ndarray, question: str, batch_segments: int | None = None):
        """Memory states (N, M, d) and relevance logits (N,) of every segment."""
        mem, rel, _ = self.compress_chunks([frames], question, batch_segments)
        return mem, rel

    def compress_chunks(
        self, chunks: Iterable[np.ndarray], question: str, batch_segments: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Memory states (N, M, d), relevance logits (N,) and the frame count T of a video given
        as chunks of frames (T_k, H, W, 3), each a multiple of ``seg_len`` frames but the last
        (``fmlab.core.video.VideoStream.chunks``), so the frames are never all in memory.
        The compressor runs on at most ``batch_segments`` segments at a time (None: a chunk)."""
        if batch_segments is not None and batch_segments < 1:
            raise ValueError(f"batch_segments must be >= 1, got {batch_segments}")
        q, seg = self.compressor.encode_query(question), self.cfg.seg_len
        mems, rels, t = [], [], 0
        for chunk in chunks:
            if t % seg:
                raise ValueError(
                    f"a chunk after {t} frames: every chunk but the last must hold a multiple "
                    f"of seg_len={seg} frames"
                )
            t += len(chunk)
            x = segments_of(chunk, seg)  # (S, seg_len, 3, H, W)
            step = batch_segments or len(x)
            for i in range(0, len(x), step):
                mem, rel = self.compressor(x[i : i + step], q)
                mems.append(mem)
                rels.append(rel)
        if not t:
            raise ValueError("no frames to compress")
        return torch.cat(mems), torch.cat(rels), t

    def blocks(
        self,
        frames: np.ndarray,
        question: str,
        budget: int,
        arm: str,
        truth: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        prefix: np.ndarray | None = None,
        batch_segments: int | None = None,
        allow_over_budget: bool = False,
    ) -> tuple[list[tuple[float, torch.Tensor]], dict]:
        """The [timestamp, tokens] blocks an arm feeds the global model, and what it used.
        ``frames``: (T, H, W, 3) uint8, or an iterable of chunks of it (see
        :meth:`compress_chunks`)."""
        rng = rng if rng is not None else np.random.default_rng(0)
        if self.kind in ("frames", "pool"):
            if not isinstance(frames, np.ndarray):
                frames = np.concatenate(list(frames))  # the frame baselines need every frame
            return self._frame_blocks(frames, budget)
        chunks = [frames] if isinstance(frames, np.ndarray) else frames
        mem, rel, t = self.compress_chunks(chunks, question, batch_segments)
        return self.blocks_from_memory(mem, rel, t, budget, arm, truth, rng, prefix,
                                       allow_over_budget)  # fmt: skip

    def blocks_from_memory(
        self,
        mem: torch.Tensor,
        rel: torch.Tensor,
        t: int,
        budget: int,
        arm: str,
        truth: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
        prefix: np.ndarray | None = None,
        allow_over_budget: bool = False,
    ) -> tuple[list[tuple[float, torch.Tensor]], dict]:
        """:meth:`blocks` from compressed memory states (N, M, d), relevance logits (N,) and
        the frame count ``t`` (:meth:`compress_chunks`): a video compressed once can be
        allocated under every arm and budget."""
        rng = rng if rng is not None else np.random.default_rng(0)
        n, m = mem.shape[:2]
        scores = torch.sigmoid(rel).detach().numpy()
        probe = self.compressor.probe(mem[:, 0])
        if prefix is not None:  # training: random prefix truncation
            alloc = prefix.tolist()
        elif arm in ("uniform-alloc", "agnostic", "uniform-tail"):
            alloc = [min(m, budget // n)] * n
        else:
            s = {"random-ata": rng.random(n), "oracle": truth}.get(arm, scores)
            if s is None:
                raise ValueError("the oracle arm needs the true segment relevance")
            over = "allow" if allow_over_budget else "drop"
            alloc = allocate(s, budget, 0 if arm == "m0" else 4, m, over_budget=over)
        strategy = "tail" if arm in ("tail", "uniform-tail") else "head"
        seg = self.cfg.seg_len
        blocks = [
            ((i * seg + min(seg, t - i * seg) / 2) / t, truncate(mem[i], a, strategy, rng))
            for i, a in enumerate(alloc)
        ]
        info = {"alloc": alloc, "scores": scores, "relevance_logits": rel, "probe": probe}
        return blocks, {**info, "frames": t}

    def _frame_blocks(self, frames: np.ndarray, budget: int):
        t, p = len(frames), self.cfg.patches
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        if self.kind == "frames":
            k = min(t, budget // p)
            if k == 0:  # fewer tokens than one frame has: the middle frame, pooled to B tokens
                if budget < 1:
                    return [], {"frames": 0}
                toks = self.frame_encoder(x[t // 2 : t // 2 + 1].float())[0]
                edges = np.linspace(0, p, budget + 1).round().astype(int)
                pooled = torch.stack([toks[a:b].mean(0) for a, b in itertools.pairwise(edges)])
                return [((t // 2 + 0.5) / t, pooled)], {"frames": 1}
            idx = np.linspace(0, t - 1, k).round().astype(int)
            toks = self.frame_encoder(x[idx].float())
            return [((i + 0.5) / t, toks[j]) for j, i in enumerate(idx)], {"frames": k}
        toks = self.frame_encoder(x.float()).reshape(t * p, -1)  # time-major
        k = max(1, min(budget, t * p))
        edges = np.linspace(0, t * p, k + 1).round().astype(int)
        pooled = torch.stack([toks[a:b].mean(0) for a, b in itertools.pairwise(edges)])
        # one block per segment of pooled tokens (by the frame each pooled token starts in)
        seg = self.cfg.seg_len
        owner = (edges[:-1] // p) // seg
        blocks = [((s * seg + seg / 2) / t, pooled[owner == s]) for s in range(math.ceil(t / seg))]
        return blocks, {"pooled_tokens": k}

    def logits(self, items) -> torch.Tensor:
        """Answer logits for (blocks, question text) pairs."""
        return self.glob([self.glob.sequence(b, self.vocab.encode(q)) for b, q in items])

    @torch.no_grad()
    def answer(
        self,
        frames: np.ndarray | Iterable[np.ndarray],
        question: str,
        budget: int,
        options: list[str] | None = None,
        batch_segments: int | None = None,
        allow_over_budget: bool = False,
    ) -> dict:
        """Answer ``question`` about ``frames`` under ``budget`` visual tokens (Tempo: ATA on the
        compressor's relevance). Short answer over the whole answer vocabulary, or multiple
        choice: the most probable of ``options``, with probabilities renormalised over them."""
        unknown = self.vocab.check(question)
        if unknown:
            warnings.warn(
                f"the question words {unknown} are not in this model's vocabulary (it was "
                f"trained on: {' '.join(w for w in self.vocab.words if not w.startswith('<'))}); "
                "they are read as unknown, so the answer may ignore them: rephrase with known "
                "words",
                UnknownWordsWarning,
                stacklevel=2,
            )
        names = self.vocab.answers
        if options is not None:
            bad = [o for o in options if o not in names]
            if bad or not options:
                raise ValueError(
                    f"options {bad or options} are not answers this model can give; "
                    f"choose from: {', '.join(names)}"
                )
        arm = {"agnostic": "uniform-alloc"}.get(self.kind, self.kind)
        blocks, info = self.blocks(frames, question, budget, arm, batch_segments=batch_segments,
                                   allow_over_budget=allow_over_budget)  # fmt: skip
        logits = self.logits([(blocks, question)])[0]
        idx = [names.index(o) for o in options] if options is not None else list(range(len(names)))
        p = torch.softmax(logits[idx], -1)
        best = int(p.argmax())
        used = sum(len(t) for _, t in blocks)
        q_len = len(self.vocab.encode(question))
        return {
            "answer": names[idx[best]],
            "p": float(p[best]),
            "probabilities": {names[i]: float(q) for i, q in zip(idx, p, strict=True)},
            "tokens_used": int(used),
            "budget": budget,
            "frames": info.get("frames"),
            "context_tokens": int(used + len(blocks) + 2 * q_len),
            "allocation": info.get("alloc"),
            "unknown_words": unknown,
        }

    # -- save / load ----------------------------------------------------------------------
    def save(
        self, path: str | Path, extra: dict | None = None, train_state: dict | None = None
    ) -> None:
        """``model.safetensors`` + ``tempo.json``; an HF compressor's backbone goes to
        ``compressor/`` in its own format (its memory tokens stay in ``model.safetensors``).
        ``train_state`` (optimizer, RNG states) goes to ``train_state.pt`` in the same atomic
        directory, so a checkpoint is never half old, half new."""
        from safetensors.torch import save_file

        from fmlab.core.io import atomic_dir

        with atomic_dir(path, overwrite=True) as tmp:
            state = {k: v.contiguous() for k, v in self.state_dict().items()}
            state.pop("compressor.lm_head.weight", None)  # tied to the word embeddings
            if self.hf:
                state = {k: v for k, v in state.items() if not k.startswith("compressor.model.")}
                self.compressor.save_backbone(tmp / "compressor")
            save_file(state, str(tmp / "model.safetensors"))
            meta = {"kind": self.kind, "config": self.cfg.to_dict(), "hf_compressor": self.hf}
            (tmp / "tempo.json").write_text(json.dumps({**meta, **(extra or {})}, indent=1))
            if train_state is not None:
                torch.save(train_state, tmp / TRAIN_STATE)

    @classmethod
    def load(cls, path: str | Path) -> Stack:
        from fmlab.core.io import CheckpointError, load_torch_file, read_json, recover_swap

        path = Path(path)
        recover_swap(path)
        if not (path / "tempo.json").is_file():
            raise CheckpointError(
                f"{path}: not a Tempo model (tempo.json missing); train one with `fmlab tempo train`"
            )
        fix = "retrain it with `fmlab tempo train`, or delete the folder to start afresh"
        try:
            meta = read_json(path / "tempo.json")
            cfg = TempoConfig(**meta["config"])
            kind = meta["kind"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{path / 'tempo.json'}: not a Tempo model file ({e}); {fix}"
            ) from e
        weights = load_torch_file(path / "model.safetensors")  # a truncated file is named
        compressor = None
        if meta.get("hf_compressor"):
            from fmlab.tempo.hf import HFCompressor

            compressor = HFCompressor.from_pretrained(path / "compressor", cfg.mem_tokens)
        stack = cls(kind, cfg, compressor)
        try:
            missing, unexpected = stack.load_state_dict(weights, strict=False)
        except RuntimeError as e:  # shapes that do not match tempo.json
            raise CheckpointError(f"{path}: weights do not match tempo.json ({e}); {fix}") from e
        skip = ("compressor.lm_head.weight", "compressor.model.")
        missing = [k for k in missing if not k.startswith(skip)]
        if missing or unexpected:
            raise CheckpointError(f"{path}: weights do not match ({missing[:3]} {unexpected[:3]})")
        return stack.eval()


@dataclass
class TrainConfig:
    """The paper's stages at tiny scale: (name, steps, frames per video)."""

    stages: tuple[tuple[str, int, int], ...] = (
        ("align", 300, 32),
        ("qa-pretrain", 300, 64),
        ("long-sft", 400, 128),
    )
    batch: int = 8
    lr: float = 2e-3
    rel_weight: float = 1.0  # BCE on the Yes/No relevance (compressor stacks)
    probe_weight: float = 1.0  # colour probe on the first memory token (compressor stacks)
    random_prefix: bool = True  # long-sft: random prefix truncation half the time
    budgets_per_segment: tuple[int, ...] = (1, 2, 4, 8, 16)
    seed: int = 0
    checkpoint_every: int = 100  # steps; 0: off
    checkpoint_every_s: float = 120.0  # seconds of wall-clock; 0: off
    extra: dict = field(default_factory=dict)
    # what the stack trains on (VIDEO_SOURCES): "needle" (fmlab.core.data.videos, fresh videos
    # every step) or "dense" (fmlab.tempo.dense); video_pool > 0 draws from that many fixed
    # videos per stage length instead of fresh ones (so cached frame features are reused)
    videos: str = "needle"
    video_pool: int = 0

    def __post_init__(self):
        if self.videos not in VIDEO_SOURCES:
            raise ValueError(
                f"videos must be one of {', '.join(VIDEO_SOURCES)}, got {self.videos!r}"
            )
        if self.video_pool < 0:
            raise ValueError(f"video_pool must be >= 0, got {self.video_pool}")


VIDEO_SOURCES = ("needle", "dense")


def video_sampler(cfg: TrainConfig) -> Callable[[np.random.Generator, int], tuple]:
    """``(rng, n_frames) -> (video, question)`` for ``cfg.videos``: a training video of
    ``n_frames`` frames (seeds disjoint from every bench's dev and test videos) and one of its
    questions, the family drawn first so families are balanced."""
    if cfg.videos == "dense":
        from fmlab.tempo.dense import dense_sampler

        return dense_sampler(cfg.seed, cfg.video_pool)
    base = 10_000_000 * (cfg.seed + 1)
    if cfg.video_pool:
        pool = cfg.video_pool
        return lambda rng, n: _sample(rng, n, base, int(rng.integers(pool)))
    return lambda rng, n: _sample(rng, n, base)


def _sample(rng: np.random.Generator, n_frames: int, seed_base: int, index: int | None = None):
    index = int(rng.integers(1 << 30)) if index is None else index
    video = make_video(int(seed_base + index), n_frames)
    # balance the families: pick a family first, then one of its questions
    fams = [f for f in FAMILIES if any(q.family == f for q in video.questions)]
    fam = fams[int(rng.integers(len(fams)))]
    qs = [q for q in video.questions if q.family == fam]
    return video, qs[int(rng.integers(len(qs)))]


def train_stack(
    kind: str,
    out: str | Path | None,
    cfg: TrainConfig = TrainConfig(),
    model_cfg: TempoConfig | None = None,
    log: Callable[[str], None] = log_stderr,
    compressor: str | Path | None = None,
    freeze_backbone: bool = False,
    sampler: Callable[[np.random.Generator, int], tuple] | None = None,
) -> Stack:
    """Train one stack through the stages; resumes from ``out`` if a checkpoint is there.

    The videos come from ``cfg.videos`` (:func:`video_sampler`) unless ``sampler``
    (``(rng, n_frames) -> (video, question)``) is given; a checkpoint is resumed only by a run
    with the same ``cfg``, so give a custom sampler its own ``cfg.extra`` entry.

    ``compressor``: a local Hugging Face vision-language checkpoint to use as the compressor
    instead of the tiny SVLM; ``freeze_backbone`` then trains only its memory tokens, the probe
    and the global model.

    ``out/checkpoint`` (weights, optimizer, RNG states) is rewritten atomically every
    ``cfg.checkpoint_every`` steps and every ``cfg.checkpoint_every_s`` seconds, so a killed run
    resumes exactly where the checkpoint stands. A SIGTERM finishes the current step, writes the
    checkpoint and raises :class:`fmlab.core.train.TrainingInterrupted` (a ``KeyboardInterrupt``;
    ``exit_code`` 143); rerunning the same call resumes.
    """
    from fmlab.core.train import CheckpointTimer, GracefulStop, TrainingInterrupted

    torch.manual_seed(cfg.seed)
    hf = None
    if compressor is not None:
        from fmlab.tempo.hf import HFCompressor

        hf = HFCompressor.from_pretrained(compressor, (model_cfg or TempoConfig()).mem_tokens)
        if freeze_backbone:
            hf.model.requires_grad_(False)
    stack = Stack(kind, model_cfg, hf)
    sampler = sampler or video_sampler(cfg)
    opt = torch.optim.AdamW(_trainable(stack), lr=cfg.lr, weight_decay=0.01)
    total = sum(s for _, s, _ in cfg.stages)
    ckpt = Path(out) / "checkpoint" if out is not None else None
    done, rng = 0, np.random.default_rng([cfg.seed, 0])
    if ckpt is not None:
        from fmlab.core.io import CheckpointError, read_json, recover_swap

        recover_swap(ckpt)  # a kill between the two renames of the last save
    if ckpt is not None and (ckpt / "tempo.json").is_file():
        try:
            meta = read_json(ckpt / "tempo.json")
        except ValueError as e:
            raise CheckpointError(f"{e}; delete {ckpt} to train afresh") from e
        saved = (meta.get("kind"), _resume_key(meta.get("train")))
        if saved != (kind, _resume_key(_jsonable(cfg))):
            raise CheckpointError(
                f"{ckpt}: a checkpoint of another run (kind {saved[0]!r}, other training "
                f"settings) than this one (kind {kind!r}); use another --out, or delete it to "
                "train afresh"
            )
        stack, opt, done, rng = _resume(ckpt, meta, cfg, freeze_backbone)
        log(f"resuming {kind} at step {done}/{total}")
    stack.train()
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (
            min(1.0, (done + i + 1) / 50)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, (done + i) / total)))
        ),
    )
    step, t0 = 0, time.perf_counter()
    timer = CheckpointTimer(cfg.checkpoint_every, cfg.checkpoint_every_s)
    with GracefulStop() as stop:
        for name, steps, n_frames in cfg.stages:
            for _ in range(steps):
                step += 1
                if step <= done:
                    continue
                loss = _stack_step(stack, opt, kind, name, n_frames, cfg, rng, sampler)
                sched.step()
                if step % 25 == 0:
                    log(f"{kind} {name} step {step}/{total} loss {loss:.3f} "
                        f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
                if ckpt is not None and (timer.due(step) or step == total or stop.requested):
                    _save_training(stack, opt, rng, ckpt, cfg, step)
                    timer.saved()
                if stop.requested and step < total:
                    where = f"checkpoint in {ckpt}" if ckpt is not None else "no output directory"
                    raise TrainingInterrupted(
                        f"tempo {kind}: stopped by {stop.received} at step {step}/{total} "
                        f"({where}); rerun the same command to resume",
                        stop.received or "SIGTERM",
                        step,
                    )
    return stack.eval()


_CKPT_FIELDS = ("checkpoint_every", "checkpoint_every_s")  # when to save, not what is trained


def _resume_key(train_cfg: dict | None) -> dict | None:
    """The part of a saved TrainConfig that must match for a checkpoint to be resumed."""
    if not isinstance(train_cfg, dict):
        return None
    # a field added to TrainConfig after the checkpoint was written takes its default
    defaults = {k: v for k, v in _jsonable(TrainConfig()).items() if k not in train_cfg}
    return {k: v for k, v in {**train_cfg, **defaults}.items() if k not in _CKPT_FIELDS}


def _stack_step(
    stack: Stack, opt, kind: str, name: str, n_frames: int, cfg, rng, sampler=None
) -> float:
    """One optimizer step of stage ``name`` on a batch of ``cfg.batch`` videos."""
    sampler = sampler or video_sampler(cfg)
    items, answers, rel_loss = [], [], torch.zeros(())
    n_seg = math.ceil(n_frames / stack.cfg.seg_len)
    for _ in range(cfg.batch):
        video, q = sampler(rng, n_frames)
        budget = int(rng.choice(cfg.budgets_per_segment)) * n_seg
        truth = segment_truth(video, q, stack.cfg.seg_len)
        prefix = None
        if name == "align":  # all memory tokens (ATA would keep only m of the least relevant)
            budget = n_seg * stack.cfg.mem_tokens
            prefix = np.full(n_seg, stack.cfg.mem_tokens) if kind == "tempo" else None
        elif name == "long-sft" and cfg.random_prefix and rng.random() < 0.5:
            prefix = rng.integers(1, stack.cfg.mem_tokens + 1, size=n_seg)
        arm = "uniform-alloc" if kind == "agnostic" else "tempo"
        blocks, info = stack.blocks(video.frames, q.text, budget, arm, truth, rng, prefix)
        if kind == "tempo" and q.needles:
            rel_loss = rel_loss + nn.functional.binary_cross_entropy_with_logits(
                info["relevance_logits"], torch.from_numpy(truth)
            )
        if kind in ("tempo", "agnostic") and cfg.probe_weight:
            target = segment_colours(video, q, stack.cfg.seg_len, kind == "tempo")
            rel_loss = rel_loss + cfg.probe_weight * nn.functional.cross_entropy(
                info["probe"], torch.from_numpy(target)
            )
        items.append((blocks, q.text))
        answers.append(stack.vocab.answer_index(q.answer))
    logits = stack.logits(items)
    loss = nn.functional.cross_entropy(logits, torch.tensor(answers))
    loss = loss + cfg.rel_weight * rel_loss / cfg.batch
    opt.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(stack.parameters(), 1.0)
    opt.step()
    return loss.item()


def _save_training(stack: Stack, opt, rng, ckpt: Path, cfg, step: int) -> None:
    """Weights, optimizer and RNG states in one atomically replaced directory."""
    from fmlab.core.train import rng_state

    meta = {"train": _jsonable(cfg), "step": step, "np_rng": rng.bit_generator.state}
    stack.save(ckpt, meta, train_state={"optimizer": opt.state_dict(), "rng": rng_state()})


def _resume(ckpt: Path, meta: dict, cfg, freeze_backbone: bool):
    """(stack, optimizer, step, numpy generator) restored from ``ckpt``."""
    from fmlab.core.io import CheckpointError, load_torch_file
    from fmlab.core.train import set_rng_state

    stack = Stack.load(ckpt).train()
    if stack.hf and freeze_backbone:
        stack.compressor.model.requires_grad_(False)
    opt = torch.optim.AdamW(_trainable(stack), lr=cfg.lr, weight_decay=0.01)
    done = int(meta["step"])
    if (ckpt / TRAIN_STATE).is_file():
        st = load_torch_file(ckpt / TRAIN_STATE, allow_pickle=True)
        opt.load_state_dict(st["optimizer"])
        set_rng_state(st["rng"])
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["np_rng"]
    elif (ckpt / "optim.pt").is_file():  # written before fmlab saved the RNG states
        opt.load_state_dict(load_torch_file(ckpt / "optim.pt", allow_pickle=True))
        rng = np.random.default_rng([cfg.seed, done])
    else:
        raise CheckpointError(
            f"{ckpt}: no {TRAIN_STATE} (optimizer state); delete {ckpt} to restart training"
        )
    return stack, opt, done, rng


def _trainable(stack: Stack) -> list[nn.Parameter]:
    return [p for p in stack.parameters() if p.requires_grad]


def _jsonable(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))
