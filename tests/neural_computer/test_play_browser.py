"""The `fmlab nc play --mode web` page driven by a real browser: Debian's headless Chromium over
the Chrome DevTools Protocol types into the page, and the frames the page shows must change in
response. Skipped, with the reason, where Chromium or websocket-client is missing (`make setup`
installs Chromium when it runs as root, as CI does)."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

from fmlab.neural_computer import NCConfig, NCModel, PlaySession, serve_web
from fmlab.neural_computer.model import key_id

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
try:
    import websocket  # websocket-client
except ImportError:  # pragma: no cover - depends on the environment
    websocket = None

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed: `make setup` installs Debian's chromium when run as "
        "root (apt-get install chromium); elsewhere install it to run this test",
    ),
    pytest.mark.skipif(
        websocket is None, reason="websocket-client is not installed: pip install 'fmlab[dev]'"
    ),
]

_KEYCODES = {"Enter": 13, "Backspace": 8}


class _RecordingSession(PlaySession):
    """A PlaySession that logs each tick's key and frame, and the frame the same tick would have
    given with no key (from the same state): the counterfactual of every keyed tick."""

    def __init__(self, model):
        super().__init__(model)
        self.log: list[tuple[str | None, np.ndarray, np.ndarray | None]] = []
        self.log_lock = threading.Lock()

    def tick(self, key=None, mouse=None):
        alt = None
        if key is not None:
            with torch.inference_mode():
                _, p = self.model.step(self.h, self.frame, torch.tensor([key_id(None)]))
            alt = (p.clamp(0, 1)[0] * 255).round().to(torch.uint8).numpy()
        frame = super().tick(key, mouse)
        with self.log_lock:
            self.log.append((key, frame, alt))
        return frame


class _Cdp:
    """A minimal Chrome DevTools Protocol client over one page target's websocket."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=10, suppress_origin=True)
        self.n = 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr[:60]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def type_key(self, key: str) -> None:
        code = _KEYCODES.get(key, ord(key.upper()) if len(key) == 1 else 0)
        down = {"key": key, "windowsVirtualKeyCode": code}
        if len(key) == 1:
            down["text"] = key
        self.call("Input.dispatchKeyEvent", type="keyDown", **down)
        self.call("Input.dispatchKeyEvent", type="keyUp", key=key, windowsVirtualKeyCode=code)


# what the page shows: the <img>'s current frame, drawn to a canvas and read back as PNG
_SHOWN = """(() => {const i = document.getElementById('screen');
  if (!i.complete || !i.naturalWidth) return null;
  const c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;
  c.getContext('2d').drawImage(i, 0, 0);
  return [c.toDataURL('image/png'), document.getElementById('n').textContent,
          document.getElementById('fps').textContent];})()"""


def _decode(data_url: str) -> np.ndarray:
    from PIL import Image

    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[..., 0]


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _lively_model() -> NCModel:
    torch.manual_seed(0)
    m = NCModel(NCConfig(height=96, width=240, dim=32, layers=2, heads=2))
    for p in m.parameters():  # untrained, but reacting to keys (no zero-initialised layers)
        if not p.detach().abs().sum():
            torch.nn.init.normal_(p, std=0.2)
    return m.eval()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with remote debugging on a free loopback port; yields (proc, port)."""
    profile = tmp_path / "profile"
    args = [CHROMIUM, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--no-proxy-server", "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"

        def port():
            if proc.poll() is not None:
                raise AssertionError(f"chromium exited {proc.returncode}: "
                                     f"{proc.stderr.read().decode(errors='replace')[-2000:]}")  # fmt: skip
            lines = port_file.read_text().split() if port_file.exists() else []
            return int(lines[0]) if lines else None

        yield proc, _wait(port, 15, "chromium's DevTools port")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_headless_chromium_types_into_the_page_and_its_frames_follow(browser):
    _proc, dport = browser
    m = _lively_model()
    server, rt = serve_web(m, port=0, fps=20)
    session = _RecordingSession(m)
    rt.session = session  # the runtime's clock now ticks this logging session
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
        targets = json.loads(direct.open(f"http://127.0.0.1:{dport}/json/list").read())
        page = next(t for t in targets if t["type"] == "page")
        cdp = _Cdp(page["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        cdp.call("Page.navigate", url=url)
        _wait(lambda: cdp.js("document.readyState") == "complete", 10, "the page to load")
        assert "generated by the model" in cdp.js("document.body.innerText")

        def shown_after(tick: int):  # a frame the page shows, once the page counter passed tick
            v = cdp.js(_SHOWN)
            return v if v and v[1].isdigit() and int(v[1]) > tick else None

        before = _wait(lambda: shown_after(3), 10, "the page to show generated frames")
        assert before[2].startswith("model frames/s:") and before[2] != "model frames/s: -"
        with session.log_lock:
            n_before = len(session.log)
        typed = ["h", "i", "Enter"]
        for k in typed:
            cdp.type_key(k)  # a real keydown in the page -> its handler POSTs /key
            time.sleep(0.15)

        def keys_seen():
            with session.log_lock:
                return [k for k, _, _ in session.log[n_before:] if k is not None] == typed

        _wait(keys_seen, 5, f"the model to receive the typed keys {typed}")
        with session.log_lock:
            log = list(session.log)
        keyed = [i for i, (k, _, _) in enumerate(log) if k is not None]
        # each key changed the frame the model generated on its tick (vs no key from that state)
        for i in keyed:
            assert not np.array_equal(log[i][1], log[i][2]), f"key {log[i][0]!r} had no effect"
        after = _wait(lambda: shown_after(keyed[-1] + 2), 10, "the page to show later frames")
        shown_before, shown_now = _decode(before[0]), _decode(after[0])
        with session.log_lock:
            frames = [f for _, f, _ in session.log]
        # the page shows the model's frames exactly: one from before the first key, then one
        # from after the last key
        idx_before = [i for i, f in enumerate(frames) if np.array_equal(f, shown_before)]
        idx_now = [i for i, f in enumerate(frames) if np.array_equal(f, shown_now)]
        assert idx_before and idx_now, "the page showed a frame the model never generated"
        assert min(idx_before) < keyed[0] and max(idx_now) >= keyed[-1]
        assert not np.array_equal(shown_before, shown_now)
        assert int(after[1]) > int(before[1])
        cdp.ws.close()
    finally:
        rt.stop.set()
        server.shutdown()
        server.server_close()
