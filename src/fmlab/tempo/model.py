"""The tiny Tempo stack: a small VLM that compresses each segment into memory tokens and scores
its relevance, and a global model (projector + LLM) that answers from the kept tokens.

Both transformers are HF ``LlamaModel``s fed through ``inputs_embeds``.

Compressor (SVLM), one sequence per segment, all segments of all videos in one batch:

    [frame patches: seg_len × P tokens] [query words] [<rel>] [M memory tokens]

- The memory tokens are a learned ``nn.Parameter``, initialised from the mean/std of the word
  embeddings.
- The compressed tokens are the last hidden states at the memory positions.
- Relevance is σ(h · (w_Yes − w_No)), with h the hidden state at ``<rel>`` (the last prompt
  position) and w the LM head rows of "yes" and "no".
- A query-agnostic compressor gets no query words.

Global model: for each segment, a timestamp token (the segment centre's relative time, in 32
buckets), then that segment's kept memory tokens through the projector; then the question
words. The answer is read at the last position over the closed answer vocabulary.

The frame baselines feed patch tokens of sampled or pooled frames (the same patch embedding
design) to the same global model.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from fmlab.core.data.videos import ANSWERS, COLOURS, SHAPES

__all__ = [
    "FRAME_FEATURES",
    "Compressor",
    "FeatureEncoder",
    "FrameEncoder",
    "GlobalModel",
    "TempoConfig",
    "Vocab",
    "frame_encoder",
]

TIME_BUCKETS = 32
FRAME_FEATURES = ("pixels", "efficientnet")  # what the frame encoders read


@dataclass(frozen=True)
class TempoConfig:
    frame_size: int = 32
    patch: int = 8
    seg_len: int = 8
    mem_tokens: int = 16
    d_svlm: int = 64
    svlm_layers: int = 2
    d_llm: int = 64
    llm_layers: int = 2
    heads: int = 4
    query_aware: bool = True
    # "pixels": patches learned from scratch; "efficientnet": the cells of frozen
    # EfficientNet-Lite0 feature maps (fmlab.core.vision) of frames resized to feature_size
    # (64 px: a 2 x 2 map, one cell per quadrant), cached per frame, through a learned projection
    frame_features: str = "pixels"
    feature_size: int = 64

    def __post_init__(self):
        if self.frame_features not in FRAME_FEATURES:
            raise ValueError(
                f"frame_features must be one of {', '.join(FRAME_FEATURES)}, got "
                f"{self.frame_features!r}"
            )
        if self.feature_size < 32 or self.feature_size % 32:
            raise ValueError(f"feature_size must be a multiple of 32, got {self.feature_size}")

    @property
    def patches(self) -> int:
        """Visual tokens per frame."""
        if self.frame_features == "efficientnet":
            return (self.feature_size // 32) ** 2
        return (self.frame_size // self.patch) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class Vocab:
    """Word-level vocabulary of the synthetic question language. It is closed: a word outside
    it reads as <unk>, and :meth:`check` names such words so the caller can warn."""

    SPECIAL = ("<pad>", "<rel>", "<unk>")

    def __init__(self):
        words = [
            "what", "colour", "is", "the", "how", "many", "flashes", "was", "before", "when",
            "did", "scene", "get", "warmer", "are", "all", "same", "there", "a", "any",
            *SHAPES, *COLOURS, *ANSWERS,
        ]  # fmt: skip
        self.words = list(dict.fromkeys([*self.SPECIAL, *words]))
        self.index = {w: i for i, w in enumerate(self.words)}
        self.answers = list(ANSWERS)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        unk = self.index["<unk>"]
        return [self.index.get(w, unk) for w in re.findall(r"[a-z0-9]+", text.lower())]

    def check(self, text: str, what: str = "question") -> list[str]:
        """The words of ``text`` this vocabulary does not know (they are read as <unk>); an
        empty ``text`` (no words at all) raises."""
        words = re.findall(r"[a-z0-9]+", text.lower())
        if not words:
            raise ValueError(
                f"empty {what} {text!r}: ask something about the video, e.g. "
                "'what colour is the square'"
            )
        return [w for w in dict.fromkeys(words) if w not in self.index]

    def answer_index(self, answer: str) -> int:
        return self.answers.index(answer)


def _llama(d: int, layers: int, heads: int, max_pos: int) -> LlamaModel:
    cfg = LlamaConfig(
        vocab_size=8,  # unused: inputs_embeds only
        hidden_size=d,
        intermediate_size=4 * d,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_pos,
        attention_dropout=0.0,
    )
    return LlamaModel(cfg)


class FrameEncoder(nn.Module):
    """Frames (B, 3, H, W) uint8-range floats → (B, P, d) patch tokens."""

    def __init__(self, cfg: TempoConfig, d: int):
        super().__init__()
        self.conv = nn.Conv2d(3, d, cfg.patch, stride=cfg.patch)
        self.pos = nn.Parameter(torch.zeros(cfg.patches, d))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.conv(frames / 127.5 - 1.0)  # (B, d, h, w)
        return x.flatten(2).transpose(1, 2) + self.pos


class FeatureCache:
    """Frozen EfficientNet-Lite0 feature-map cells per frame, keyed by a SHA-1 of the frame's
    bytes: a frame seen twice (another arm, another epoch over a video pool, the other stack)
    is encoded once. Stored as float16, at most ``max_frames`` frames, the oldest dropped first
    (262,144 frames of 2 x 2 cells take 2.7 GB)."""

    def __init__(self, size: int = 64, max_frames: int = 262_144):
        self.size, self.max_frames = size, max_frames
        self.store: dict[bytes, np.ndarray] = {}
        self.encoder = None  # built on first use (loads the weights)
        self.hits = self.misses = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 → (N, cells, 1280) float32."""
        import hashlib

        keys = [hashlib.sha1(f.tobytes() + str(f.shape).encode()).digest() for f in frames]
        todo = list(dict.fromkeys(k for k in keys if k not in self.store))
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        got: dict[bytes, np.ndarray] = {}
        if todo:
            if self.encoder is None:
                from fmlab.core.vision import ImageEncoder

                self.encoder = ImageEncoder(size=self.size, cache=False)
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            fmap = self.encoder.feature_map(frames[[first[k] for k in todo]])  # (n, 1280, h, w)
            cells = fmap.reshape(len(todo), fmap.shape[1], -1).transpose(0, 2, 1)
            got = dict(zip(todo, cells.astype(np.float16), strict=True))
        out = np.stack([got[k] if k in got else self.store[k] for k in keys]).astype(np.float32)
        for k, v in got.items():
            if len(self.store) >= self.max_frames:
                self.store.pop(next(iter(self.store)))  # the oldest
            self.store[k] = v
        return out


