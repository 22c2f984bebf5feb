"""Latency on the target: measurement, arch features, FLOP/parameter proxies, latency models.

Measured latency is the truth here; the model only guides the search (a peer's predictor
missed its target by a third, HAT #13). :func:`measure_many` times prefill at several lengths
and per-token decode at several context lengths (KV cache) with :func:`timeit_interleaved`:
the models are alternated round-robin at one thread count after warm-up, and the median of
the repeats is kept. :class:`LatencyModel` fits one regressor per target (``prefill@L``,
``decode@C``) on :func:`arch_features`, and reports cross-validated R² and MAPE beside the
FLOP and parameter proxies' rank correlation with the same measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fmlab.core.experiment import timeit_interleaved
from fmlab.flash.arch import BackboneShape, FlashArch

__all__ = [
    "FEATURES",
    "LatencyModel",
    "arch_features",
    "flops_per_token",
    "measure",
    "measure_many",
    "params_nonembedding",
    "parse_target",
    "targets",
]

FEATURES = ("layers", "attn_layers", "ffn_layers", "q_heads", "kv_heads", "ffn_width",
            "q_ctx", "kv_ctx")  # fmt: skip


def targets(prefill_lengths: Sequence[int], decode_contexts: Sequence[int]) -> list[str]:
    """Target names: ``prefill@L`` (seconds for an L-token prompt) and ``decode@C`` (seconds
    per generated token at C tokens of context)."""
    return [f"prefill@{n}" for n in prefill_lengths] + [f"decode@{c}" for c in decode_contexts]


def parse_target(name: str) -> tuple[str, int]:
    kind, _, n = name.partition("@")
    if kind not in ("prefill", "decode") or not n.isdigit():
        raise ValueError(f"target {name!r}: use prefill@L or decode@C, e.g. prefill@256")
    return kind, int(n)


def _ctx(kind: str, n: int, window: int | None) -> float:
    """Mean number of keys a query attends to: over a prefill of n tokens, or at context n."""
    if kind == "decode":
        return float(min(n + 1, window or n + 1))
    w = window or n
    pos = np.arange(1, n + 1)
    return float(np.minimum(pos, w).mean())


def arch_features(arch: FlashArch, shape: BackboneShape, target: str) -> np.ndarray:
    """The arch's per-token work on ``target`` as :data:`FEATURES` (sums over kept layers):
    layer counts, query / KV heads and FFN channels, and heads x attended context."""
    kind, n = parse_target(target)
    f = dict.fromkeys(FEATURES, 0.0)
    f["layers"] = len(arch.layers)
    for (mode, window), width, kv in zip(arch.modes(), arch.ffn, arch.kv_heads, strict=True):
        f["ffn_width"] += width
        f["ffn_layers"] += width > 0
        if mode == "skip":
            continue
        q = kv * shape.q_per_kv
        ctx = _ctx(kind, n, window)
        f["attn_layers"] += 1
        f["q_heads"] += q
        f["kv_heads"] += kv
        f["q_ctx"] += q * ctx
        f["kv_ctx"] += kv * ctx
    return np.array([f[k] for k in FEATURES], dtype=np.float64)


def params_nonembedding(arch: FlashArch, shape: BackboneShape) -> int:
    """Parameters outside the embeddings and LM head (the usual size proxy)."""
    d, hd = shape.hidden_size, shape.head_dim
    total = d  # final norm
    for (mode, _), width, kv in zip(arch.modes(), arch.ffn, arch.kv_heads, strict=True):
        if mode != "skip":
            q = kv * shape.q_per_kv
            total += d * (q + 2 * kv) * hd + q * hd * d + d
        if width:
            total += 3 * d * width + d
    return total


def flops_per_token(arch: FlashArch, shape: BackboneShape, target: str) -> float:
    """Forward FLOPs per token on ``target``: 2 x weight MACs plus attention's QK and AV."""
    kind, n = parse_target(target)
    flops = 2.0 * params_nonembedding(arch, shape)
    for (mode, window), kv in zip(arch.modes(), arch.kv_heads, strict=True):
        if mode != "skip":
            flops += 4.0 * kv * shape.q_per_kv * shape.head_dim * _ctx(kind, n, window)
    return flops


# -- measurement ------------------------------------------------------------------------------


def _ids(vocab: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, n), generator=g)


def _prefill_fn(model, n: int):
    ids = _ids(model.config.vocab_size, n)

    def run():
        model(input_ids=ids, use_cache=False, logits_to_keep=1)

    return run


def _decode_fn(model, context: int, tokens: int):
    """Decode ``tokens`` tokens after a ``context``-token prefill; the cache is cropped back to
    the context after every call, so each timed call starts from the same state."""
    ids = _ids(model.config.vocab_size, context + tokens, seed=1)
    cache = model(input_ids=ids[:, :context], use_cache=True, logits_to_keep=1).cache

    def run():
        for t in range(tokens):
            model(input_ids=ids[:, context + t : context + t + 1], cache=cache, use_cache=True)
        cache.crop(-tokens)  # drop the tokens just decoded

    return run


