"""A tiny video-QA model for the VideoAuto-R1 reproduction, and its data.

Frames of the shared synthetic needle videos (:mod:`fmlab.core.data.videos`) go through a small
CNN, one embedding per frame, which replaces the embedding of a ``<frame>`` placeholder token in
the prompt of a tiny Hugging Face Llama (LLaVA-style: the visual inputs are a keyword argument
of ``forward``, ``frames``). It is a real ``LlamaForCausalLM`` subclass with its own registered
config, so ``save_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` round-trip, HF
``generate`` works, and :func:`fmlab.autothink.generate` (the early exit) runs on it.

Questions come in perception families (``attribute``, ``presence``) and reasoning families
(``count``, ``sum``, ``order``); see :func:`fmlab.core.data.videos.qa_questions`. Each item also
carries a reasoning trace (the needles in time order, with a running count or sum where the
family needs one), which the format warm start uses as the think block.

Text is word-level over a closed vocabulary (answers are single words), with ``\\boxed{``,
``<think>``, ``</think>``, the fallback phrase and ``<frame>`` as whole tokens, so a completion
such as ``\\boxed{ red } <think> red square , blue plus </think> \\boxed{ blue }`` is 10 tokens.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from fmlab.autothink.format import FALLBACK, THINK_CLOSE, THINK_OPEN
from fmlab.core.data.videos import (
    COLOURS,
    PERCEPTION_FAMILIES,
    QA_ANSWERS,
    QA_FAMILIES,
    REASONING_FAMILIES,
    SHAPES,
    SIZE,
    VALUES,
    make_video,
    qa_questions,
)

__all__ = [
    "BOX_OPEN",
    "FRAME",
    "N_FRAMES",
    "PERCEPTION_FAMILIES",
    "QA_FAMILIES",
    "REASONING_FAMILIES",
    "VideoLlamaConfig",
    "VideoLlamaForCausalLM",
    "build_video_llama",
    "frames_of",
    "qa_items",
    "qa_tokenizer",
]

FRAME = "<frame>"
BOX_OPEN = "\\boxed{"
N_FRAMES, NEEDLE_LEN = 16, 2
_QUESTION_WORDS = [
    "what",
    "colour",
    "is",
    "the",
    "there",
    "a",
    "how",
    "many",
    "flashes",
    "sum",
    "of",
    "last",
    "flash",
]


def qa_tokenizer():
    """The word-level tokenizer of the video-QA language (fmlab's special tokens and chat
    template; ``<|im_end|>`` ends a completion)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from fmlab.core.models.tokenizer import PAD, SPECIAL_TOKENS, wrap_tokenizer

    words = [*_QUESTION_WORDS, *COLOURS, *SHAPES, *QA_ANSWERS, ",", "}"]
    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = wrap_tokenizer(tok, max_length=4096)
    fast.add_tokens([FRAME, BOX_OPEN, THINK_OPEN, THINK_CLOSE, FALLBACK])
    return fast


def box(answer: str) -> str:
    """``\\boxed{ answer }`` in the word-level spelling."""
    return f"{BOX_OPEN} {answer} }}"


def trace(video, question) -> str:
    """The reasoning the warm start writes in the think block: every needle in time order as
    ``colour shape``, followed by the running count (``count``) or sum (``sum``)."""
    items, run = [], 0
    for n in sorted(video.needles, key=lambda x: x.start):
        item = f"{n.colour} {n.shape}"
        if question.family == "count":
            run += int(n.colour == question.text.split()[2])
            item += f" {run}"
        elif question.family == "sum":
            run += VALUES[n.colour]
            item += f" {run}"
        items.append(item)
    return " , ".join(items)


def qa_items(
    split_seed: int, n: int, n_frames: int = N_FRAMES, families: tuple[str, ...] = QA_FAMILIES
) -> list[dict]:
    """``n`` questions, families in turn, each on its own video (seeds from ``split_seed``
    on; a video that does not admit the family's question is skipped). An item is a dict with
    ``prompt`` (``<frame>`` x n_frames, then the question), ``answer``, ``family``, ``trace``,
    ``frames`` ((n_frames, 32, 32, 3) uint8) and ``video`` (its seed)."""
    unknown = [f for f in families if f not in QA_FAMILIES]
    if unknown or not families:
        raise ValueError(f"unknown families {unknown}; choose from: {', '.join(QA_FAMILIES)}")
    out: list[dict] = []
    seed = split_seed
    while len(out) < n:
        family = families[len(out) % len(families)]
        v = make_video(seed, n_frames, needle_len=NEEDLE_LEN)
        q = next((q for q in qa_questions(v) if q.family == family), None)
        if q is not None:
            out.append({
                "prompt": " ".join([FRAME] * n_frames + [q.text]),
                "answer": q.answer,
                "family": family,
                "trace": trace(v, q),
                "frames": v.frames,
                "video": seed,
            })  # fmt: skip
        seed += 1
    return out


