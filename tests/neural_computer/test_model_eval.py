"""Model shapes and conditioning, resumable training, evaluation metrics, closed-loop play."""

import json
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

from fmlab.core.train import TrainConfig, param_checksum
from fmlab.neural_computer import (
    NCConfig,
    NCModel,
    PlaySession,
    count_params,
    evaluate_gui,
    evaluate_terminal,
    load_model,
    psnr,
    serve_web,
    ssim,
    train_nc,
)  # fmt: skip
from fmlab.neural_computer.play import parse_keys


def _tiny(**kw):
    return NCConfig(**{"height": 96, "width": 240, "dim": 32, "layers": 2, "heads": 2, **kw})


def test_shapes_injection_and_cursor_mask():
    torch.manual_seed(0)
    for inj in ("input", "block"):
        m = NCModel(_tiny(injection=inj))
        fr = torch.randint(0, 255, (2, 4, 96, 240), dtype=torch.uint8)
        assert m(fr, torch.zeros(2, 3, dtype=torch.long)).shape == (2, 3, 96, 240)
    g = NCModel(
        NCConfig(height=96, width=144, dim=32, layers=1, heads=2, mouse=True, cursor_mask=True)
    )
    mask = g.cursor_masks(torch.tensor([[10.0, 20.0, 0.0], [143.0, 95.0, 1.0]]))
    assert mask[0, 20, 10] == 1 and mask[0].sum() == 26 and mask[1].sum() == 1  # clipped at edge
    assert 1e6 < count_params(NCModel(NCConfig())) < 5e6  # the default size is in 1-5M
    with pytest.raises(ValueError, match="injection"):
        NCConfig(injection="middle")
    with pytest.raises(ValueError, match="unknown NCConfig keys"):
        NCConfig.from_dict({"dim": 8, "depth": 2})


def test_untrained_model_is_copy_last_frame(script_episodes):
    m = NCModel(_tiny()).eval()  # zero-initialised head: predicts the current frame
    r = evaluate_terminal(m, script_episodes[:1], horizons=(1, 2))
    assert r["char_acc"] == r["copy_char_acc"] and r["line_acc"] == r["copy_line_acc"]
    assert r["horizon_char_acc"][0] == r["horizon_copy_char_acc"][0]
    assert r["echo_events"] > 10 and r["echo_acc"] == 0.0  # copying never echoes a new key
    assert 0.5 < r["copy_char_acc"] < 1.0


def test_image_metrics():
    a = np.random.default_rng(0).integers(0, 255, (2, 40, 40)).astype(np.uint8)
    assert psnr(a, a) == 100.0 and abs(ssim(a, a) - 1) < 1e-6
    b = np.clip(a.astype(int) + 20, 0, 255).astype(np.uint8)
    assert 15 < psnr(a, b) < 30 and ssim(a, b) < 1


def test_training_learns_and_resumes_exactly(tmp_path, gui_episodes):
    cfg = NCConfig(height=96, width=144, dim=32, layers=1, heads=2, mouse=True, cursor_mask=True)
    tc = dict(steps=6, batch_size=2, lr=3e-3, warmup_steps=1, progress=False, ckpt_every_s=0,
              log_every=1)  # fmt: skip
    from fmlab.core.train import train
    from fmlab.neural_computer.train import WindowSampler, build_data, nc_loss

    long = {**tc, "steps": 60, "batch_size": 4, "lr": 1e-2, "warmup_steps": 5}
    full, _res = train_nc(gui_episodes, cfg, TrainConfig(**long), tmp_path / "a", window=3)
    probe = WindowSampler(build_data(gui_episodes, 3), seed=99).batch(0, 0, 0, 1, 8)
    torch.manual_seed(0)
    with torch.no_grad():  # the trained model beats its own initialisation on fixed windows
        assert nc_loss(full, probe) < nc_loss(NCModel(cfg), probe)
    # stop after 3 steps, then resume: same weights as the uninterrupted run

    torch.manual_seed(0)
    m = NCModel(cfg)
    data = WindowSampler(build_data(gui_episodes, 3), seed=0)
    train(m, data, TrainConfig(**tc), tmp_path / "c", loss_fn=nc_loss, stop_at=3)
    torch.manual_seed(0)
    m2 = NCModel(cfg)
    train(m2, data, TrainConfig(**tc), tmp_path / "c", loss_fn=nc_loss)
    torch.manual_seed(0)
    m3 = NCModel(cfg)
    train(m3, data, TrainConfig(**tc), tmp_path / "d", loss_fn=nc_loss)
    assert param_checksum(m2) == param_checksum(m3)
    loaded, meta = load_model(tmp_path / "a" / "model")
    assert param_checksum(loaded) == param_checksum(full) and meta["window"] == 3
    g = evaluate_gui(loaded, gui_episodes[:2])
    assert 0 <= g["cursor_acc"] <= 1 and g["copy_cursor_acc"] < 1
    with pytest.raises(FileNotFoundError, match="fmlab nc train"):
        load_model(tmp_path / "nope")


def _lively(cfg):
    torch.manual_seed(0)
    m = NCModel(cfg)
    for p in m.parameters():  # an untrained model that reacts to keys (no zero-init layers)
        if not p.detach().abs().sum():
            torch.nn.init.normal_(p, std=0.2)
    return m.eval()


def test_play_session_reacts_to_keys_and_keeps_pace():
    m = _lively(_tiny(height=120))
    a, b = PlaySession(m), PlaySession(m)
    fa, fb = a.tick("a"), b.tick(None)
    assert not np.array_equal(fa, fb)
    for _ in range(20):
        a.tick("x")
    assert a.fps > 10
    assert parse_keys(b"ab\r\x7f\x1b[D\x03") == ["a", "b", "Enter", "Backspace", "Left", "Ctrl-C"]


def test_web_page_serves_frames_that_change_with_keys():
    m = _lively(_tiny(height=120))
    server, rt = serve_web(m, port=0, fps=30)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert b"generated by the model" in urllib.request.urlopen(base + "/").read()
        first = urllib.request.urlopen(base + "/frame.png").read()
        for k in "hi":
            req = urllib.request.Request(base + "/key", data=json.dumps({"key": k}).encode(),
                                         method="POST")  # fmt: skip
            assert urllib.request.urlopen(req).status == 204
        time.sleep(0.5)
        st = json.loads(urllib.request.urlopen(base + "/stats").read())
        assert st["frame"] > 3 and st["fps"] > 5
        assert urllib.request.urlopen(base + "/frame.png").read() != first
        bad = urllib.request.Request(base + "/key", data=b'{"key": "Meta-X"}', method="POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(bad)
    finally:
        rt.stop.set()
        server.shutdown()
        server.server_close()
    with pytest.raises(ValueError, match="loopback"):
        serve_web(m, host="0.0.0.0")
