import pytest
import torch

from fmlab.neural_computer import RecorderConfig, Step, make_script, record_gui, record_terminal


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def term_cfg():
    return RecorderConfig(rows=8, cols=40, think_ms=140.0)


@pytest.fixture(scope="session")
def term_episode(term_cfg):
    """One real recorded episode (typos, arrows, Ctrl-C, history, a function)."""
    steps = [
        Step([*"ecoh", "Backspace", "Backspace", *"ho hi", "Enter"], {"expect": "hi"}),
        Step([*"echo $((6*7))", "Enter"], {"kind": "arith", "expect": "42"}),
        Step([*"ls", "Ctrl-C"]),
        Step([*"f() { echo yo $1; }", "Enter"], {"kind": "define"}),
        Step([*"f ab", "Enter"], {"kind": "reuse", "expect": "yo ab", "distractors": 0}),
        Step(["Up", "Enter"], {"expect": "yo ab"}),
    ]
    return record_terminal(steps, term_cfg, seed=0, name="fixture")


@pytest.fixture(scope="session")
def script_episodes(term_cfg):
    return [record_terminal(make_script(f, 1), term_cfg, seed=1, name=f)
            for f in ("arithmetic", "routine")]  # fmt: skip


@pytest.fixture(scope="session")
def gui_episodes():
    return [record_gui(r, 40, s) for r in ("goal", "random-fast") for s in (0, 1)]
