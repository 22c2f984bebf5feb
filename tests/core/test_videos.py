"""fmlab.core.data.videos: the moved generator is unchanged for Tempo, and the perception /
reasoning question families are answered correctly (re-derived from the needle list)."""

import numpy as np
import pytest

from fmlab.core.data.videos import (
    COLOURS,
    PERCEPTION_FAMILIES,
    QA_ANSWERS,
    QA_FAMILIES,
    REASONING_FAMILIES,
    VALUES,
    make_video,
    qa_questions,
)


def _expected(v, q):
    nd = sorted(v.needles, key=lambda x: x.start)
    words = q.text.split()
    if q.family == "attribute":
        (only,) = [x for x in nd if x.shape == words[-1]]
        return only.colour
    if q.family == "presence":
        return "yes" if any((x.colour, x.shape) == (words[3], words[4]) for x in nd) else "no"
    if q.family == "count":
        return str(sum(x.colour == words[2] for x in nd))
    if q.family == "sum":
        return str(sum(VALUES[x.colour] for x in nd))
    return nd[-1].colour  # order: the last flash


def test_tempo_reexports_the_same_generator():
    from fmlab.tempo import synth

    assert synth.make_video is make_video
    a = synth.make_video(5, 64)
    b = make_video(5, 64)
    assert np.array_equal(a.frames, b.frames) and a.questions == b.questions


def test_qa_families_answers_and_balance():
    assert set(QA_FAMILIES) == set(PERCEPTION_FAMILIES) | set(REASONING_FAMILIES)
    seen: dict[str, set] = {f: set() for f in QA_FAMILIES}
    for seed in range(60):
        v = make_video(seed, 16, needle_len=2)
        tempo_qs = list(v.questions)
        qs = qa_questions(v)
        assert v.questions == tempo_qs  # the QA families leave the video's own questions alone
        assert qs == qa_questions(make_video(seed, 16, needle_len=2))  # seeded
        for q in qs:
            assert q.answer == _expected(v, q), (seed, q)
            assert q.answer in QA_ANSWERS
            seen[q.family].add(q.answer)
    assert seen["presence"] == {"yes", "no"}
    assert seen["attribute"] <= set(COLOURS) and len(seen["attribute"]) >= 3
    assert len(seen["sum"]) >= 5 and "0" in seen["count"]


def test_short_videos_still_checked():
    with pytest.raises(ValueError, match="too short"):
        make_video(0, 4, needle_len=2)
