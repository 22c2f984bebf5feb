"""Recorded terminal traces: ground truth, rendering, action alignment, scripts."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fmlab.neural_computer import FAMILIES, get_atlas, make_script
from fmlab.neural_computer.render import CHARSET
from fmlab.neural_computer.sandbox import check_script, effective_lines


def test_frames_are_the_screen_and_read_back_exactly(term_episode, term_cfg):
    atlas = get_atlas()
    ep = term_episode
    assert ep.meta["status"] == "ok" and ep.frames.shape[1:] == (8 * 12, 40 * 6)
    for f, tr in zip(ep.frames, ep.truth, strict=False):
        r = atlas.read(f, 8, 40)
        assert r.lines == [row.ljust(40)[:40] for row in tr["screen"]]
        assert r.cursor == (tuple(tr["cursor"]) if tr["cursor"] else None)
    seen = {r.rstrip() for tr in ep.truth for r in tr["screen"]}
    assert {"$ echo hi", "hi", "$ echo $((6*7))", "42", "$ ls^C"} <= seen
    assert [r.rstrip() for r in ep.truth[-1]["screen"]].count("yo ab") == 2


def test_action_shows_on_the_next_frame(term_episode):
    ep = term_episode
    typed = 0
    for t, a in enumerate(ep.actions[:-1]):
        k = a["key"]
        if k and len(k) == 1 and k != " ":
            x, y = ep.truth[t]["cursor"]
            assert ep.truth[t + 1]["screen"][y][x] == k  # echoed on frame t + 1
            typed += 1
    assert typed > 20


def test_keystroke_timing_is_about_70ms(term_episode, term_cfg):
    ep = term_episode
    press = [t for t, a in enumerate(ep.actions) if a["key"] and len(a["key"]) == 1]
    gaps = np.diff(press)
    gaps = gaps[gaps < 3]  # within a line
    ms = gaps.mean() * 1000 / term_cfg.fps
    assert 50 <= ms <= 90, ms


def test_scripts_are_seeded_valid_and_probed():
    for fam in FAMILIES:
        a, b = make_script(fam, 3), make_script(fam, 3)
        assert [s.keys for s in a] == [s.keys for s in b]
        keys = [k for s in a for k in s.keys]
        lines = effective_lines(keys)
        assert len(lines) == len(a)  # one Enter or Ctrl-C per step
        for step, line in zip(a, lines, strict=False):
            if "line" in step.probe:
                assert line == step.probe["line"]  # typos and arrow edits end in the line
        check_script(keys)  # every script passes the allow-list
    r = make_script("routine", 0)
    kinds = [s.probe.get("kind") for s in r]
    assert (
        kinds.index("define")
        < kinds.index("reuse")
        < kinds.index("redefine")
        < kinds.index("update")
    )
    upd = next(s.probe for s in r if s.probe.get("kind") == "update")
    assert upd["expect"] != upd["old"]


def test_scripted_routine_outputs_match_probes(script_episodes):
    for ep in script_episodes:
        text = [r.rstrip() for tr in ep.truth for r in tr["screen"]]
        for st_ in ep.meta["steps"]:
            if "expect" in st_["probe"]:
                assert st_["probe"]["expect"] in text, st_


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet=CHARSET, max_size=20), min_size=1, max_size=6),
       st.integers(0, 19), st.integers(0, 5))  # fmt: skip
def test_render_read_roundtrip(lines, cx, cy):
    atlas = get_atlas()
    f = atlas.render(lines, (cx, cy), 6, 20)
    r = atlas.read(f, 6, 20)
    assert r.lines == [ln.ljust(20) for ln in lines] + [" " * 20] * (6 - len(lines))
    assert r.cursor == (cx, cy)
