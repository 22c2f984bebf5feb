"""Tempo's compressor on a Hugging Face vision-language model (the paper uses Qwen3-VL-2B).

``HFCompressor`` has the tiny compressor's interface: segments (S, F, 3, H, W) and a query in,
memory states (S, M, d) and relevance logits (S,) out, all segments in one batched forward.
Each segment is one prompt of the model's own processor and chat template:

    [system: store what the query needs] [user: F frames, "Query: …", is it relevant?]
    [assistant turn start] [M memory tokens]

- The M memory tokens are a learned ``nn.Parameter`` initialised from the mean and std of the
  model's token embeddings. They are put in place of M placeholder ids by a hook on the input
  embedding, so the model's own forward (vision tower, placeholder scatter, position ids) runs
  unchanged.
- The compressed tokens are the last hidden states (after the final norm) at the memory
  positions.
- Relevance is σ(h · (w_Yes − w_No)), with h the hidden state at the last prompt position and
  w the rows of the model's LM head for "Yes" and "No": P(Yes) / (P(Yes) + P(No)), zero-shot
  and with no extra pass.

Tested on tiny random ``LlavaForConditionalGeneration`` and ``Idefics3ForConditionalGeneration``
(the SmolVLM architecture) models built in-process; any ``AutoModelForImageTextToText``
checkpoint whose processor takes images and a prompt with image tokens goes through the same
code.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fmlab.core.data.videos import COLOURS
from fmlab.core.io import CheckpointError

__all__ = ["SYSTEM_PROMPT", "HFCompressor"]

SYSTEM_PROMPT = (
    "You compress a video segment. Store in the memory tokens that follow the minimal "
    "information needed to answer the query."
)
RELEVANCE_PROMPT = "Is this segment relevant to the query? Answer Yes or No."


def _first_id(tokenizer, word: str, path) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise CheckpointError(f"{path}: the tokenizer has no token for {word!r}")
    return int(ids[0])


class HFCompressor(nn.Module):
    def __init__(
        self,
        model,
        processor,
        mem_tokens: int = 16,
        yes: str = "Yes",
        no: str = "No",
        query_aware: bool = True,
        source: str = "",
    ):
        super().__init__()
        self.model, self.processor = model, processor
        self.tokenizer = getattr(processor, "tokenizer", None)
        if self.tokenizer is None or not hasattr(processor, "image_token"):
            raise CheckpointError(
                f"{source or 'model'}: the processor has no tokenizer or image token; "
                "Tempo needs a vision-language checkpoint (AutoProcessor with images and text)"
            )
        self.mem_tokens, self.query_aware, self.source = mem_tokens, query_aware, source
        self.yes, self.no = (
            _first_id(self.tokenizer, yes, source),
            _first_id(self.tokenizer, no, source),
        )
        if self.yes == self.no:
            raise CheckpointError(f"{source}: 'Yes' and 'No' map to the same token {self.yes}")
        emb = model.get_input_embeddings().weight
        self.hidden_size = int(emb.shape[1])
        with torch.no_grad():  # the paper's init: the token embeddings' mean and std
            self.memory = nn.Parameter(
                torch.randn(mem_tokens, self.hidden_size, dtype=emb.dtype) * emb.std()
                + emb.mean(dim=0, keepdim=True)
            )
        pad = self.tokenizer.pad_token_id
        self.placeholder = int(pad if pad is not None else 0)
        self.probe = nn.Linear(self.hidden_size, len(COLOURS) + 1)  # training only, as tiny
        self._active = False
        model.get_input_embeddings().register_forward_hook(self._put_memory)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path: str | Path, mem_tokens: int = 16, dtype: torch.dtype = torch.float32, **kw
    ) -> HFCompressor:
        """Load a local HF vision-language checkpoint (model + processor); never downloads."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        if not (path / "config.json").is_file():
            raise CheckpointError(
                f"{path}: not a Hugging Face checkpoint (config.json missing); pass a directory "
                "written by save_pretrained"
            )
        try:
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=dtype, local_files_only=True
            )
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(
                f"{path}: could not load a vision-language model and processor ({e})"
            ) from e
        return cls(model.eval(), processor, mem_tokens, source=str(path), **kw)

    def save_backbone(self, path: str | Path) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)

    @property
    def frame_size(self) -> int:
        """The side the processor resizes frames to (read videos at this size)."""
        ip = getattr(self.processor, "image_processor", None)
        for attr in ("crop_size", "size"):
            s = getattr(ip, attr, None) or {}
            s = s if isinstance(s, dict) else getattr(s, "__dict__", {})
            for key in ("height", "shortest_edge"):
                # some processors (Qwen-VL) give pixel counts here, not sides: skip those
                if s.get(key) and int(s[key]) <= 1024:
                    return int(s[key])
        return 224

    # -- the prompt ------------------------------------------------------------------------
    def encode_query(self, text: str) -> str:
        return text

    def prompt(self, n_frames: int, query: str) -> str:
        words = f"Query: {query}\n" if self.query_aware else ""
        text = f"{words}{RELEVANCE_PROMPT}"
        template = getattr(self.processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None
        )
        if template:
            messages = [
                {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                {
                    "role": "user",
                    "content": [{"type": "image"}] * n_frames + [{"type": "text", "text": text}],
                },
            ]
            return self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        return f"{SYSTEM_PROMPT}\n{self.processor.image_token * n_frames}\n{text}\n"

    def _put_memory(self, module, args, output):
        if not self._active:
            return output
        out = output.clone()
        out[:, -self.mem_tokens :] = self.memory.to(out.dtype)
        return out

    @contextlib.contextmanager
    def _memory_in_place(self):
        self._active = True
        try:
            yield
        finally:
            self._active = False

    # -- forward ---------------------------------------------------------------------------
    def forward(self, segments: torch.Tensor, query: str) -> tuple[torch.Tensor, torch.Tensor]:
        """segments (S, F, 3, H, W) in 0..255, one query for all → (memory states (S, M, d),
        relevance logits (S,))."""
        s, f = segments.shape[:2]
        frames = segments.flatten(0, 1).permute(0, 2, 3, 1).to(torch.uint8).numpy()
        images = [np.ascontiguousarray(x) for x in frames]
        text = self.prompt(f, query)
        inputs = self.processor(text=[text] * s, images=images, return_tensors="pt")
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        if not bool(mask.all()):
            raise RuntimeError("segment prompts differ in length; expected one shared prompt")
        m = self.mem_tokens
        inputs["input_ids"] = torch.cat([ids, ids.new_full((s, m), self.placeholder)], dim=1)
        inputs["attention_mask"] = torch.cat([mask, mask.new_ones((s, m))], dim=1)
        dtype = self.memory.dtype
        for k, v in inputs.items():
            if torch.is_floating_point(v):
                inputs[k] = v.to(dtype)
        with self._memory_in_place():
            h = self.model.model(**inputs).last_hidden_state
        w = self.model.get_output_embeddings().weight
        h_rel = h[:, -m - 1]
        return h[:, -m:], h_rel @ (w[self.yes] - w[self.no]).to(h.dtype)