@torch.inference_mode()
def measure_many(
    models: Mapping[str, torch.nn.Module],
    prefill_lengths: Sequence[int] = (128, 512),
    decode_contexts: Sequence[int] = (128, 2048),
    *,
    threads: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    decode_tokens: int = 4,
) -> dict[str, Any]:
    """Eager latency of every model on every target, the models interleaved per target.

    Returns ``{"latency": {model: {target: median seconds}}, "timing": {target: record},
    "threads", "repeats", "warmup", "decode_tokens"}``; decode targets are seconds per token.
    """
    if threads < 1 or repeats < 1 or decode_tokens < 1:
        raise ValueError("measure needs threads >= 1, repeats >= 1 and decode_tokens >= 1")
    for m in models.values():
        m.eval()

    def fns_for(kind: str, n: int) -> dict[str, Callable[[], Any]]:
        if kind == "prefill":
            return {name: _prefill_fn(m, n) for name, m in models.items()}
        return {name: _decode_fn(m, n, decode_tokens) for name, m in models.items()}

    lat, timing = time_targets(
        list(models), targets(prefill_lengths, decode_contexts), fns_for,
        threads=threads, repeats=repeats, warmup=warmup, decode_tokens=decode_tokens,
    )  # fmt: skip
    return {
        "latency": lat,
        "timing": timing,
        "threads": threads,
        "repeats": repeats,
        "warmup": warmup,
        "decode_tokens": decode_tokens,
    }


def time_targets(
    names: Sequence[str],
    target_names: Sequence[str],
    fns_for: Callable[[str, int], dict[str, Callable[[], Any]]],
    *,
    threads: int,
    repeats: int,
    warmup: int,
    decode_tokens: int,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Per target, the callables ``fns_for(kind, n)`` (one per model name) timed interleaved
    (:func:`timeit_interleaved`): ``({name: {target: median s}}, {target: timing record})``;
    decode targets are seconds per token (each call runs ``decode_tokens`` steps). Shared by
    the eager and the ExecuTorch measurements, so both report the same statistic."""
    lat: dict[str, dict[str, float]] = {name: {} for name in names}
    timing: dict[str, Any] = {}
    for target in target_names:
        kind, n = parse_target(target)
        fns = fns_for(kind, n)
        t = timeit_interleaved(fns, repeats=repeats, threads=threads, warmup=warmup)
        per = decode_tokens if kind == "decode" else 1
        for name in names:
            lat[name][target] = t.median(name) / per
        timing[target] = t.to_record()
        del fns
    return lat, timing


def measure(
    model: torch.nn.Module,
    prefill_lengths: Sequence[int] = (128, 512),
    decode_contexts: Sequence[int] = (128, 2048),
    runtime: str = "eager",
    **kw,
) -> dict[str, float]:
    """``{target: median seconds}`` of one model (decode: seconds per token).

    ``runtime="eager"`` times the PyTorch module (decode with its dynamic KV cache);
    ``runtime="executorch"`` exports it to XNNPACK ``.pte`` programs (one per prefill length,
    a static-KV-cache decode step per context) and times the ExecuTorch runtime
    (:func:`~fmlab.flash.export.measure_pte_many`, which also takes ``max_len``)."""
    if runtime == "eager":
        return measure_many({"model": model}, prefill_lengths, decode_contexts, **kw)["latency"][
            "model"
        ]
    if runtime == "executorch":
        from fmlab.flash.export import measure_pte

        return measure_pte(model, prefill_lengths, decode_contexts, **kw)
    raise ValueError(f"unknown runtime {runtime!r}; choose one of: eager, executorch")


# -- latency model ----------------------------------------------------------------------------


def _regressor(kind: str, seed: int):
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "gp":
        # latency is close to affine in the work features (DotProduct); the RBF term takes
        # what is not (cache effects, per-layer overheads); white noise for timing jitter
        kernel = (DotProduct(sigma_0=1.0) + ConstantKernel(0.1) * RBF(length_scale=3.0,
                  length_scale_bounds=(1e-2, 1e3)) + WhiteKernel(1e-3))  # fmt: skip
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed)
        return make_pipeline(StandardScaler(), gp)
    if kind == "gbr":
        return GradientBoostingRegressor(n_estimators=200, max_depth=3, learning_rate=0.05,
                                         subsample=0.8, random_state=seed)  # fmt: skip
    if kind == "linear":
        return make_pipeline(StandardScaler(), LinearRegression())
    raise ValueError(f"unknown latency model kind {kind!r}; choose one of: gp, gbr, linear")


def _quiet_fit(est, X, y):
    """Fit without sklearn's ConvergenceWarnings (a kernel bound reached is reported by the
    cross-validated R², not by a warning per fold)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


