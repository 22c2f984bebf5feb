"""A block-diffusion masked LM on a real HF Llama, and the attention layouts it runs in.

The network is a ``LlamaForCausalLM`` whose attention is set by an explicit 4-D boolean mask,
so it is bidirectional wherever the layout says so. The answer is cut into blocks of
``block_length`` tokens: a block attends to the prompt, to the clean blocks before it and to
itself (Fast-dLLM v2 / BD3-LM style). With one block the model is a LLaDA-style fully
bidirectional masked LM.

One function, :func:`layout`, builds every input this module runs:

* the sampler's state for block ``b``: ``[prompt | clean blocks < b | noised block b]``;
* the packed layout ``[prompt | clean answer | noised answer]``, in which every noised block
  sees exactly what it would see in its own pass. One forward therefore scores one state per
  block. Training (:func:`diffusion_loss`) and the single-pass estimators use it.

The policy μ_θ(· | state) over a masked position is the softmax of its logits with [MASK] and
padding excluded (:func:`token_logprobs`). The sampler, the estimators and the trainers all
use that one function, so "the probability of the token that was unmasked" means the same
thing everywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from fmlab.core.io import CheckpointError, atomic_dir
from fmlab.core.models.tiny import build_model

__all__ = [
    "CLEAN",
    "DLLM",
    "NOISED",
    "PAD_KIND",
    "PROMPT",
    "diffusion_loss",
    "layout",
    "load_dllm",
    "make_dllm",
    "save_dllm",
    "token_logprobs",
]

PAD_KIND, PROMPT, CLEAN, NOISED = -1, 0, 1, 2
MASK = "<|mask|>"


@dataclass
class DLLM:
    """A block-diffusion LM: the HF network, its tokenizer, and the answer geometry."""

    net: PreTrainedModel  # any HF causal LM that honours a 4-D attention mask (fmlab.dtrpo.adapter)
    tokenizer: PreTrainedTokenizerBase
    gen_length: int = 24
    block_length: int = 8

    def __post_init__(self):
        if self.gen_length % self.block_length:
            raise ValueError(
                f"gen_length {self.gen_length} is not a multiple of block_length "
                f"{self.block_length}"
            )
        tok = self.tokenizer
        self.mask_id = tok.mask_token_id if tok.mask_token else tok.convert_tokens_to_ids(MASK)
        self.pad_id, self.eos_id = tok.pad_token_id, tok.eos_token_id
        missing = [n for n, i in (("mask", self.mask_id), ("pad", self.pad_id),
                                  ("end-of-answer (eos)", self.eos_id))
                   if i is None or (i == tok.unk_token_id and n != "pad")]  # fmt: skip
        if self.pad_id is not None and self.pad_id == self.eos_id:
            missing.append("pad distinct from eos")
        if missing:
            raise ValueError(
                f"the tokenizer has no {' / '.join(missing)} token; convert the checkpoint with "
                "`fmlab dtrpo convert` (fmlab.dtrpo.adapter.convert_causal_lm), which adds them"
            )
        cfg = self.net.config
        cfg.mask_token_id = self.mask_id
        cfg.dllm_gen_length = self.gen_length
        cfg.dllm_block_length = self.block_length

    @property
    def n_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def banned(self) -> list[int]:
        """Tokens the policy never emits (mask and padding)."""
        return [self.mask_id, self.pad_id]

    def copy(self, dtype: torch.dtype | None = None) -> DLLM:
        """A deep copy of the network (the frozen reference of a trainer), optionally cast."""
        import copy

        net = copy.deepcopy(self.net)
        if dtype is not None:
            net = net.to(dtype)
        return DLLM(net, self.tokenizer, self.gen_length, self.block_length)

    def with_net(self, net) -> DLLM:
        """This model's tokenizer and geometry around another module (a DDP wrapper of
        ``self.net``, or ``None`` for a shell that cannot run): how a loss runs the module the
        trainer hands it, never a raw network it closed over."""
        import copy

        other = copy.copy(self)
        other.net = net
        return other

    def eval(self) -> DLLM:
        self.net.eval()
        return self

    def logits(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=ids, position_ids=pos, attention_mask=mask[:, None]).logits

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt ids (B, P) and their real-token mask."""
        enc = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), self.pad_id, dtype=torch.long)
        real = torch.zeros(len(enc), width, dtype=torch.bool)
        for i, e in enumerate(enc):
            if e:
                ids[i, width - len(e) :] = torch.tensor(e)
                real[i, width - len(e) :] = True
        return ids, real

    def encode_answers(self, answers: list[str]) -> torch.Tensor:
        """Answer ids (B, gen_length): the answer, then end-of-turn tokens to the full length."""
        out = torch.full((len(answers), self.gen_length), self.eos_id, dtype=torch.long)
        for i, a in enumerate(answers):
            e = self.tokenizer(a, add_special_tokens=False)["input_ids"]
            if len(e) >= self.gen_length:
                raise ValueError(
                    f"answer {a!r} has {len(e)} tokens; gen_length {self.gen_length} needs "
                    "room for at least one end token"
                )
            out[i, : len(e)] = torch.tensor(e)
        return out

    def decode(self, answer_ids: torch.Tensor) -> list[str]:
        """Answer texts, cut at the first end-of-turn token."""
        out = []
        for row in answer_ids.tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            out.append(self.tokenizer.decode([t for t in row if t not in self.banned]))
        return out


def make_dllm(
    tokenizer: PreTrainedTokenizerFast,
    size: str = "llama-small",
    gen_length: int = 24,
    block_length: int = 8,
    seed: int = 0,
    max_positions: int = 256,
) -> DLLM:
    """A randomly initialised block-diffusion LM of a named tiny size."""
    net = build_model(
        size,
        vocab_size=len(tokenizer),
        seed=seed,
        max_position_embeddings=max_positions,
        attn_implementation="sdpa",
    )
    return DLLM(net, tokenizer, gen_length, block_length)


