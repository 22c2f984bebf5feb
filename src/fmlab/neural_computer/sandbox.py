"""The recorder's sandbox: an allow-list of commands checked before anything is typed, and a
throw-away directory with a fixed environment for the shell.

Two layers. (1) :func:`check_line` parses every command line an episode will execute (after
simulating the keystrokes that edit it, :func:`effective_lines`) and refuses, before the
shell is even started, anything that is not a plain pipeline of allow-listed commands and
functions defined in the episode: no command substitution, no background jobs, no absolute
paths or ``..`` anywhere, no heredocs, no assignments to upper-case variables, ``python3``
only as ``python3 -c "print(<arithmetic>)"``. (2) :class:`Sandbox` runs bash with
``PATH`` holding only links to the allow-listed programs, ``HOME`` and the working directory
inside a fresh temporary directory, a fixed environment (no proxies, ``LC_ALL=C``, ``TZ=UTC``),
history kept in memory, the builtins that could run arbitrary code disabled, and without a
network (``unshare -n``) where the kernel allows it.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ALLOWED_BUILTINS",
    "ALLOWED_PROGRAMS",
    "KEY_BYTES",
    "Sandbox",
    "SandboxViolation",
    "check_line",
    "check_script",
    "effective_lines",
]

# The programs linked into the sandbox's PATH (nothing else can be found by name).
ALLOWED_PROGRAMS = (
    "ls", "cat", "head", "tail", "wc", "sort", "uniq", "mkdir", "touch", "rm", "cp", "mv",
    "grep", "tr", "seq", "basename", "sleep", "expr", "python3",
)  # fmt: skip
ALLOWED_BUILTINS = ("echo", "printf", "pwd", "cd", "true", "false", "type")
# Disabled inside the shell as a second line of defence (the checker refuses them anyway).
DISABLED_BUILTINS = (
    "exec", "eval", "source", ".", "builtin", "command", "trap", "kill", "ulimit", "enable",
)  # fmt: skip
RESERVED = {
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "function", "select", "time", "coproc", "[[", "]]", "in", "!",
}  # fmt: skip

# Special keys a script may press, and the bytes a terminal sends for them.
KEY_BYTES = {
    "Enter": b"\r",
    "Backspace": b"\x7f",
    "Left": b"\x1b[D",
    "Right": b"\x1b[C",
    "Up": b"\x1b[A",
    "Down": b"\x1b[B",
    "Ctrl-C": b"\x03",
}


class SandboxViolation(ValueError):
    """A command line the recorder refuses to type (raised before the shell starts)."""


_ARITH = re.compile(r"\$\(\((.*?)\)\)")
_ARITH_OK = re.compile(r"^[\w\s+\-*/%()$]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ASSIGN = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_SEPARATORS = {";", "&&", "||", "|", "(", "{", "\n"}


def _split_operators(toks: list[str]) -> list[str]:
    """shlex groups runs of punctuation (``()``, ``;}``); cut them into shell operators."""
    out = []
    for t in toks:
        if not t or not set(t) <= set(";&|(){}<>"):
            out.append(t)
            continue
        while t:
            n = 2 if t[:2] in (">>", "&&", "||", ";;", "<<") else 1
            out.append(t[:n])
            t = t[n:]
    return out


def _check_path_word(word: str, line: str) -> None:
    """No word may name a place outside the sandbox: absolute paths, ``..``, ``~user``."""
    if word.startswith("/") or "/.." in f"/{word}" or word == "..":
        raise SandboxViolation(f"{line!r}: {word!r} points outside the sandbox")
    if word.startswith("~") and not (word == "~" or word.startswith("~/")):
        raise SandboxViolation(f"{line!r}: {word!r} names another user's home")


def _check_python(args: list[str], line: str) -> None:
    if len(args) != 2 or args[0] != "-c":
        raise SandboxViolation(f'{line!r}: python3 is allowed only as python3 -c "print(...)"')
    try:
        tree = ast.parse(args[1], mode="eval")
    except SyntaxError as e:
        raise SandboxViolation(f"{line!r}: python3 code does not parse ({e.msg})") from None
    call = tree.body
    ok_nodes = (ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop, ast.Expression)
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "print"
        and len(call.args) == 1
        and not call.keywords
    ):
        raise SandboxViolation(f"{line!r}: python3 -c may only print(<arithmetic>)")
    for node in ast.walk(call.args[0]):
        if not isinstance(node, ok_nodes) or (
            isinstance(node, ast.Constant) and not isinstance(node.value, int | float)
        ):
            raise SandboxViolation(f"{line!r}: python3 -c may only print numbers and operators")


def check_line(
    line: str,
    functions: Iterable[str] = (),
    allowed: Sequence[str] = ALLOWED_PROGRAMS + ALLOWED_BUILTINS,
) -> list[str]:
    """Refuse ``line`` unless it only runs allow-listed commands and ``functions``, inside the
    sandbox. Returns the names of the functions the line defines. Raises
    :class:`SandboxViolation` naming the problem."""
    if any(not (32 <= ord(c) < 127) for c in line):
        raise SandboxViolation(f"{line!r}: only printable ASCII may be typed")
    for bad in ("`", "<(", ">(", "!", "\\", "${", "<<"):
        if bad in line:
            raise SandboxViolation(f"{line!r}: {bad!r} is not allowed in the sandbox")

    def arith(m: re.Match) -> str:
        if not _ARITH_OK.match(m.group(1)) or "$(" in m.group(1):
            raise SandboxViolation(f"{line!r}: arithmetic may hold numbers, names and operators")
        return "0"

    flat = _ARITH.sub(arith, line)
    if "$(" in flat:
        raise SandboxViolation(f"{line!r}: command substitution is not allowed")
    lex = shlex.shlex(flat, posix=True, punctuation_chars=";&|(){}<>")
    lex.whitespace_split = True
    try:
        toks = _split_operators(list(lex))
    except ValueError as e:  # an unclosed quote would leave the shell waiting for more input
        raise SandboxViolation(f"{line!r}: {e}") from None
    defined: list[str] = []
    known = set(allowed) | set(functions)
    cmd_pos, depth, i = True, 0, 0
    while i < len(toks):
        t = toks[i]
        if t in ("{", "("):
            depth += 1
            cmd_pos = True
        elif t in ("}", ")"):
            depth -= 1
            if depth < 0:
                raise SandboxViolation(f"{line!r}: unbalanced {t!r}")
            cmd_pos = False
        elif t in _SEPARATORS or t in (";;",):
            if not cmd_pos or t == "|":
                cmd_pos = True
            else:
                raise SandboxViolation(f"{line!r}: empty command before {t!r}")
        elif set(t) <= set("&|;"):
            raise SandboxViolation(f"{line!r}: {t!r} (background jobs and the like) is not allowed")
        elif set(t) <= set("<>&"):
            if t not in ("<", ">", ">>"):
                raise SandboxViolation(f"{line!r}: redirection {t!r} is not allowed")
            if i + 1 >= len(toks):
                raise SandboxViolation(f"{line!r}: redirection without a target")
            _check_path_word(toks[i + 1], line)
            i += 1
        elif cmd_pos:
            m = _ASSIGN.match(t)
            if m:
                if not m.group(1).islower():
                    raise SandboxViolation(f"{line!r}: only lower-case variables may be set")
                _check_path_word(m.group(2), line)
            elif toks[i + 1 : i + 3] == ["(", ")"]:  # name() { ...; }
                if not _IDENT.match(t) or t in RESERVED or t in allowed:
                    raise SandboxViolation(f"{line!r}: {t!r} cannot be defined as a function")
                defined.append(t)
                known.add(t)
                i += 2
                cmd_pos = True
            elif t in RESERVED:
                raise SandboxViolation(f"{line!r}: shell keyword {t!r} is not allowed")
            elif t not in known:
                raise SandboxViolation(
                    f"{line!r}: command {t!r} is not on the allow-list "
                    f"({', '.join(sorted(set(allowed)))}) nor a function defined earlier"
                )
            else:
                cmd_pos = False
                if t == "python3":
                    j = i + 1
                    while j < len(toks) and toks[j] not in _SEPARATORS | {")", "}", ">", ">>"}:
                        j += 1
                    _check_python(toks[i + 1 : j], line)
                    i = j - 1
        else:
            _check_path_word(t, line)
        i += 1
    if depth != 0:
        raise SandboxViolation(f"{line!r}: unbalanced braces or parentheses")
    if toks and toks[-1] in ("|", "&&", "||"):
        raise SandboxViolation(f"{line!r}: the line ends in {toks[-1]!r}")
    return defined


def effective_lines(keys: Sequence[str]) -> list[str | None]:
    """Simulate the line editor on a key sequence: one entry per Enter or Ctrl-C, the line the
    shell executes (``None`` for a line cancelled by Ctrl-C). Printable characters insert at
    the cursor; Backspace, Left, Right edit; Up and Down walk the history."""
    out: list[str | None] = []
    hist: list[str] = []
    buf: list[str] = []
    pos, hidx, saved = 0, 0, ""
    for k in keys:
        if k == "Enter":
            line = "".join(buf)
            out.append(line)
            if line.strip():
                hist.append(line)
            buf, pos, hidx = [], 0, len(hist)
        elif k == "Ctrl-C":
            out.append(None)
            buf, pos, hidx = [], 0, len(hist)
        elif k == "Backspace":
            if pos > 0:
                del buf[pos - 1]
                pos -= 1
        elif k == "Left":
            pos = max(0, pos - 1)
        elif k == "Right":
            pos = min(len(buf), pos + 1)
        elif k in ("Up", "Down"):
            if hidx == len(hist):
                saved = "".join(buf)
            hidx = max(0, hidx - 1) if k == "Up" else min(len(hist), hidx + 1)
            buf = list(hist[hidx] if hidx < len(hist) else saved)
            pos = len(buf)
        elif len(k) == 1 and 32 <= ord(k) < 127:
            buf.insert(pos, k)
            pos += 1
        else:
            raise SandboxViolation(f"unknown key {k!r}; keys are printable characters or "
                                   f"{', '.join(KEY_BYTES)}")  # fmt: skip
    if buf:
        raise SandboxViolation(f"the script ends with {''.join(buf)!r} typed but not entered")
    return out


def check_script(keys: Sequence[str]) -> list[str]:
    """Check every line a key sequence would execute; returns them (cancelled ones omitted)."""
    functions: list[str] = []
    lines = []
    for line in effective_lines(keys):
        if line is None:
            continue
        functions += check_line(line, functions)
        lines.append(line)
    return lines


def _network_prefix() -> list[str]:
    """``unshare -n`` (or its user-namespace form) when this kernel lets us use it."""
    exe = shutil.which("unshare")
    if exe is None:
        return []
    for prefix in ([exe, "-n"], [exe, "-n", "--map-root-user"]):
        try:
            r = subprocess.run([*prefix, "true"], capture_output=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return prefix
    return []


@dataclass
class Sandbox:
    """A temporary directory holding the shell's HOME (and working dir), its PATH of links to
    the allow-listed programs, its rc and inputrc. Use as a context manager; the directory is
    removed on exit."""

    rows: int = 12
    cols: int = 40
    root: Path | None = None
    network_isolated: bool = False
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def __enter__(self) -> Sandbox:
        self._tmp = tempfile.TemporaryDirectory(prefix="fmlab-nc-")
        self.root = Path(self._tmp.name).resolve()
        home, bindir = self.root / "home", self.root / "bin"
        (self.root / "tmp").mkdir()
        home.mkdir()
        bindir.mkdir()
        for prog in ALLOWED_PROGRAMS:
            if prog == "python3":
                real = os.path.realpath(sys.executable)
                (bindir / prog).write_text(f'#!/bin/sh\nexec {shlex.quote(real)} -I -S "$@"\n')
                (bindir / prog).chmod(0o755)
                continue
            real = shutil.which(prog, path="/usr/bin:/bin")
            if real is None:
                raise FileNotFoundError(f"the sandbox needs {prog!r} in /usr/bin or /bin")
            (bindir / prog).symlink_to(real)
        disable = " ".join(DISABLED_BUILTINS[:-1])
        (self.root / "bashrc").write_text(
            "PS1='\\[\\e]2;R\\a\\]$ '\nPS2='> '\nunset PROMPT_COMMAND HISTFILE\n"
            "HISTSIZE=200\nHISTCONTROL=\nset +o histexpand\n"
            f"enable -n {disable}\nenable -n enable\n"
        )
        (self.root / "inputrc").write_text(
            "set enable-bracketed-paste off\nset bell-style none\nset horizontal-scroll-mode off\n"
        )
        return self

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    @property
    def home(self) -> Path:
        return self.root / "home"

    def env(self) -> dict[str, str]:
        """The shell's whole environment (nothing is inherited)."""
        return {
            "PATH": str(self.root / "bin"),
            "HOME": str(self.home),
            "TMPDIR": str(self.root / "tmp"),
            "TERM": "vt100",
            "LC_ALL": "C",
            "LANG": "C",
            "TZ": "UTC",
            "USER": "user",
            "LOGNAME": "user",
            "INPUTRC": str(self.root / "inputrc"),
            "COLUMNS": str(self.cols),
            "LINES": str(self.rows),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def argv(self) -> list[str]:
        bash = shutil.which("bash", path="/usr/bin:/bin")
        if bash is None:
            raise FileNotFoundError("the terminal recorder needs bash in /usr/bin or /bin")
        prefix = _network_prefix()
        self.network_isolated = bool(prefix)
        return [*prefix, bash, "--noprofile", "--rcfile", str(self.root / "bashrc"), "-i"]
