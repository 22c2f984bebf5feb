"""The learned runtime: h_t = F(h_{t-1}, x_t, u_t), x_{t+1} = G(h_t).

``x_t`` is the current frame cut into patches (one or more glyph cells each), ``u_t`` the action
(a key and, for the GUI, the mouse position and button), ``h_t`` a per-patch recurrent state
(gated update). F is a small pre-norm transformer over the patch tokens; G a linear patch
decoder that predicts the next frame as a residual on the current one. Actions enter either
once at the input (``injection="input"``: the action embedding is added to every token before
the first block) or inside every block (``injection="block"``: adaptive LayerNorm scale and
shift from the action before each attention and MLP), the two ways the paper compares. With
``cursor_mask`` the GUI action's (x, y) is also drawn as the cursor sprite's mask, an extra
input channel, instead of reaching the model only as numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["KEYS", "NCConfig", "NCModel", "count_params", "key_id"]

SPECIAL_KEYS = ("Enter", "Backspace", "Left", "Right", "Up", "Down", "Ctrl-C")
KEYS: tuple[str | None, ...] = (None, *(chr(c) for c in range(32, 127)), *SPECIAL_KEYS)
_KEY_INDEX = {k: i for i, k in enumerate(KEYS)}


def key_id(key: str | None) -> int:
    """Index of a key in :data:`KEYS` (0: no key). Unknown keys are an error."""
    try:
        return _KEY_INDEX[key]
    except KeyError:
        raise ValueError(f"unknown key {key!r}; keys are None, one printable ASCII character, "
                         f"or one of {', '.join(SPECIAL_KEYS)}") from None  # fmt: skip


@dataclass
class NCConfig:
    """Model shape and conditioning. Serializable; unknown keys are errors (``from_dict``)."""

    height: int = 120
    width: int = 240
    patch_h: int = 12
    patch_w: int = 12
    dim: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    injection: str = "block"  # "input" | "block"
    mouse: bool = False  # the action carries (x, y, click) (GUI)
    cursor_mask: bool = False  # draw the action's (x, y) as a cursor mask channel (GUI)
    change_weight: float = 4.0  # extra loss weight on pixels that change between frames

    def __post_init__(self):
        if self.injection not in ("input", "block"):
            raise ValueError(f"injection={self.injection!r}: choose input or block")
        if self.height % self.patch_h or self.width % self.patch_w:
            raise ValueError(f"frame {self.width}x{self.height} is not a whole number of "
                             f"{self.patch_w}x{self.patch_h} patches")  # fmt: skip
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be a multiple of heads {self.heads}")
        if self.cursor_mask and not self.mouse:
            raise ValueError("cursor_mask needs mouse=True (it draws the action's x, y)")

    @property
    def grid(self) -> tuple[int, int]:
        return self.height // self.patch_h, self.width // self.patch_w

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NCConfig:
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"unknown NCConfig keys {bad}; valid: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The GUI cursor sprite's footprint, relative to its hot spot (kept here so the model does not
# depend on the environment module; a test checks it equals fmlab.neural_computer.gui.CURSOR).
_SPRITE = [
    "10000", "11000", "11100", "11110", "11111", "11110", "11111", "00011",
]  # fmt: skip


class _Block(nn.Module):
    def __init__(self, cfg: NCConfig):
        super().__init__()
        d = cfg.dim
        self.heads = cfg.heads
        self.n1 = nn.LayerNorm(d, elementwise_affine=cfg.injection == "input")
        self.n2 = nn.LayerNorm(d, elementwise_affine=cfg.injection == "input")
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * d, d))  # fmt: skip
        self.film = nn.Linear(d, 4 * d) if cfg.injection == "block" else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape  # (B, N, D); a: (B, D)
        h1, h2 = self.n1(x), self.n2(x)
        if self.film is not None:
            s1, b1, s2, b2 = self.film(a)[:, None].chunk(4, dim=-1)
            h1 = h1 * (1 + s1) + b1
        q, k, v = self.qkv(h1).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads)
        x = x + self.proj(att.transpose(1, 2).reshape(B, N, D))
        h2 = self.n2(x)
        if self.film is not None:
            h2 = h2 * (1 + s2) + b2
        return x + self.mlp(h2)


class NCModel(nn.Module):
    """Action-conditioned next-frame model with a recurrent per-patch state."""

    def __init__(self, cfg: NCConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        gh, gw = cfg.grid
        self.n_tokens = gh * gw
        pix = cfg.patch_h * cfg.patch_w
        self.patch_in = nn.Linear(pix * (2 if cfg.cursor_mask else 1), d)
        self.pos = nn.Parameter(torch.randn(self.n_tokens, d) * 0.02)
        self.state_in = nn.Linear(d, d)
        self.key_emb = nn.Embedding(len(KEYS), d)
        self.mouse_in = (
            nn.Sequential(nn.Linear(33, d), nn.GELU(), nn.Linear(d, d)) if cfg.mouse else None
        )
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.gate = nn.Linear(d, 2 * d)
        self.out_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, pix)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)  # start as copy-last-frame
        sprite = [(r, c) for r, row in enumerate(_SPRITE) for c, v in enumerate(row) if v == "1"]
        self.register_buffer("_sprite", torch.tensor(sprite, dtype=torch.long), persistent=False)

    # ---- pieces --------------------------------------------------------------------------
    def patchify(self, img: torch.Tensor) -> torch.Tensor:
        """(B, H, W) -> (B, N, ph * pw)."""
        B = img.shape[0]
        gh, gw = self.cfg.grid
        ph, pw = self.cfg.patch_h, self.cfg.patch_w
        return img.reshape(B, gh, ph, gw, pw).permute(0, 1, 3, 2, 4).reshape(B, gh * gw, ph * pw)

    def unpatchify(self, p: torch.Tensor) -> torch.Tensor:
        """(B, N, ph * pw) -> (B, H, W)."""
        B = p.shape[0]
        gh, gw = self.cfg.grid
        ph, pw = self.cfg.patch_h, self.cfg.patch_w
        return p.reshape(B, gh, gw, ph, pw).permute(0, 1, 3, 2, 4).reshape(B, gh * ph, gw * pw)

    def cursor_masks(self, mouse: torch.Tensor) -> torch.Tensor:
        """(B, 3) pixel (x, y, click) -> (B, H, W) masks of the cursor sprite at (x, y)."""
        B = mouse.shape[0]
        H, W = self.cfg.height, self.cfg.width
        x = mouse[:, 0].round().long().clamp(0, W - 1)
        y = mouse[:, 1].round().long().clamp(0, H - 1)
        ys = y[:, None] + self._sprite[None, :, 0]
        xs = x[:, None] + self._sprite[None, :, 1]
        ok = (ys < H) & (xs < W)
        m = torch.zeros(B, H * W, device=mouse.device)
        b = torch.arange(B, device=mouse.device)[:, None].expand_as(ys)
        m[b[ok], (ys * W + xs)[ok]] = 1.0
        return m.view(B, H, W)

    def action(self, key: torch.Tensor, mouse: torch.Tensor | None) -> torch.Tensor:
        """(B,) key ids and (B, 3) pixel mouse -> (B, D) action embedding."""
        a = self.key_emb(key)
        if self.mouse_in is not None:
            if mouse is None:
                raise ValueError("this model takes mouse actions (x, y, click)")
            xy = mouse[:, :2] / mouse.new_tensor([self.cfg.width, self.cfg.height])
            freqs = 2.0 ** torch.arange(8, device=mouse.device) * math.pi
            ang = xy[:, :, None] * freqs  # (B, 2, 8)
            feats = torch.cat([ang.sin().flatten(1), ang.cos().flatten(1), mouse[:, 2:3]], 1)
            a = a + self.mouse_in(feats)
        return a

    # ---- the runtime ---------------------------------------------------------------------
    def init_state(self, batch: int, device=None) -> torch.Tensor:
        return torch.zeros(batch, self.n_tokens, self.cfg.dim, device=device)

    def step(
        self,
        h: torch.Tensor,
        frame: torch.Tensor,
        key: torch.Tensor,
        mouse: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One tick. h (B, N, D), frame (B, H, W) in [0, 1], key (B,), mouse (B, 3) pixels ->
        (h_t, predicted next frame (B, H, W), not clamped)."""
        xp = self.patchify(frame)  # (B, N, P)
        inp = xp
        if self.cfg.cursor_mask:
            inp = torch.cat([xp, self.patchify(self.cursor_masks(mouse))], -1)
        a = self.action(key, mouse)  # (B, D)
        z = self.patch_in(inp) + self.pos + self.state_in(h)
        if self.cfg.injection == "input":
            z = z + a[:, None]
        for blk in self.blocks:
            z = blk(z, a)
        g, cand = self.gate(z).chunk(2, dim=-1)
        g = torch.sigmoid(g)
        h = (1 - g) * h + g * torch.tanh(cand)
        pred = xp + self.head(self.out_norm(h))  # residual on the current frame
        return h, self.unpatchify(pred)

    def forward(
        self,
        frames: torch.Tensor,
        keys: torch.Tensor,
        mouse: torch.Tensor | None = None,
        self_feed: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Teacher-forced over a window: frames (B, T + 1, H, W) uint8 or [0, 1] float, keys
        (B, T), mouse (B, T, 3) -> predictions of frames 1..T, (B, T, H, W). With
        ``self_feed`` > 0, each input frame after the first is the model's own (detached)
        previous prediction with that probability (closed-loop exposure during training)."""
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames
        B, T1 = x.shape[:2]
        h = self.init_state(B, x.device)
        preds = []
        cur = x[:, 0]
        for t in range(T1 - 1):
            h, p = self.step(h, cur, keys[:, t], None if mouse is None else mouse[:, t])
            preds.append(p)
            cur = x[:, t + 1]
            if self_feed > 0 and t + 2 < T1:
                use = torch.rand(B, 1, 1, generator=generator) < self_feed
                cur = torch.where(use.to(x.device), p.detach().clamp(0, 1), cur)
        return torch.stack(preds, 1)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
