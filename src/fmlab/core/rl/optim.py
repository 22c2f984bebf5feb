"""An AdamW that keeps fp32 master weights for low-precision storage, with fixed update masks.

Storing a model in bfloat16 while the optimizer runs in fp32 is how most RL fine-tuning of
LLMs is done; it is also why a bf16 checkpoint shows entries that "did not change": an fp32
update smaller than half a bf16 ulp rounds away. :class:`MasterAdamW` makes that setting
explicit: each low-precision parameter gets an fp32 master copy, AdamW updates the master, and
the parameter is the master rounded to its own dtype after every step. fp32 parameters are
their own master (no copy).

``storage_dtype`` (e.g. ``torch.bfloat16``) emulates that storage on fp32 parameters: every
parameter gets an fp32 master and, after each step, holds the master rounded to
``storage_dtype`` (kept in its own dtype). The stored values are exactly those of a
bf16-stored model; only the forward/backward arithmetic is fp32 — on a CPU without bf16
instructions, bf16 matmuls run an order of magnitude slower than fp32 ones.

``masks`` (parameter -> bool tensor of its shape) restricts every update, weight decay
included, to the True entries: fixed-mask sparse fine-tuning (e.g. principal-only vs
off-principal masks).

Use it through ``train``'s optimizer hook::

    train(model, data, cfg, optimizers=lambda m, c: [MasterAdamW(m.parameters(), lr=c.lr)])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["MasterAdamW", "master_adamw"]


class MasterAdamW(torch.optim.Optimizer):
    """AdamW on fp32 master copies of (possibly bf16/fp16) parameters, with optional masks."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        masks: Mapping[torch.nn.Parameter, torch.Tensor] | None = None,
        storage_dtype: torch.dtype | None = None,
    ):
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError("MasterAdamW got no trainable parameters")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay})  # fmt: skip
        self.storage_dtype = storage_dtype
        self.masks = {}
        for p, m in (masks or {}).items():
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(f"mask of shape {tuple(m.shape)} for a parameter of shape "
                                 f"{tuple(p.shape)}")  # fmt: skip
            self.masks[p] = m.to(device=p.device, dtype=torch.bool)

    def _master(self, p: torch.Tensor) -> torch.Tensor:
        st = self.state[p]
        if "master" not in st:
            own = p.dtype == torch.float32 and self.storage_dtype is None
            st["master"] = p.detach() if own else p.detach().float().clone()
        return st["master"]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                st = self.state[p]
                master = self._master(p)
                if "exp_avg" not in st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(master)
                    st["exp_avg_sq"] = torch.zeros_like(master)
                mask = self.masks.get(p)
                if mask is not None:
                    g = g * mask
                st["step"] += 1
                t = st["step"]
                st["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (st["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(eps)
                update = (st["exp_avg"] / (1 - b1**t)) / denom
                if wd:
                    update = update + wd * master
                if mask is not None:
                    update = update * mask
                master.add_(update, alpha=-lr)
                if self.storage_dtype is not None:
                    p.copy_(master.to(self.storage_dtype))  # rounded as if stored so
                elif master is not p:
                    p.copy_(master)  # rounded to the stored dtype
        return loss

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """Hyper-parameters and, per parameter index, step, moments and (for low-precision
        parameters) the fp32 master, kept in fp32 (``Optimizer.load_state_dict`` would cast
        them to the parameter's dtype, so this class has its own format)."""
        state = {}
        for i, p in enumerate(self._params()):
            st = self.state.get(p)
            if not st or "exp_avg" not in st:
                continue
            row = {k: st[k] for k in ("step", "exp_avg", "exp_avg_sq")}
            if p.dtype != torch.float32 or self.storage_dtype is not None:
                row["master"] = st["master"]
            state[i] = row
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"master_adamw": 1, "state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        if state_dict.get("master_adamw") != 1:
            raise ValueError(
                "not a MasterAdamW state (was the run started with another optimizer?)"
            )
        if len(state_dict["param_groups"]) != len(self.param_groups):
            raise ValueError("MasterAdamW state has a different number of parameter groups")
        for g, saved in zip(self.param_groups, state_dict["param_groups"], strict=True):
            g.update(saved)
        params = self._params()
        self.state.clear()
        for i, row in state_dict["state"].items():
            p = params[int(i)]
            st = {"step": int(row["step"]),
                  "exp_avg": row["exp_avg"].to(p.device, torch.float32).clone(),
                  "exp_avg_sq": row["exp_avg_sq"].to(p.device, torch.float32).clone()}  # fmt: skip
            st["master"] = (row["master"].to(p.device, torch.float32).clone()
                            if "master" in row else p.detach())  # fmt: skip
            self.state[p] = st


def master_adamw(masks=None, storage_dtype: torch.dtype | None = None):
    """An ``optimizers=`` hook for :func:`fmlab.core.train.train` building :class:`MasterAdamW`
    from the run's ``TrainConfig`` (lr, betas, weight decay)."""

    def build(model, cfg):
        m = {} if masks is None else masks
        return [MasterAdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                            weight_decay=cfg.weight_decay, masks=m,
                            storage_dtype=storage_dtype)]  # fmt: skip

    return build