def layout(
    prompt_ids: torch.Tensor,
    prompt_real: torch.Tensor,
    clean: torch.Tensor | None,
    noised: torch.Tensor | None,
    block_length: int,
    noised_first_block: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, position ids and the (B, S, S) boolean attention mask of one layout.

    ``clean`` holds answer blocks 0.. in the clear; ``noised`` holds blocks
    ``noised_first_block``.. in some partially masked state. A noised token at answer offset j
    gets the same position id as the clean token at j. Query q may attend key k iff k is a
    real token and one of: k is in the prompt (q not padding); both clean and
    block(k) <= block(q); k clean, q noised and block(k) < block(q); both noised in the same
    block. Padding attends only to itself.
    """
    B, P = prompt_ids.shape
    dev = prompt_ids.device
    parts, kinds, blocks, offs = [prompt_ids], [], [], []
    kinds.append(torch.where(prompt_real, PROMPT, PAD_KIND))
    blocks.append(torch.full((B, P), -1, device=dev))
    n_prompt = prompt_real.sum(1, keepdim=True)
    ppos = (torch.cumsum(prompt_real.long(), 1) - 1).clamp(min=0)
    offs.append(ppos)
    for seg, kind, first in ((clean, CLEAN, 0), (noised, NOISED, noised_first_block)):
        if seg is None:
            continue
        n = seg.shape[1]
        j = torch.arange(n, device=dev) + first * block_length
        parts.append(seg)
        kinds.append(torch.full((B, n), kind, device=dev))
        blocks.append((j // block_length).expand(B, n))
        offs.append(n_prompt + j)
    ids = torch.cat(parts, 1)
    kind = torch.cat(kinds, 1)
    blk = torch.cat(blocks, 1)
    pos = torch.cat(offs, 1)
    kq, kk = kind[:, :, None], kind[:, None, :]
    bq, bk = blk[:, :, None], blk[:, None, :]
    allowed = (
        ((kk == PROMPT) & (kq != PAD_KIND))
        | ((kk == CLEAN) & (kq == CLEAN) & (bk <= bq))
        | ((kk == CLEAN) & (kq == NOISED) & (bk < bq))
        | ((kk == NOISED) & (kq == NOISED) & (bk == bq))
    )
    eye = torch.eye(ids.shape[1], dtype=torch.bool, device=dev)
    return ids, pos, allowed | eye


def token_logprobs(logits: torch.Tensor, banned: list[int]) -> torch.Tensor:
    """log μ(· | state): log-softmax with the banned tokens (mask, padding) removed."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    logits[..., banned] = -math.inf
    return F.log_softmax(logits, dim=-1)


def packed_logprobs(
    model: DLLM,
    prompt_ids: torch.Tensor,
    prompt_real: torch.Tensor,
    answer: torch.Tensor,
    noised: torch.Tensor,
) -> torch.Tensor:
    """log μ(answer_j | state of j's block) for every answer position, in ONE forward.

    ``noised`` (B, L) is each block's state (mask tokens where hidden); ``answer`` (B, L) the
    clean answer the noised blocks condition on (blocks before their own) and are scored
    against. Returns (B, L) log-probabilities of the ``answer`` tokens.
    """
    ids, pos, mask = layout(prompt_ids, prompt_real, answer, noised, model.block_length)
    L = answer.shape[1]
    logits = model.logits(ids, pos, mask)[:, -L:]
    lp = token_logprobs(logits, model.banned)
    return lp.gather(-1, answer[..., None]).squeeze(-1)


def diffusion_loss(
    model: DLLM,
    prompt_ids: torch.Tensor,
    prompt_real: torch.Tensor,
    answer: torch.Tensor,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
) -> torch.Tensor:
    """LLaDA's masked-diffusion loss per block, in the packed layout.

    Each block draws t ~ U(eps, 1) and masks each of its tokens with probability t; the loss is
    (1/t)-weighted cross-entropy on the masked tokens, summed over the answer and divided by
    its length (an upper bound on the answer's negative log-likelihood per token).
    """
    B, L = answer.shape
    nb = L // model.block_length
    t = eps + (1 - eps) * torch.rand(B, nb, generator=generator)
    t_tok = t.repeat_interleave(model.block_length, 1)
    hide = torch.rand(B, L, generator=generator) < t_tok
    noised = torch.where(hide, model.mask_id, answer)
    lp = packed_logprobs(model, prompt_ids, prompt_real, answer, noised)
    return -(lp * hide / t_tok).sum(1).mean() / L


def save_dllm(model: DLLM, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save as an HF checkpoint (config carries the mask id and block geometry), atomically."""
    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        model.net.save_pretrained(tmp)
        model.tokenizer.save_pretrained(tmp)
    return path


def load_dllm(path: str | os.PathLike) -> DLLM:
    """Load a model written by :func:`save_dllm`; other checkpoints are refused by name."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; expected a directory from save_dllm")
    cfg = AutoConfig.from_pretrained(path)
    if getattr(cfg, "mask_token_id", None) is None or not hasattr(cfg, "dllm_block_length"):
        raise CheckpointError(
            f"{path}: not a diffusion LM (config has no mask_token_id/dllm_block_length); "
            "train one with `fmlab dtrpo pretrain`, or turn an HF causal LM into one with "
            "`fmlab dtrpo convert --src DIR --out DIR`"
        )
    net = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    cfg = net.config
    tok = AutoTokenizer.from_pretrained(path)
    return DLLM(net.eval(), tok, cfg.dllm_gen_length, cfg.dllm_block_length)
