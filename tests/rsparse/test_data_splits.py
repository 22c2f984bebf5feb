"""R-Sparse's text splits: disjoint by content, test sealed, and a calibration file that holds
test text refused before any model work (rule 1, checked at run time and here)."""

import pytest

from fmlab.core.experiment.splits import SealedSplitError, SplitError
from fmlab.rsparse.data import TextSplits, make_splits


class _Tok:  # whitespace "tokenizer": the splits, not the tokenizer, are under test
    def __call__(self, text):
        return {"input_ids": list(range(len(text.split())))}


def test_splits_are_disjoint_and_test_is_sealed():
    ts = TextSplits(_Tok(), seed=0)
    assert ts.splits.check() is not None and "test" in ts.splits.sealed
    parts = make_splits(0)
    assert not set(parts["calib"]) & set(parts["test"]) and not set(parts["val"]) & set(
        parts["test"]
    )
    assert ts.ids("val", 5, "val text").numel() == 5
    with pytest.raises(SealedSplitError):
        ts.ids("test", 5, "test text")  # before open_test()
    ts.splits.open_test()
    assert ts.ids("test", 5, "test text").numel() == 5


def test_a_calibration_file_holding_test_text_is_refused(tmp_path):
    leak = make_splits(0)["test"][0]
    f = tmp_path / "calib.txt"
    f.write_text("some calibration prose of my own.\n\n" + leak + "\n")
    with pytest.raises(SplitError, match="contains part of a 'test' document"):
        TextSplits(_Tok(), seed=0, calib_text=f)
    f.write_text("some calibration prose of my own, long enough to calibrate on.\n")
    assert TextSplits(_Tok(), seed=0, calib_text=f).splits.check() is not None