def frames_of(rows) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 frames of a list of items (the ``model_inputs`` hook of GRPO)."""
    return torch.from_numpy(np.stack([np.asarray(r["frames"]) for r in rows]))


class VideoLlamaConfig(LlamaConfig):
    """A Llama config plus the frame encoder's numbers and the ``<frame>`` token id."""

    model_type = "fmlab_video_llama"

    def __init__(self, frame_token_id: int = 0, frame_size: int = SIZE, cnn_width: int = 32,
                 **kwargs):  # fmt: skip
        self.frame_token_id = frame_token_id
        self.frame_size = frame_size
        self.cnn_width = cnn_width
        super().__init__(**kwargs)


class FrameEncoder(nn.Module):
    """(B, T, S, S, 3) uint8 frames -> (B, T, hidden): three conv + pool stages and a linear."""

    def __init__(self, hidden: int, size: int = SIZE, width: int = 32):
        super().__init__()
        if size % 8:
            raise ValueError(f"frame size {size} must be a multiple of 8")
        self.net = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(width * (size // 8) ** 2, hidden),
        )  # fmt: skip

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        p = next(self.parameters())
        return self.net(x.to(p.dtype)).view(b, t, -1)  # (B, T, hidden)


class VideoLlamaForCausalLM(LlamaForCausalLM):
    """A tiny Llama whose ``<frame>`` tokens are replaced by CNN embeddings of ``frames``.

    ``forward(input_ids, frames=...)``: the i-th ``<frame>`` token of a row takes the embedding
    of that row's i-th frame. Decoding steps (a non-empty cache) ignore ``frames``, so HF
    ``generate(..., frames=f)`` and the early-exit decode work unchanged."""

    config_class = VideoLlamaConfig

    def __init__(self, config: VideoLlamaConfig):
        super().__init__(config)
        self.frame_encoder = FrameEncoder(config.hidden_size, config.frame_size, config.cnn_width)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        logits_to_keep=0,
        frames=None,
        **kwargs,
    ):
        prefill = cache is None or cache.get_seq_length() == 0
        if input_ids is not None and inputs_embeds is None and prefill:
            slots = input_ids == self.config.frame_token_id  # (B, L)
            if slots.any():
                if frames is None:
                    raise ValueError(
                        "the prompt has <frame> tokens but no frames were given; pass "
                        "frames=(B, T, H, W, 3) uint8, one video per row"
                    )
                # the first T <frame> tokens of a row are the video (one the model generated
                # later in a completion is an ordinary token)
                slots = slots & (slots.cumsum(1) <= frames.size(1))
                n = slots.sum(1)
                if not torch.all(n == frames.size(1)):
                    raise ValueError(
                        f"rows hold {n.tolist()} <frame> tokens but {frames.size(1)} frames "
                        "were given per row; the prompt needs one <frame> token per frame"
                    )
                emb = self.get_input_embeddings()(input_ids)
                feats = self.frame_encoder(frames.to(emb.device)).to(emb.dtype)  # (B, T, H)
                inputs_embeds = emb.masked_scatter(slots.unsqueeze(-1), feats)
                input_ids = None
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )


AutoConfig.register(VideoLlamaConfig.model_type, VideoLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(VideoLlamaConfig, VideoLlamaForCausalLM, exist_ok=True)


def build_video_llama(
    tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0,
    max_positions: int = 64,
) -> VideoLlamaForCausalLM:  # fmt: skip
    """A randomly initialised video Llama for ``tokenizer`` (from :func:`qa_tokenizer`)."""
    frame_id = tokenizer.convert_tokens_to_ids(FRAME)
    if frame_id is None or frame_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {FRAME} token; build it with qa_tokenizer()")
    cfg = VideoLlamaConfig(
        frame_token_id=frame_id,
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=((8 * hidden // 3 + 15) // 16) * 16,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VideoLlamaForCausalLM(cfg)
    return model
