"""Neural Computers: record a real terminal and a toy desktop, train a learned runtime
h_t = F(h_{t-1}, x_t, u_t) that generates the next screen, and run it in closed loop."""

from fmlab.neural_computer.evaluate import evaluate_gui, evaluate_terminal, psnr, ssim
from fmlab.neural_computer.gui import REGIMES, record_gui
from fmlab.neural_computer.model import KEYS, NCConfig, NCModel, count_params
from fmlab.neural_computer.play import PlaySession, measure_play_fps, serve_web
from fmlab.neural_computer.render import GlyphAtlas, get_atlas
from fmlab.neural_computer.sandbox import Sandbox, SandboxViolation, check_line, check_script
from fmlab.neural_computer.scripts import FAMILIES, make_script
from fmlab.neural_computer.terminal import Episode, RecorderConfig, Step, record_terminal
from fmlab.neural_computer.traces import TraceError, TraceWarning, load_episodes, write_episode
from fmlab.neural_computer.train import load_model, save_model, train_nc

__all__ = [
    "FAMILIES", "KEYS", "REGIMES", "Episode", "GlyphAtlas", "NCConfig", "NCModel",
    "PlaySession", "RecorderConfig", "Sandbox", "SandboxViolation", "Step", "TraceError",
    "TraceWarning", "check_line", "check_script", "count_params", "evaluate_gui",
    "evaluate_terminal", "get_atlas", "load_episodes", "load_model", "make_script",
    "measure_play_fps", "psnr", "record_gui", "record_terminal", "save_model", "serve_web",
    "ssim", "train_nc", "write_episode",
]  # fmt: skip
