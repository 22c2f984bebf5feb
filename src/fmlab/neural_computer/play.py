"""Closed loop: the model IS the computer. A person's keystrokes (and, on the web page, mouse
moves and clicks) go to the model, never to a shell; each tick the model turns its own last
frame and the action into the next frame, which is shown at once with the measured frame rate.

Two front ends: :func:`play_terminal` (in the user's own terminal: raw key input; the generated
frame is shown as the text that exact glyph matching reads from it, with the cursor cell in
reverse video) and :func:`serve_web` (a page on 127.0.0.1 that shows the frames themselves and
sends keys and clicks back).
"""

from __future__ import annotations

import io
import json
import os
import queue
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import torch

from fmlab.neural_computer.model import NCModel, key_id

__all__ = ["PlaySession", "measure_play_fps", "parse_keys", "play_terminal", "serve_web"]

_ESC = {b"\x1b[A": "Up", b"\x1b[B": "Down", b"\x1b[C": "Right", b"\x1b[D": "Left"}


def parse_keys(data: bytes) -> list[str]:
    """Bytes from a terminal in raw mode -> key names of :data:`~fmlab.neural_computer.model.KEYS`
    (unknown bytes are dropped)."""
    keys, i = [], 0
    while i < len(data):
        if data[i : i + 3] in _ESC:
            keys.append(_ESC[data[i : i + 3]])
            i += 3
            continue
        b = data[i]
        if b in (13, 10):
            keys.append("Enter")
        elif b in (127, 8):
            keys.append("Backspace")
        elif b == 3:
            keys.append("Ctrl-C")
        elif 32 <= b < 127:
            keys.append(chr(b))
        i += 1
    return keys


class PlaySession:
    """The runtime state of one closed-loop session: h, the last generated frame, the clock."""

    def __init__(self, model: NCModel, first_frame: np.ndarray | None = None):
        self.model = model.eval()
        self.first = first_frame if first_frame is not None else default_first_frame(model)
        self.reset()

    def reset(self) -> None:
        self.h = self.model.init_state(1)
        self.frame = torch.from_numpy(np.asarray(self.first, dtype=np.float32) / 255.0)[None]
        self.ticks = 0
        self._times: deque[float] = deque(maxlen=30)

    @torch.inference_mode()
    def tick(
        self, key: str | None = None, mouse: tuple[float, float, bool] | None = None
    ) -> np.ndarray:
        """Advance one frame with an action; returns the new frame (H, W) uint8."""
        k = torch.tensor([key_id(key)])
        m = None
        if self.model.cfg.mouse:
            x, y, c = mouse if mouse is not None else (0.0, 0.0, False)
            m = torch.tensor([[float(x), float(y), float(bool(c))]])
        self.h, p = self.model.step(self.h, self.frame, k, m)
        self.frame = p.clamp(0, 1)
        self.ticks += 1
        self._times.append(time.perf_counter())
        return (self.frame[0] * 255).round().to(torch.uint8).numpy()

    @property
    def fps(self) -> float:
        """Frames per second over the last (up to) 30 ticks."""
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)


def default_first_frame(model: NCModel) -> np.ndarray:
    """The frame a session starts from: an empty prompt (terminal) or the idle desktop (GUI)."""
    cfg = model.cfg
    if cfg.mouse:
        from fmlab.neural_computer.gui import GuiState, render_gui

        return render_gui(GuiState())
    from fmlab.neural_computer.render import get_atlas

    atlas = get_atlas()
    rows, cols = cfg.height // atlas.cell_h, cfg.width // atlas.cell_w
    return atlas.render(["$ "], (2, 0), rows, cols)


def measure_play_fps(model: NCModel, n: int = 100, seed: int = 0) -> float:
    """Closed-loop frames per second as fast as the model goes (random typing), median of 3."""
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(3):
        s = PlaySession(model)
        s.tick()
        t0 = time.perf_counter()
        for _ in range(n):
            key = chr(int(rng.integers(97, 123))) if rng.random() < 0.5 else None
            mouse = (rng.uniform(0, model.cfg.width), rng.uniform(0, model.cfg.height), False)
            s.tick(key, mouse)
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


