"""The second, independent OCR (rapidocr) of terminal frames: skipped with the reason when the
optional extra ``fmlab[ocr]`` is not installed."""

import socket

import numpy as np
import pytest

from fmlab.neural_computer import NCConfig, NCModel
from fmlab.neural_computer.evaluate import (
    RapidReader,
    evaluate_terminal,
    rapidocr_missing,
    text_accuracy,
)
from fmlab.neural_computer.render import get_atlas

pytestmark = pytest.mark.skipif(bool(rapidocr_missing()), reason=str(rapidocr_missing()))

SCREEN = [
    "$ echo hello world",
    "hello world",
    "$ ls -la notes",
    '$ python3 -c "print(6*7)"',
    "42",
    "$ f() { echo yo $1; }; f ab",
    "yo ab",
    "$ ",
]


@pytest.fixture(scope="module")
def reader():
    return RapidReader()


def test_text_accuracy_scoring():
    assert text_accuracy(["$ ls -la", ""], ["$ ls  -la", ""]) == (6, 6, 1, 1)  # spacing ignored
    assert text_accuracy(["ab"], ["abc"]) == (2, 3, 0, 1)  # one deletion
    assert text_accuracy(["xyz"], [""]) == (0, 3, 0, 1)  # text where the truth is blank


def test_rapidocr_reads_a_rendered_frame_offline(reader, monkeypatch):
    def no_network(*a, **k):
        raise OSError("network access during OCR")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    fresh = RapidReader()  # builds its sessions from the wheel's models, no download
    frame = get_atlas().render(SCREEN, (2, 7), 10, 40)
    lines = fresh.read(frame, 10, 40)
    assert len(lines) == 10 and lines[8:] == ["", ""]
    mc, nc, ml, _ = text_accuracy(lines, [*SCREEN, "", ""])
    assert nc >= sum(len("".join(s.split())) for s in SCREEN)
    assert mc / nc >= 0.9 and ml >= 5, lines
    assert lines[1].split() == ["hello", "world"] and lines[4] == "42"
    # a frame of other text scores low against this truth: the score is not trivially high
    other = get_atlas().render(["$ cat notes.txt", "milk, eggs", "$ wc -l x"], (2, 2), 10, 40)
    mo, no, _, _ = text_accuracy(reader.read(other, 10, 40), [*SCREEN, "", ""])
    assert mo / no < 0.5


def test_evaluate_terminal_reports_the_second_ocr(script_episodes):
    m = NCModel(
        NCConfig(height=96, width=240, dim=32, layers=2, heads=2)
    ).eval()  # zero head: copy-last-frame
    r = evaluate_terminal(m, script_episodes[:1], horizons=(1,), rapidocr_frames=3)
    assert r["rapidocr_frames"] == 3 and len(r["per_episode_rapidocr_char_acc"]) == 1
    assert r["rapidocr_char_acc"] == r["copy_rapidocr_char_acc"]
    assert 0.5 < r["real_rapidocr_char_acc"] <= 1.0
    assert "rapidocr_char_acc" not in evaluate_terminal(m, script_episodes[:1], horizons=(1,),
                                                        rapidocr_frames=0)  # fmt: skip


def test_reader_caches_by_frame(reader):
    frame = get_atlas().render(["$ seq 3", "1", "2", "3"], None, 10, 40)
    a = reader.read(frame, 10, 40)
    assert reader.read(frame.copy(), 10, 40) is a
    shifted = reader.read(np.roll(frame, 12, axis=0), 10, 40)  # one row down: rows follow
    assert shifted[0] == "" and shifted[2:5] == a[1:4] == ["1", "2", "3"]