_FEATURE_CACHES: dict[int, FeatureCache] = {}


def feature_cache(size: int = 64) -> FeatureCache:
    """The process-wide cache for frames resized to ``size`` (shared by every stack)."""
    if size not in _FEATURE_CACHES:
        _FEATURE_CACHES[size] = FeatureCache(size)
    return _FEATURE_CACHES[size]


class FeatureEncoder(nn.Module):
    """Frames (B, 3, H, W) uint8-range floats → (B, P, d): the P cells of frozen
    EfficientNet-Lite0 feature maps (1280-d, cached per frame), layer-normed and projected.
    Only the norm, projection and positions are trained (and saved)."""

    def __init__(self, cfg: TempoConfig, d: int):
        super().__init__()
        from fmlab.core.vision import DIM

        self.size = cfg.feature_size
        self.norm = nn.LayerNorm(DIM)
        self.proj = nn.Linear(DIM, d)
        self.pos = nn.Parameter(torch.zeros(cfg.patches, d))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.detach().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        f = torch.from_numpy(feature_cache(self.size)(np.ascontiguousarray(x.numpy())))
        return self.proj(self.norm(f)) + self.pos  # (B, P, d)


def frame_encoder(cfg: TempoConfig, d: int) -> nn.Module:
    """The frame encoder ``cfg.frame_features`` names."""
    return FeatureEncoder(cfg, d) if cfg.frame_features == "efficientnet" else FrameEncoder(cfg, d)


