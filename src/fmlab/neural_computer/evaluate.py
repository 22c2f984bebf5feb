"""Evaluation of a learned runtime on held-out episodes.

Image metrics (PSNR, SSIM); the terminal read back by exact glyph matching on the known grid
(character accuracy over cells where the truth or the reading is not blank, exact-line
accuracy over non-blank rows, cursor cell); typed-character echo accuracy; the probes of the
scripts (arithmetic answers with and without the answer typed as a comment, a function's
output after D distractors, and whether a redefined function still prints its old output);
action-counterfactual sensitivity (swap the typed key, does the echo follow?); error against
rollout horizon in closed loop (the model's own frames fed back) next to copy-last-frame; and
for the GUI, cursor accuracy (template matching of the sprite) and the counter read back after
n clicks. Ground truth comes from ``truth.jsonl``; the model never saw it.

A second, independent OCR (:class:`RapidReader`: rapidocr's bundled PP-OCR detector and
recognizer on ONNX Runtime, the optional extra ``fmlab[ocr]``) reads a sample of generated
terminal frames too, so that the text accuracy does not rest on our own glyph matcher alone.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import torch

from fmlab.neural_computer.model import NCModel, key_id
from fmlab.neural_computer.render import CHARSET, get_atlas
from fmlab.neural_computer.terminal import Episode
from fmlab.neural_computer.train import episode_actions

__all__ = ["RapidReader", "detect_cursor", "evaluate_gui", "evaluate_terminal", "psnr",
           "rapidocr_missing", "rollout", "ssim", "teacher_pass", "text_accuracy"]  # fmt: skip

_CHARS = set(CHARSET)


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 (or [0, 1]) images."""
    p, t = _unit(pred), _unit(target)
    mse = float(((p - t) ** 2).mean())
    return 100.0 if mse == 0 else float(10 * np.log10(1.0 / mse))


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / 255.0 if a.max(initial=0) > 1.0 else a


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean SSIM (11 x 11 Gaussian window, sigma 1.5, the usual constants) of two grayscale
    images or stacks (..., H, W)."""
    from scipy.ndimage import correlate1d

    p = _unit(pred).astype(np.float32).reshape(-1, *np.shape(pred)[-2:])
    t = _unit(target).astype(np.float32).reshape(-1, *np.shape(target)[-2:])
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2)).astype(np.float32)
    g /= g.sum()

    def blur(x):  # separable Gaussian over the last two axes
        return correlate1d(correlate1d(x, g, axis=-1, mode="reflect"), g, axis=-2, mode="reflect")

    mp, mt = blur(p), blur(t)
    vp, vt, cov = blur(p * p) - mp**2, blur(t * t) - mt**2, blur(p * t) - mp * mt
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp**2 + mt**2 + c1) * (vp + vt + c2))
    return float(s.mean())


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _tensors(model: NCModel, ep: Episode):
    keys, mouse = episode_actions(ep)
    k = torch.from_numpy(keys)
    m = torch.from_numpy(mouse) if model.cfg.mouse else None
    return torch.from_numpy(ep.frames).float() / 255.0, k, m


@torch.inference_mode()
def teacher_pass(model: NCModel, ep: Episode) -> tuple[np.ndarray, torch.Tensor]:
    """One-step (teacher-forced) predictions of frames 1..T-1 from the real frames before
    them, (T - 1, H, W) uint8, and the states h_0..h_{T-2} after each step (T - 1, N, D)."""
    x, k, m = _tensors(model, ep)
    h = model.init_state(1)
    preds, states = [], []
    for t in range(len(x) - 1):
        h, p = model.step(h, x[t : t + 1], k[t : t + 1], None if m is None else m[t : t + 1])
        preds.append(p[0])
        states.append(h[0])
    return _to_u8(torch.stack(preds)), torch.stack(states)


@torch.inference_mode()
def rollout(
    model: NCModel,
    ep: Episode,
    starts: list[int],
    horizon: int,
    states: torch.Tensor,
    first: np.ndarray,
) -> np.ndarray:
    """Closed loop from each start s: the teacher-forced prediction of frame s + 1, then the
    model's own frames fed back with the logged actions, up to frame s + horizon.
    Returns (S, horizon, H, W) uint8."""
    _x, k, m = _tensors(model, ep)
    s = torch.tensor(starts)
    h = states[s]  # (S, N, D): state after consuming frame s and action s
    cur = torch.from_numpy(first[s.numpy()]).float() / 255.0  # predictions of frames s + 1
    out = [cur]
    for j in range(1, horizon):
        t = s + j
        h, cur = model.step(h, cur, k[t], None if m is None else m[t])
        cur = cur.clamp(0, 1)
        out.append(cur)
    return _to_u8(torch.stack(out, 1))


def _truth_lines(tr: dict, rows: int, cols: int) -> list[str]:
    lines = [("".join(c if c in _CHARS else "?" for c in r) + " " * cols)[:cols]
             for r in tr["screen"][:rows]]  # fmt: skip
    return lines + [" " * cols] * (rows - len(lines))


def _text_scores(lines: list[str], truth: list[str]) -> tuple[int, int, int, int]:
    """(matching cells, scored cells, matching lines, scored lines)."""
    mc = nc = ml = nl = 0
    for a, b in zip(lines, truth, strict=False):
        for ca, cb in zip(a, b, strict=False):
            if ca != " " or cb != " ":
                nc += 1
                mc += ca == cb
        if a.strip() or b.strip():
            nl += 1
            ml += a.rstrip() == b.rstrip()
    return mc, nc, ml, nl


class _TextTally:
    def __init__(self):
        self.c = np.zeros(4, dtype=np.int64)
        self.cursor = [0, 0]

    def add(self, r, tr: dict, rows: int, cols: int) -> None:
        self.c += _text_scores(r.lines, _truth_lines(tr, rows, cols))
        want = tuple(tr["cursor"]) if tr["cursor"] else None
        self.cursor[0] += r.cursor == want
        self.cursor[1] += 1

    def result(self, prefix: str = "") -> dict:
        mc, nc, ml, nl = self.c
        return {f"{prefix}char_acc": mc / max(nc, 1), f"{prefix}line_acc": ml / max(nl, 1),
                f"{prefix}cursor_acc": self.cursor[0] / max(self.cursor[1], 1)}  # fmt: skip


def _probe_frames(ep: Episode) -> list[tuple[int, dict]]:
    """(t, probe) for every probed step: t is the frame after which its Enter was pressed
    (every step ends in exactly one Enter or Ctrl-C, the supervisor's excepted)."""
    out, si = [], 0
    steps = ep.meta.get("steps", [])
    for t, a in enumerate(ep.actions):
        if a.get("key") in ("Enter", "Ctrl-C") and a.get("by") != "supervisor" and si < len(steps):
            if steps[si]["probe"].get("expect") is not None and t + 1 < len(ep.frames):
                out.append((t, steps[si]["probe"]))
            si += 1
    return out


def _output_row(tr: dict, expect: str) -> int | None:
    """The row holding a command's output in the frame after its Enter (the row above the new
    prompt, as the recorder's truth shows it)."""
    rows = [r.rstrip() for r in tr["screen"]]
    cy = tr["cursor"][1] if tr["cursor"] else len(rows)
    for r in range(min(cy, len(rows)) - 1, -1, -1):
        if rows[r] == expect:
            return r
    return None


# ---- a second, independent OCR: rapidocr --------------------------------------------------

_OCR_FIX = "pip install 'fmlab[ocr]' (make setup installs it)"


def rapidocr_missing() -> str | None:
    """Why rapidocr cannot be used here (``None`` when it can)."""
    try:
        import onnxruntime  # noqa: F401
        import rapidocr  # noqa: F401
    except ImportError as e:
        return f"rapidocr is not installed ({e}): {_OCR_FIX}"
    return None


class RapidReader:
    """rapidocr (PP-OCR text detection + recognition on ONNX Runtime, with the models inside
    its wheel: nothing is fetched at run time) as an OCR independent of the glyph atlas.

    A frame is upscaled ``scale`` times (nearest neighbour) and read whole; each detected text
    box goes to the grid row of its vertical centre and the boxes of a row are joined left to
    right. Characters outside the terminal's alphabet (printable ASCII) are dropped from the
    reading, as the terminal cannot show them (the cursor block is often read as one).
    Readings are cached by the frame's bytes, so the real frames that every arm shares are
    read once per process."""

    def __init__(self, scale: int = 2, threads: int | None = None, cache_size: int = 50_000):
        missing = rapidocr_missing()
        if missing:
            raise ImportError(missing)
        from rapidocr import RapidOCR

        self.scale = scale
        self.engine = RapidOCR(params={
            "Global.log_level": "warning",
            "Global.use_cls": False,  # terminal text is never rotated
            "Det.limit_side_len": 192,  # read the (upscaled) frame at its own size
            "EngineConfig.onnxruntime.intra_op_num_threads": threads or torch.get_num_threads(),
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })  # fmt: skip
        self._cache: dict[bytes, list[str]] = {}
        self._cache_size = cache_size

    def read(self, frame: np.ndarray, rows: int, cols: int, cell_h: int = 12) -> list[str]:
        """The text of each of ``rows`` grid rows of a uint8 terminal frame (spaces between
        boxes; a row's spacing is not meaningful, see :func:`text_accuracy`)."""
        f = np.ascontiguousarray(frame, dtype=np.uint8)
        key = hashlib.sha1(f.tobytes() + f"{f.shape}{rows}".encode()).digest()
        if key in self._cache:
            return self._cache[key]
        big = np.kron(f, np.ones((self.scale, self.scale), dtype=np.uint8))
        out = self.engine(np.stack([big] * 3, -1), use_cls=False)
        parts: list[list[tuple[float, str]]] = [[] for _ in range(rows)]
        if out.boxes is not None:
            for box, txt in zip(out.boxes, out.txts, strict=True):
                r = int(np.mean(box[:, 1]) // (cell_h * self.scale))
                if 0 <= r < rows:
                    parts[r].append((float(np.min(box[:, 0])), txt))
        lines = [" ".join("".join(c for c in t if c in _CHARS) for _, t in sorted(p))
                 for p in parts]  # fmt: skip
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = lines
        return lines


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def text_accuracy(lines: list[str], truth: list[str]) -> tuple[int, int, int, int]:
    """Score a row-wise reading that does not keep the grid (a free OCR) against the truth:
    whitespace is removed from both (OCR spacing is unreliable; the glyph matcher does not
    score blank cells either), then per row with text in either, (max length − edit
    distance) matched characters out of the max length, and exact rows.
    Returns (matched chars, scored chars, exact rows, scored rows)."""
    mc = nc = ml = nl = 0
    for a, b in zip(lines, truth, strict=False):
        a, b = "".join(a.split()), "".join(b.split())
        if a or b:
            n = max(len(a), len(b))
            mc += n - _levenshtein(a, b)
            nc += n
            ml += a == b
            nl += 1
    return mc, nc, ml, nl


_READER: list[RapidReader] = []


def _rapid_reader() -> RapidReader:
    if not _READER:
        _READER.append(RapidReader())
    return _READER[0]


def evaluate_terminal(
    model: NCModel,
    episodes: list[Episode],
    horizons: tuple[int, ...] = (1, 2, 4, 8, 16),
    stride: int = 8,
    ssim_frames: int = 24,
    rapidocr_frames: int | None = None,
) -> dict:
    """Every terminal metric on ``episodes`` for ``model`` and for copy-last-frame.

    Returns flat metrics (one-step: ``char_acc``, ``line_acc``, ``cursor_acc``, ``echo_acc``,
    ``psnr``, ``ssim``; ``copy_*`` for the baseline; ``cf_follow`` and ``cf_pixel_change``;
    probe accuracies ``arith_acc_with_answer``, ``arith_acc_without_answer``, ``reuse_acc``,
    ``update_acc``, ``update_leak``; SSIM on ``ssim_frames`` evenly spaced frames per episode),
    closed-loop curves ``horizon_char_acc`` /
    ``horizon_copy_char_acc`` (lists over ``horizons``) and ``per_episode_char_acc``.

    The second OCR (rapidocr, :class:`RapidReader`) reads ``rapidocr_frames`` evenly spaced
    one-step frames per episode (``None``: 4 when rapidocr is installed, else 0): the model's
    (``rapidocr_char_acc``, ``rapidocr_line_acc``), copy-last-frame's (``copy_rapidocr_*``) and
    the real target frames (``real_rapidocr_*``: that OCR's own ceiling on clean frames), scored
    by :func:`text_accuracy`; ``rapidocr_frames`` counts the frames read."""
    if rapidocr_frames is None:
        rapidocr_frames = 0 if rapidocr_missing() else 4
    reader = _rapid_reader() if rapidocr_frames > 0 else None
    ocr2 = np.zeros((3, 4), dtype=np.int64)  # (model | copy | real, text_accuracy counts)
    per_ep_ocr2 = []
    atlas = get_atlas()
    tally, copy_tally = _TextTally(), _TextTally()
    echo = [0, 0]
    cf_follow, cf_change = [0, 0], []
    probes: dict[str, list[float]] = defaultdict(list)
    H = max(horizons)
    hor = np.zeros((2, H, 2))  # (model | copy, horizon step, [matches, scored])
    psnrs, ssims, copy_psnrs, per_ep, per_ep_echo = [], [], [], [], []
    for ep in episodes:
        echo_before = list(echo)
        rows, cols = ep.meta["rows"], ep.meta["cols"]
        preds, states = teacher_pass(model, ep)
        reads = [atlas.read(p, rows, cols) for p in preds]
        real = [atlas.read(f, rows, cols) for f in ep.frames]
        ep_t = _TextTally()
        for t in range(len(preds)):
            tr = ep.truth[t + 1]
            tally.add(reads[t], tr, rows, cols)
            ep_t.add(reads[t], tr, rows, cols)
            copy_tally.add(real[t], tr, rows, cols)
        per_ep.append(ep_t.result()["char_acc"])
        psnrs.append(np.mean([psnr(p, f) for p, f in zip(preds, ep.frames[1:], strict=False)]))
        copy_psnrs.append(
            np.mean([psnr(p, f) for p, f in zip(ep.frames[:-1], ep.frames[1:], strict=False)])
        )
        sub = np.linspace(0, len(preds) - 1, min(len(preds), ssim_frames)).round().astype(int)
        ssims.append(ssim(preds[sub], ep.frames[1:][sub]))
        if reader is not None:  # the independent OCR on a sample of one-step frames
            ep_o = np.zeros(4, dtype=np.int64)
            for t in np.linspace(0, len(preds) - 1, min(len(preds), rapidocr_frames)).round():
                t = int(t)
                tr = _truth_lines(ep.truth[t + 1], rows, cols)
                for i, f in enumerate((preds[t], ep.frames[t], ep.frames[t + 1])):
                    got = text_accuracy(reader.read(f, rows, cols, atlas.cell_h), tr)
                    ocr2[i] += got
                    if i == 0:
                        ep_o += got
            per_ep_ocr2.append(float(ep_o[0] / max(ep_o[1], 1)))
        # echo of typed characters, and the counterfactual key
        events = []
        for t, a in enumerate(ep.actions[:-1]):
            k, cur = a.get("key"), ep.truth[t]["cursor"]
            if k is None or len(k) != 1 or k == " " or cur is None:
                continue
            cx, cy = cur
            row = ep.truth[t + 1]["screen"][cy] if cy < len(ep.truth[t + 1]["screen"]) else ""
            if cx < len(row) and row[cx] == k:
                got = reads[t].lines[cy][cx]
                echo[0] += got == k
                echo[1] += 1
                events.append((t, cx, cy, k))
        n_ev = echo[1] - echo_before[1]
        per_ep_echo.append((echo[0] - echo_before[0]) / n_ev if n_ev else float("nan"))
        if events:
            ts = [e[0] for e in events]
            alt = [chr((ord(e[3]) - 33 + 47) % 94 + 33) for e in events]  # another printable key
            h_prev = torch.cat([model.init_state(1), states[:-1]])[ts]
            x = torch.from_numpy(ep.frames[ts]).float() / 255.0
            with torch.inference_mode():
                _, p = model.step(h_prev, x, torch.tensor([key_id(c) for c in alt]))
            p = _to_u8(p)
            for i, (t, cx, cy, _k) in enumerate(events):
                cf_follow[0] += atlas.read(p[i], rows, cols).lines[cy][cx] == alt[i]
                cf_follow[1] += 1
                cf_change.append(float(np.abs(p[i].astype(int) - preds[t].astype(int)).mean()))
        # probes, read one step after the Enter
        for t, pr in _probe_frames(ep):
            row = _output_row(ep.truth[t + 1], pr["expect"])
            if row is None:
                continue
            got = reads[t].lines[row].rstrip()
            kind = pr.get("kind", "other")
            if kind == "arith":
                with_a = "with_answer" if pr.get("answer_in_prompt") else "without_answer"
                probes[f"arith_acc_{with_a}"].append(float(got == pr["expect"]))
            elif kind == "reuse":
                probes["reuse_acc"].append(float(got == pr["expect"]))
            elif kind == "update":
                probes["update_acc"].append(float(got == pr["expect"]))
                probes["update_leak"].append(float(got == pr.get("old")))
            else:
                probes["output_acc"].append(float(got == pr["expect"]))
        # closed loop vs horizon
        starts = list(range(0, len(ep.frames) - H, stride))
        if starts:
            roll = rollout(model, ep, starts, H, states, preds)
            for i, s in enumerate(starts):
                for j in range(H):
                    tr = _truth_lines(ep.truth[s + 1 + j], rows, cols)
                    got = (atlas.read(roll[i, j], rows, cols) if j else reads[s]), real[s]
                    for a_i, r in enumerate(got):
                        hor[a_i, j] += _text_scores(r.lines, tr)[:2]
    res = {**tally.result(), **copy_tally.result("copy_")}
    res.update(
        echo_acc=echo[0] / max(echo[1], 1), echo_events=echo[1],
        psnr=float(np.mean(psnrs)), copy_psnr=float(np.mean(copy_psnrs)), ssim=float(np.mean(ssims)),
        cf_follow=cf_follow[0] / max(cf_follow[1], 1),
        cf_pixel_change=float(np.mean(cf_change)) if cf_change else 0.0,
    )  # fmt: skip
    if reader is not None:
        for i, prefix in enumerate(("", "copy_", "real_")):
            mc, nc, ml, nl = ocr2[i]
            res[f"{prefix}rapidocr_char_acc"] = float(mc / max(nc, 1))
            res[f"{prefix}rapidocr_line_acc"] = float(ml / max(nl, 1))
        res["rapidocr_frames"] = sum(min(len(e.frames) - 1, rapidocr_frames) for e in episodes)
        res["per_episode_rapidocr_char_acc"] = per_ep_ocr2
    for k, v in probes.items():
        res[k] = float(np.mean(v))
        res[f"{k}_n"] = len(v)
    acc = hor[..., 0] / np.maximum(hor[..., 1], 1)
    res["horizons"] = list(horizons)
    res["horizon_char_acc"] = [float(acc[0, h - 1]) for h in horizons]
    res["horizon_copy_char_acc"] = [float(acc[1, h - 1]) for h in horizons]
    res["per_episode_char_acc"] = [float(v) for v in per_ep]
    res["per_episode_echo_acc"] = [float(v) for v in per_ep_echo]
    return res


def detect_cursor(frame: np.ndarray) -> tuple[int, int]:
    """(x, y) of the GUI cursor sprite in a frame: the position whose sprite footprint best
    matches (least squared error) the sprite's fill and outline."""
    from fmlab.neural_computer.gui import CURSOR

    f = _unit(frame).astype(np.float32)
    h, w = CURSOR.shape
    pad = np.pad(f, ((0, h), (0, w)))
    win = np.lib.stride_tricks.sliding_window_view(pad, (h, w))[: f.shape[0], : f.shape[1]]
    tmpl = np.where(CURSOR == 1, 1.0, 0.0).astype(np.float32)
    on = (CURSOR > 0).astype(np.float32)
    err = (((win - tmpl) ** 2) * on).sum((-1, -2))
    y, x = np.unravel_index(int(err.argmin()), err.shape)
    return int(x), int(y)


def _read_counter(frame: np.ndarray, atlas) -> int | None:
    from fmlab.neural_computer.gui import COUNTER, GUI_COLS, GUI_ROWS

    line = atlas.read(frame, GUI_ROWS, GUI_COLS).lines[COUNTER[1]][COUNTER[0] : COUNTER[2]]
    try:
        return int(line.replace("N=", "").strip())
    except ValueError:
        return None


def evaluate_gui(model: NCModel, episodes: list[Episode], tol: int = 2) -> dict:
    """GUI metrics, one-step (teacher-forced): ``cursor_acc`` (sprite found within ``tol``
    pixels of the truth), ``counter_acc`` (counter read back after each click that changes it,
    and ``counter_acc_by_n``: by the number of counter clicks so far, bins 1-2, 3-5, 6+),
    ``psnr``, ``ssim``, with ``copy_*`` for copy-last-frame."""
    atlas = get_atlas()
    cur, copy_cur, cnt, copy_cnt = [], [], [], []
    by_n: dict[str, list[float]] = defaultdict(list)
    psnrs, copy_psnrs, ssims, per_ep = [], [], [], []
    for ep in episodes:
        preds, _ = teacher_pass(model, ep)
        ep_cur = []
        clicks = 0
        for t in range(len(preds)):
            tr = ep.truth[t + 1]
            x, y = detect_cursor(preds[t])
            ok = max(abs(x - tr["cursor"][0]), abs(y - tr["cursor"][1])) <= tol
            cur.append(ok)
            ep_cur.append(ok)
            cx, cy = detect_cursor(ep.frames[t])
            copy_cur.append(max(abs(cx - tr["cursor"][0]), abs(cy - tr["cursor"][1])) <= tol)
            if set(tr["events"]) & {"+1", "-1", "reset"}:
                clicks += 1
                ok_c = _read_counter(preds[t], atlas) == tr["counter"]
                cnt.append(ok_c)
                copy_cnt.append(_read_counter(ep.frames[t], atlas) == tr["counter"])
                by_n["1-2" if clicks <= 2 else "3-5" if clicks <= 5 else "6+"].append(float(ok_c))
        per_ep.append(float(np.mean(ep_cur)))
        psnrs.append(np.mean([psnr(p, f) for p, f in zip(preds, ep.frames[1:], strict=False)]))
        copy_psnrs.append(
            np.mean([psnr(p, f) for p, f in zip(ep.frames[:-1], ep.frames[1:], strict=False)])
        )
        sub = np.linspace(0, len(preds) - 1, min(len(preds), 24)).round().astype(int)
        ssims.append(ssim(preds[sub], ep.frames[1:][sub]))
    return {
        "cursor_acc": float(np.mean(cur)), "copy_cursor_acc": float(np.mean(copy_cur)),
        "counter_acc": float(np.mean(cnt)) if cnt else float("nan"),
        "copy_counter_acc": float(np.mean(copy_cnt)) if copy_cnt else float("nan"),
        "counter_events": len(cnt),
        "counter_acc_by_n": {k: float(np.mean(v)) for k, v in sorted(by_n.items())},
        "psnr": float(np.mean(psnrs)), "copy_psnr": float(np.mean(copy_psnrs)),
        "ssim": float(np.mean(ssims)), "per_episode_cursor_acc": per_ep,
    }  # fmt: skip
