"""The recorder never runs a command outside its allow-list or its sandbox; hangs are killed."""

import os
import time

import pytest

from fmlab.neural_computer import RecorderConfig, Sandbox, SandboxViolation, Step, check_line
from fmlab.neural_computer import terminal as term_mod
from fmlab.neural_computer.sandbox import check_script, effective_lines

ESCAPES = [
    "rm -rf /", "cat /etc/passwd", "cd ..", "cd ../..", "ls ../", "cat ~root/.bashrc",
    "echo x > /tmp/escape", "echo x >> ../escape", "cat < /etc/hosts", "curl http://example.com",
    "wget x", "ssh host", "bash", "sh -c ls", "env", "echo $(whoami)", "echo `id`",
    "sleep 100 &", "ls & ls", "PATH=/usr/bin", "HOME=/", "exec ls", "eval ls", "source x",
    ". x", "builtin echo", "command ls", "python3 x.py", 'python3 -c "import os"',
    'python3 -c "open(1)"', "python3", "ls | bash", "if true; then ls; fi", "for i in 1; do ls; done",
    "echo ${HOME}", "cat <<EOF", "echo hi \\", 'echo "unclosed', "ls() { echo; }",
    "f() { rm -rf /; }", "echo $(( $(id) ))", "echo hi; /bin/ls", "trap ls EXIT", "kill 1",
    "echo é",
]  # fmt: skip


@pytest.mark.parametrize("line", ESCAPES)
def test_checker_refuses_escapes(line):
    with pytest.raises(SandboxViolation):
        check_line(line)


def test_checker_accepts_everyday_lines_and_tracks_functions():
    fns = []
    for line in ["ls", "echo hello > a.txt", "cat a.txt | wc -c", "echo $((3 * 4))",
                 'python3 -c "print(6*7)"', "greet() { echo hi $1; }", "greet bob", "x=5",
                 "echo $((x + 1)) # 6", "mkdir d", "cd d", "cd", "seq 3"]:  # fmt: skip
        fns += check_line(line, fns)
    assert fns == ["greet"]
    with pytest.raises(SandboxViolation, match="not on the allow-list"):
        check_line("greet bob")  # not defined in this episode


def test_edited_line_is_what_gets_checked():
    # types 'ls /', deletes the '/', so 'ls' runs: allowed; the reverse is refused
    assert check_script([*"ls /", "Backspace", "Enter"]) == ["ls "]
    with pytest.raises(SandboxViolation):
        check_script([*"ls ", *"etc", "Left", "Left", "Left", "/", "Enter"])
    assert effective_lines([*"ab", "Ctrl-C", "Up", "Enter"]) == [None, ""]


def test_violation_raised_before_any_shell_starts(monkeypatch):
    started = []
    monkeypatch.setattr(term_mod, "_Shell", lambda *a, **k: started.append(1))
    with pytest.raises(SandboxViolation):
        term_mod.record_terminal([Step([*"echo ok", "Enter"]), Step([*"cat /etc/shadow", "Enter"])])
    assert started == []


def test_shell_itself_finds_only_allowed_programs_and_has_no_eval(tmp_path):
    """Second line of defence, typed straight into the sandboxed shell past the checker."""
    cfg = RecorderConfig(rows=8, cols=60)
    with Sandbox(cfg.rows, cfg.cols) as sb:
        root = sb.root
        sh = term_mod._Shell(sb, cfg)
        try:
            assert sh.wait_prompt(1, 10)
            for line in ("env", "exec ls", "curl x", "echo $HOME"):
                n = sh.prompts
                sh.proc.write(line.encode() + b"\r")
                assert sh.wait_prompt(n + 1, 5)
            text = "\n".join(sh.snapshot()[0])
        finally:
            sh.close()
    assert "env: command not found" in text
    assert "curl: command not found" in text
    assert "exec: command not found" in text  # disabled builtin
    assert str(root / "home") in text
    assert not root.exists()  # the whole sandbox is removed afterwards


def test_writes_stay_inside_the_sandbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    steps = [Step([*"echo secret > note.txt", "Enter"]), Step([*"mkdir box", "Enter"])]
    ep = term_mod.record_terminal(steps, RecorderConfig(rows=6, cols=40, think_ms=70))
    assert ep.meta["status"] == "ok"
    assert list(tmp_path.iterdir()) == []
    assert not (
        os.path.expanduser("~/note.txt") and os.path.exists(os.path.expanduser("~/note.txt"))
    )


def test_hanging_command_is_killed_and_episode_marked():
    steps = [Step([*"echo a", "Enter"]), Step([*"sleep 30", "Enter"]), Step([*"echo b", "Enter"])]
    t = time.monotonic()
    ep = term_mod.record_terminal(steps, RecorderConfig(rows=6, cols=40, command_timeout_s=1.0,
                                                        think_ms=70))  # fmt: skip
    assert time.monotonic() - t < 10
    assert ep.meta["status"] == "command_timeout" and ep.meta["failed_step"] == 1
    assert ep.actions[-2] == {"key": "Ctrl-C", "by": "supervisor"}
    assert len(ep.frames) == len(ep.truth) > 10  # frames kept, not lost
    screen = "\n".join(ep.truth[-1]["screen"])
    assert "$ sleep 30" in screen and "echo b" not in screen