def _r2(y, p) -> float:
    y, p = np.asarray(y), np.asarray(p)
    ss = float(((y - y.mean()) ** 2).sum())
    return float("nan") if ss == 0 else 1.0 - float(((y - p) ** 2).sum()) / ss


def _mape(y, p) -> float:
    y, p = np.asarray(y), np.asarray(p)
    return float(np.mean(np.abs(p - y) / np.abs(y)))


@dataclass
class LatencyModel:
    """One regressor per target on :func:`arch_features` (``kind``: gp | gbr | linear).

    Fitted from measured candidates with :meth:`fit`; serialised as its training data and
    settings (:meth:`to_dict`, refitted on load: no pickles)."""

    shape: BackboneShape
    kind: str = "gp"
    seed: int = 0
    archs: list[FlashArch] = field(default_factory=list)
    latency: list[dict[str, float]] = field(default_factory=list)
    _models: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def targets(self) -> list[str]:
        return sorted(self.latency[0]) if self.latency else []

    def _xy(self, target: str, archs=None, latency=None):
        archs = self.archs if archs is None else archs
        latency = self.latency if latency is None else latency
        X = np.stack([arch_features(a, self.shape, target) for a in archs])
        y = np.array([m[target] for m in latency])
        return X, y

    def fit(self, archs: Sequence[FlashArch], latency: Sequence[Mapping[str, float]]):
        """Fit on ``archs`` and their measured ``{target: seconds}``; returns ``self``."""
        if len(archs) != len(latency) or len(archs) < 3:
            raise ValueError(f"fit needs >= 3 archs with one measurement each, got "
                             f"{len(archs)} archs and {len(latency)} measurements")  # fmt: skip
        self.archs = [FlashArch.from_dict(a.to_dict()) for a in archs]
        self.latency = [dict(m) for m in latency]
        self._models = {}
        for t in self.targets:
            X, y = self._xy(t)
            self._models[t] = _quiet_fit(_regressor(self.kind, self.seed), X, y)
        return self

    def predict(self, arch: FlashArch) -> dict[str, float]:
        """Predicted ``{target: seconds}``."""
        if not self._models:
            raise ValueError("the latency model is not fitted: call fit(...) or load a fitted one")
        return {t: float(m.predict(arch_features(arch, self.shape, t)[None])[0])
                for t, m in self._models.items()}  # fmt: skip

    def cross_validate(self, folds: int = 5) -> dict[str, dict[str, float]]:
        """Out-of-fold R² and MAPE per target (k-fold, shuffled with ``seed``), for this model
        and for a linear fit on FLOPs alone, with the Spearman rank correlation of the FLOP
        and parameter proxies with the measurements."""
        from scipy.stats import spearmanr
        from sklearn.model_selection import KFold, cross_val_predict

        folds = min(folds, len(self.archs))
        kf = KFold(folds, shuffle=True, random_state=self.seed)
        out = {}
        params = [params_nonembedding(a, self.shape) for a in self.archs]
        for t in self.targets:
            X, y = self._xy(t)
            import warnings

            from sklearn.exceptions import ConvergenceWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                p = cross_val_predict(_regressor(self.kind, self.seed), X, y, cv=kf)
            flops = np.array([[flops_per_token(a, self.shape, t)] for a in self.archs])
            pf = cross_val_predict(_regressor("linear", self.seed), flops, y, cv=kf)
            out[t] = {
                "r2": _r2(y, p),
                "mape": _mape(y, p),
                "flops_linear_r2": _r2(y, pf),
                "flops_linear_mape": _mape(y, pf),
                "flops_spearman": float(spearmanr(flops[:, 0], y).statistic),
                "params_spearman": float(spearmanr(params, y).statistic),
                "n": len(y),
                "measured": y.tolist(),
                "predicted": p.tolist(),  # out of fold
            }
        return out

    def evaluate(self, archs: Sequence[FlashArch], latency: Sequence[Mapping[str, float]]):
        """R² and MAPE per target on held-out measured archs (never seen by :meth:`fit`)."""
        out = {}
        for t in self.targets:
            X, y = self._xy(t, archs, latency)
            p = self._models[t].predict(X)
            out[t] = {"r2": _r2(y, p), "mape": _mape(y, p), "n": len(y),
                      "predicted": p.tolist(), "measured": y.tolist()}  # fmt: skip
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape.__dict__,
            "kind": self.kind,
            "seed": self.seed,
            "archs": [a.to_dict() for a in self.archs],
            "latency": self.latency,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyModel:
        for k in ("shape", "kind", "archs", "latency"):
            if k not in d:
                raise ValueError(f"not a latency model file: key {k!r} is missing "
                                 "(write one with `fmlab flash fit`)")  # fmt: skip
        m = cls(BackboneShape(**d["shape"]), d["kind"], int(d.get("seed", 0)))
        return m.fit([FlashArch.from_dict(a) for a in d["archs"]], d["latency"])