class Compressor(nn.Module):
    def __init__(self, cfg: TempoConfig, vocab: Vocab):
        super().__init__()
        self.cfg, self.vocab = cfg, vocab
        d = cfg.d_svlm
        self.frames = frame_encoder(cfg, d)
        self.frame_pos = nn.Parameter(torch.zeros(cfg.seg_len, 1, d))
        self.embed = nn.Embedding(len(vocab), d)
        self.backbone = _llama(d, cfg.svlm_layers, cfg.heads, cfg.seg_len * cfg.patches + 64)
        self.lm_head = nn.Linear(d, len(vocab), bias=False)
        self.lm_head.weight = self.embed.weight  # tied, as in small LMs
        with torch.no_grad():  # memory tokens start at the word embeddings' statistics
            w = self.embed.weight
            self.memory = nn.Parameter(
                torch.randn(cfg.mem_tokens, d) * w.std() + w.mean(dim=0, keepdim=True)
            )
        self.yes, self.no = vocab.index["yes"], vocab.index["no"]
        # training-only probe on the first memory token: the colour of the needle the query asks
        # about, if this segment shows it, else "none" (our stand-in for the SVLM's captioning
        # pre-training; it teaches the memory to hold query-relevant content, first tokens first)
        self.probe = nn.Linear(d, len(COLOURS) + 1)

    @property
    def hidden_size(self) -> int:
        return self.cfg.d_svlm

    def encode_query(self, text: str) -> list[int]:
        return self.vocab.encode(text)

    def forward(
        self, segments: torch.Tensor, query: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """segments (S, seg_len, 3, H, W), one query for all → (memory states (S, M, d),
        relevance logits (S,))."""
        s, f = segments.shape[:2]
        pt = self.frames(segments.flatten(0, 1).float())  # (S·F, P, d)
        pt = (pt.view(s, f, -1, pt.shape[-1]) + self.frame_pos[:f]).flatten(1, 2)
        words = query if self.cfg.query_aware else []
        ids = torch.tensor([*words, self.vocab.index["<rel>"]], dtype=torch.long)
        prompt = self.embed(ids)[None].expand(s, -1, -1)
        mem = self.memory[None].expand(s, -1, -1)
        h = self.backbone(inputs_embeds=torch.cat([pt, prompt, mem], dim=1)).last_hidden_state
        m = self.cfg.mem_tokens
        h_rel = h[:, -m - 1]
        w = self.lm_head.weight
        return h[:, -m:], h_rel @ (w[self.yes] - w[self.no])


class GlobalModel(nn.Module):
    """Projector + LLM over [timestamp, visual tokens] blocks and the question."""

    def __init__(self, cfg: TempoConfig, vocab: Vocab, d_in: int, max_len: int | None = None):
        super().__init__()
        d = cfg.d_llm
        self.proj = nn.Sequential(nn.Linear(d_in, d), nn.GELU(), nn.Linear(d, d))
        self.time = nn.Embedding(TIME_BUCKETS, d)
        self.embed = nn.Embedding(len(vocab), d)
        # rotary positions: no learned table, so the context follows the budget; a sequence is
        # 2·|question| + N timestamps + Σ kept tokens ≤ 2·|question| + N + B
        self.llm = _llama(d, cfg.llm_layers, cfg.heads, max_len or 32768)
        self.head = nn.Linear(d, len(vocab.answers))
        self.max_len = max_len

    def sequence(self, blocks: list[tuple[float, torch.Tensor]], question: list[int]):
        q = self.embed(torch.tensor(question, dtype=torch.long))
        parts = [q]  # the question before the video too, so visual tokens can attend to it
        for t, toks in blocks:  # t: relative time in [0, 1]
            bucket = min(TIME_BUCKETS - 1, int(t * TIME_BUCKETS))
            parts.append(self.time.weight[bucket][None])
            if len(toks):
                parts.append(self.proj(toks))
        parts.append(q)
        seq = torch.cat(parts)
        if self.max_len is not None and len(seq) > self.max_len:
            raise ValueError(f"sequence of {len(seq)} tokens exceeds max_len {self.max_len}")
        return seq

    def forward(self, seqs: list[torch.Tensor]) -> torch.Tensor:
        """Answer logits (B, n_answers) for a batch of embedded sequences (right-padded)."""
        n = max(len(x) for x in seqs)
        d = seqs[0].shape[-1]
        x = torch.zeros(len(seqs), n, d)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = s
            mask[i, : len(s)] = 1
        h = self.llm(inputs_embeds=x, attention_mask=mask).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in seqs])
        return self.head(h[torch.arange(len(seqs)), last])
