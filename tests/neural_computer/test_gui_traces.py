"""Toy desktop semantics, trace format on disk, corrupt/partial episodes skipped."""

import json
import warnings

import numpy as np
import pytest

from fmlab.neural_computer import REGIMES, TraceWarning, load_episodes, record_gui, write_episode
from fmlab.neural_computer.evaluate import _read_counter, detect_cursor
from fmlab.neural_computer.gui import BUTTONS, CURSOR, ITEMS, MENU, GuiState, render_gui, step_gui
from fmlab.neural_computer.model import _SPRITE
from fmlab.neural_computer.render import get_atlas
from fmlab.neural_computer.traces import TraceError, load_episode


def _click(box):
    c0, r, _c1 = box
    return {"x": c0 * 6 + 3, "y": r * 12 + 5, "click": True, "key": None}


def test_actions_apply_to_the_next_frame_and_counter_counts():
    s = GuiState()
    f0 = render_gui(s)
    for _ in range(3):
        s = step_gui(s, _click(BUTTONS["+1"]))
    s = step_gui(s, _click(BUTTONS["-1"]))
    assert s.counter == 2 and _read_counter(render_gui(s), get_atlas()) == 2
    s = step_gui(s, _click(MENU))
    assert s.menu_open
    s = step_gui(s, _click(ITEMS["Reset"]))
    assert s.counter == 0 and not s.menu_open
    ep = record_gui("goal", 60, 3)
    for t in range(59):  # frame t + 1 is the render of step(state_t, action_t)
        assert ep.truth[t + 1]["cursor"] == [min(max(ep.actions[t]["x"], 0), 139),
                                             min(max(ep.actions[t]["y"], 0), 88)]  # fmt: skip
    assert f0.shape == (96, 144)


def test_regimes_differ_and_goal_clicks_on_targets():
    clicks = {r: sum(a["click"] for a in record_gui(r, 200, 0).actions) for r in REGIMES}
    assert clicks["random-fast"] > clicks["random-slow"]
    ep = record_gui("goal", 300, 0)
    assert sum(bool(set(t["events"]) & {"+1", "-1", "reset", "focus"}) for t in ep.truth) >= 5
    with pytest.raises(ValueError, match="choose one of"):
        record_gui("nope", 10, 0)


def test_cursor_detection_exact_on_real_frames_and_sprite_agrees():
    ep = record_gui("random-fast", 60, 1)
    for f, tr in zip(ep.frames, ep.truth, strict=False):
        assert list(detect_cursor(f)) == tr["cursor"]
    assert np.array_equal(
        (CURSOR > 0).astype(int), np.array([[int(c) for c in r] for r in _SPRITE])
    )


@pytest.mark.parametrize("fmt", ["png", "mp4"])
def test_trace_roundtrip(tmp_path, term_episode, fmt):
    write_episode(term_episode, tmp_path / "t", frames=fmt)
    ep = load_episode(tmp_path / "t")
    assert ep.actions == term_episode.actions and ep.truth == term_episode.truth
    err = np.abs(ep.frames.astype(int) - term_episode.frames).mean()
    assert err == 0 if fmt == "png" else err < 2.0
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta["format"] == "fmlab-nc-trace" and meta["n_frames"] == len(ep.frames)


def test_corrupt_and_partial_episodes_are_skipped_with_a_warning(tmp_path, gui_episodes):
    for i, ep in enumerate(gui_episodes):
        write_episode(ep, tmp_path / f"e{i}")
    (tmp_path / "e0" / "frames" / "000003.png").write_bytes(b"\x89PNG trunc")
    lines = (tmp_path / "e1" / "actions.jsonl").read_text().splitlines()
    (tmp_path / "e1" / "actions.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    (tmp_path / "e2" / "meta.json").unlink()
    (tmp_path / ".e4.abc.partial").mkdir()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        eps = load_episodes(tmp_path)
    assert len(eps) == 1
    msgs = " | ".join(str(x.message) for x in w if issubclass(x.category, TraceWarning))
    assert "000003.png does not decode" in msgs and "actions.jsonl has 37 rows" in msgs
    assert msgs.count("partial episode") == 2
    with pytest.raises(TraceError, match=r"no meta\.json"):
        load_episode(tmp_path / "e2")