def _text_of(frame: np.ndarray, model: NCModel) -> tuple[list[str], tuple[int, int] | None]:
    from fmlab.neural_computer.render import get_atlas

    atlas = get_atlas()
    r = atlas.read(frame, model.cfg.height // atlas.cell_h, model.cfg.width // atlas.cell_w)
    return r.lines, r.cursor


def play_terminal(model: NCModel, fps: float = 15.0, max_seconds: float | None = None) -> dict:
    """Play in this terminal until Ctrl-D: keys go to the model at ``fps`` ticks a second.
    Returns {"ticks", "fps"}."""
    import select
    import termios
    import tty

    if not sys.stdin.isatty():
        raise OSError("fmlab nc play --mode terminal needs an interactive terminal; use --mode web")
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    s = PlaySession(model)
    pending: deque[str] = deque()
    out = sys.stdout
    start = time.perf_counter()
    try:
        tty.setraw(fd)
        out.write("\x1b[2J\x1b[?25l")
        next_t = time.perf_counter()
        while max_seconds is None or time.perf_counter() - start < max_seconds:
            wait = max(0.0, next_t - time.perf_counter())
            r, _, _ = select.select([fd], [], [], wait)
            if r:
                data = os.read(fd, 1024)
                if b"\x04" in data:
                    break
                pending.extend(parse_keys(data))
                continue
            next_t += 1.0 / fps
            frame = s.tick(pending.popleft() if pending else None)
            lines, cur = _text_of(frame, model)
            buf = ["\x1b[H"]
            for y, line in enumerate(lines):
                if cur is not None and cur[1] == y:
                    x = cur[0]
                    line = f"{line[:x]}\x1b[7m{line[x]}\x1b[0m{line[x + 1 :]}"
                buf.append(f"|{line}|\r\n")
            buf.append(f"\x1b[2Kmodel frames/s: {s.fps:5.1f} (target {fps:g}) | your keys go to the "
                       "model, not a shell | Ctrl-D quits\r\n")  # fmt: skip
            out.write("".join(buf))
            out.flush()
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)
        out.write("\x1b[?25h\r\n")
        out.flush()
    return {"ticks": s.ticks, "fps": s.fps}


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>fmlab neural computer</title>
<style>body{background:#111;color:#ddd;font-family:monospace}#screen{image-rendering:pixelated;
width:%(w)dpx;height:%(h)dpx;border:1px solid #555;cursor:none}</style></head><body>
<div>fmlab neural computer: every frame below is generated by the model; keys and clicks go to
the model, not to a shell. <span id="fps">model frames/s: -</span> | frame <span id="n">0</span></div>
<img id="screen" tabindex="0" alt="generated frame">
<script>
const img=document.getElementById('screen'), S=%(scale)d;
function post(path, body){fetch(path,{method:'POST',body:JSON.stringify(body)});}
const names={Enter:'Enter',Backspace:'Backspace',ArrowLeft:'Left',ArrowRight:'Right',
ArrowUp:'Up',ArrowDown:'Down'};
document.addEventListener('keydown',e=>{let k=null;
 if(e.ctrlKey&&e.key==='c')k='Ctrl-C';else if(names[e.key])k=names[e.key];
 else if(e.key.length===1)k=e.key; if(k){post('/key',{key:k});e.preventDefault();}});
function xy(e){const r=img.getBoundingClientRect();return [(e.clientX-r.left)/S,(e.clientY-r.top)/S];}
img.addEventListener('mousemove',e=>{const [x,y]=xy(e);post('/mouse',{x:x,y:y,click:false});});
img.addEventListener('mousedown',e=>{const [x,y]=xy(e);post('/mouse',{x:x,y:y,click:true});});
async function loop(){try{const r=await fetch('/frame.png?'+Date.now());
 document.getElementById('fps').textContent='model frames/s: '+r.headers.get('X-FPS');
 document.getElementById('n').textContent=r.headers.get('X-Frame');
 const b=await r.blob(); const u=URL.createObjectURL(b); const old=img.src; img.src=u;
 if(old)URL.revokeObjectURL(old);}catch(e){} setTimeout(loop,30);}
loop(); img.focus();
</script></body></html>"""


class _Runtime:
    """Ticks a session at ``fps`` in a thread, taking actions from a queue."""

    def __init__(self, model: NCModel, fps: float):
        from PIL import Image

        self.session = PlaySession(model)
        self.fps_target = fps
        self.events: queue.Queue = queue.Queue()
        self.mouse = (model.cfg.width / 2, model.cfg.height / 2, False)
        self.lock = threading.Lock()
        self._png = self._encode(np.asarray(self.session.first), Image)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _encode(frame: np.ndarray, Image) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(frame, mode="L").save(buf, format="PNG")
        return buf.getvalue()

    def _run(self) -> None:
        from PIL import Image

        torch.set_num_threads(1)
        next_t = time.perf_counter()
        while not self.stop.is_set():
            key = None
            click = False
            try:
                while True:  # mouse moves coalesce; a key or a click ends this tick's action
                    ev = self.events.get_nowait()
                    if ev[0] == "key":
                        key = ev[1]
                        break
                    self.mouse = (ev[1], ev[2], False)
                    if ev[3]:
                        click = True
                        break
            except queue.Empty:
                pass
            x, y, _ = self.mouse
            frame = self.session.tick(key, (x, y, click))
            png = self._encode(frame, Image)
            with self.lock:
                self._png = png
            next_t += 1.0 / self.fps_target
            time.sleep(max(0.0, next_t - time.perf_counter()))
            if time.perf_counter() - next_t > 1.0:  # fell behind: do not try to catch up
                next_t = time.perf_counter()

    def png(self) -> bytes:
        with self.lock:
            return self._png


def serve_web(
    model: NCModel,
    host: str = "127.0.0.1",
    port: int = 8765,
    fps: float = 15.0,
    scale: int = 3,
) -> tuple[ThreadingHTTPServer, _Runtime]:
    """Start the page server (loopback only) and the model's clock; returns (server, runtime).
    Call ``server.serve_forever()`` (or run it in a thread) and ``runtime.stop.set()`` to end."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"--host {host}: the play page is served on the loopback interface only")
    rt = _Runtime(model, fps)
    page = (_PAGE % {"w": model.cfg.width * scale, "h": model.cfg.height * scale,
                     "scale": scale}).encode()  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/":
                self._send(200, page, "text/html; charset=utf-8")
            elif path == "/frame.png":
                s = rt.session
                self._send(200, rt.png(), "image/png",
                           {"X-FPS": f"{s.fps:.1f}", "X-Frame": str(s.ticks)})  # fmt: skip
            elif path == "/stats":
                s = rt.session
                body = json.dumps({"frame": s.ticks, "fps": s.fps, "target_fps": fps}).encode()
                self._send(200, body, "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            try:
                ev = json.loads(self.rfile.read(n) or b"{}")
                if self.path == "/key":
                    key_id(ev["key"])  # validates
                    rt.events.put(("key", ev["key"]))
                elif self.path == "/mouse":
                    rt.events.put(("mouse", float(ev["x"]), float(ev["y"]), bool(ev.get("click"))))
                else:
                    return self._send(404, b"not found", "text/plain")
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, str(e).encode(), "text/plain")
            self._send(204, b"", "text/plain")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    rt.thread.start()
    return server, rt
