"""The non-weight files of a ParamΔ output: tokenizer identity, which input each file comes
from, hashing with progress, and the ``--out`` placement check.

Weights come from the arithmetic; everything else is copied from one input. The config is the
new base's (it defines the architecture the tensors have). The tokenizer follows
``tokenizer_from`` (default the new base: its vocabulary is the one the output's embedding rows
have). The chat template and ``generation_config.json`` (whose ``eos_token_id`` is the
end-of-turn token of the chat format) follow ``chat_template_from`` (default the post model: a
user of an instruct model needs the instruct model's chat format, which a base model usually
lacks or has in another form).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from fmlab.core.io import atomic_write_json, read_json

__all__ = [
    "CHAT_TEMPLATE_FILES",
    "TOKENIZER_FILES",
    "TOKENIZER_POLICIES",
    "copy_side_files",
    "hash_files",
    "input_files",
    "out_inside_inputs",
    "progress_bar",
    "tokenizer_problems",
]

Side = Literal["new-base", "post"]
SIDES = ("new-base", "post")
TOKENIZER_POLICIES = ("error", "allow")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "generation_config.json")
# Files that are about one directory itself and never copied into an output.
_NEVER_COPY = ("fmlab-cache.json", "param_delta_manifest.json", "model.safetensors.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")
_TEMPLATE_KEYS = ("chat_template", "eos_token")  # tokenizer_config keys of the chat format


@contextlib.contextmanager
def progress_bar(label: str, total: float, enabled: bool = True, unit: str = "n") -> Iterator:
    """A rich progress bar on stderr (stdout carries results only); yields ``advance(k, desc)``.

    ``unit="bytes"`` shows transferred bytes instead of N/M. The bar is stopped on exit, after
    the caller's last ``advance``, so a finished task shows N/N.
    """
    if not enabled:
        yield lambda k=1, desc=None: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    bar = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        count,
        TextColumn("{task.description}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("", total=total)

    def advance(k: float = 1, desc: str | None = None) -> None:
        if desc is not None:
            bar.update(task, description=desc)
        bar.advance(task, k)

    bar.start()
    try:
        yield advance
    finally:
        bar.stop()


def input_files(root: Path) -> list[Path]:
    """Every regular, non-hidden file of a checkpoint directory (weights, config, tokenizer)."""
    return sorted(f for f in root.iterdir() if f.is_file() and not f.name.startswith("."))


def hash_files(files: list[Path], progress: bool = False, label: str = "hashing") -> list[str]:
    """Hex SHA-256 of each file, read in 1 MiB chunks, with a byte progress bar on stderr."""
    total = sum(f.stat().st_size for f in files)
    out = []
    with progress_bar(label, total, progress, unit="bytes") as advance:
        for f in files:
            h = hashlib.sha256()
            advance(0, f.name)
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
                    advance(len(block))
            out.append(h.hexdigest())
    return out


def out_inside_inputs(out: Path, roots: dict[str, Path]) -> list[str]:
    """Problems for an ``out`` that lies inside (or is) an input checkpoint directory."""
    problems = []
    o = out.expanduser().resolve()
    for name, root in roots.items():
        r = root.resolve()
        if o == r or r in o.parents:
            problems.append(
                f"--out {out} is inside the input directory of {name}; a model directory must not "
                "contain another (tools that scan it would read both); choose an --out outside it"
            )
    return problems


# ---------------------------------------------------------------- tokenizer identity


def _tokenizer_view(root: Path) -> tuple[dict[int, str] | None, str] | None:
    """(id -> token, hash of the tokenization rules), or (None, hash of the files) when there is
    no tokenizer.json, or None when the directory has no tokenizer at all.

    Identity means the same ids map to the same strings and text splits the same way
    (normalizer, pre-tokenizer, merges). Chat template and special-token roles are not part of
    it: an instruct model legitimately differs there from its base.
    """
    tj = root / "tokenizer.json"
    if tj.is_file():
        d = read_json(tj)
        model = d.get("model") or {}
        vocab = model.get("vocab")
        id2tok: dict[int, str] = {}
        if isinstance(vocab, dict):
            id2tok = {int(i): t for t, i in vocab.items()}
        elif isinstance(vocab, list):  # Unigram: [[token, score], ...]
            id2tok = {i: (e[0] if isinstance(e, list) else str(e)) for i, e in enumerate(vocab)}
        for a in d.get("added_tokens") or []:
            id2tok[int(a["id"])] = a["content"]
        rules = {k: d.get(k) for k in ("normalizer", "pre_tokenizer", "decoder")}
        rules["model"] = {k: v for k, v in model.items() if k != "vocab"}
        digest = hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()
        return id2tok, digest
    files = [root / f for f in TOKENIZER_FILES[1:6] if (root / f).is_file()]
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return None, h.hexdigest()


def _describe_vocab_diff(a: dict[int, str], b: dict[int, str], na: str, nb: str) -> str:
    diff = sorted(i for i in set(a) | set(b) if a.get(i) != b.get(i))
    i = diff[0]
    return (
        f"vocabularies differ ({na}: {len(a)} tokens, {nb}: {len(b)} tokens; {len(diff)} ids "
        f"map differently, first id {i}: {a.get(i, '<absent>')!r} vs {b.get(i, '<absent>')!r})"
    )


def tokenizer_problems(
    roots: dict[str, Path | None], reference: str, policy: str = "error"
) -> tuple[list[str], list[str]]:
    """(problems, notes) comparing every input's tokenizer with ``reference``'s.

    With ``policy="allow"`` a difference is a note, not a problem."""
    if policy not in TOKENIZER_POLICIES:
        raise ValueError(
            f"unknown tokenizer policy {policy!r}; choose one of: {', '.join(TOKENIZER_POLICIES)}"
        )
    views = {n: _tokenizer_view(r) for n, r in roots.items() if r is not None}
    missing = [n for n, v in views.items() if v is None]
    notes = [f"tokenizer not checked for {n}: no tokenizer files" for n in missing]
    ref = views.get(reference)
    if ref is None:
        return [], notes
    problems = []
    for name, v in views.items():
        if name == reference or v is None:
            continue
        what = None
        if (v[0] is None) != (ref[0] is None):
            what = "one has tokenizer.json and the other only sentencepiece/vocab files"
        elif v[0] is not None and v[0] != ref[0]:
            what = _describe_vocab_diff(v[0], ref[0], name, reference)
        elif v[1] != ref[1]:
            what = "the tokenization rules (normalizer, pre-tokenizer or merges) differ"
        if what is None:
            continue
        if policy == "allow":
            notes.append(f"tokenizer of {name} differs from {reference}'s ({what}); allowed")
        else:
            problems.append(
                f"the tokenizer of {name} differs from {reference}'s: {what}. Token ids then mean "
                "different strings in the two models and the merged weights are garbled; use "
                "checkpoints with one tokenizer, or pass --tokenizer-policy allow "
                "(tokenizer_policy='allow') if you know the shared ids agree"
            )
    return problems, notes


# ---------------------------------------------------------------- copying


def _chat_template_of(root: Path) -> dict[str, object]:
    """Where ``root`` keeps its chat format: template files and tokenizer_config keys."""
    found: dict[str, object] = {}
    for f in CHAT_TEMPLATE_FILES:
        if (root / f).is_file():
            found[f] = root / f
    tc = root / "tokenizer_config.json"
    if tc.is_file():
        cfg = read_json(tc)
        for k in _TEMPLATE_KEYS:
            if k in cfg:
                found[f"tokenizer_config:{k}"] = cfg[k]
    return found


def copy_side_files(
    dst: Path,
    roots: dict[str, Path | None],
    tokenizer_from: str = "new-base",
    chat_template_from: str = "post",
) -> tuple[dict[str, dict], list[str]]:
    """Copy the output's non-weight files into ``dst``; return ({file: {from, sha256}}, notes).

    ``roots`` maps ``"new-base"`` and ``"post"`` to their directories (None: in memory)."""
    for flag, v in (("tokenizer_from", tokenizer_from), ("chat_template_from", chat_template_from)):
        if v not in SIDES:
            raise ValueError(f"unknown {flag} {v!r}; choose one of: {', '.join(SIDES)}")
    notes: list[str] = []
    plan: dict[str, tuple[str, Path]] = {}  # output file -> (side, source file)
    nb = roots.get("new-base")
    if nb is not None:
        for f in input_files(nb):
            if (
                f.name in _NEVER_COPY
                or f.name.endswith(WEIGHT_SUFFIXES)
                or f.name in TOKENIZER_FILES
                or f.name in CHAT_TEMPLATE_FILES
            ):
                continue
            plan[f.name] = ("new-base", f)
    tok_root = roots.get(tokenizer_from)
    if tok_root is not None:
        for name in TOKENIZER_FILES:
            if (tok_root / name).is_file():
                plan[name] = (tokenizer_from, tok_root / name)
    elif nb is not None or roots.get("post") is not None:
        notes.append(f"the {tokenizer_from} has no directory; no tokenizer files copied")
    chat_root = roots.get(chat_template_from)
    chat = _chat_template_of(chat_root) if chat_root is not None else {}
    for name in CHAT_TEMPLATE_FILES:
        if isinstance(chat.get(name), Path):
            plan[name] = (chat_template_from, chat[name])
    if chat_root is not None and not any(
        k in chat
        for k in ("chat_template.jinja", "chat_template.json", "tokenizer_config:chat_template")
    ):
        notes.append(
            f"the {chat_template_from} model has no chat template, so the output has none; pass "
            "--chat-template-from with the other side to take its template"
        )
    files: dict[str, dict] = {}
    for name, (side, src) in sorted(plan.items()):
        shutil.copy2(src, dst / name)
        files[name] = {"from": side}
    tc = dst / "tokenizer_config.json"
    if (
        tc.is_file()
        and chat_root is not None
        and plan["tokenizer_config.json"][0] != chat_template_from
    ):
        cfg = read_json(tc)
        for k in _TEMPLATE_KEYS:
            cfg.pop(k, None)
            if f"tokenizer_config:{k}" in chat:
                cfg[k] = chat[f"tokenizer_config:{k}"]
        atomic_write_json(tc, cfg)
        files["tokenizer_config.json"]["from"] = (
            f"{plan['tokenizer_config.json'][0]} ({', '.join(_TEMPLATE_KEYS)} from {chat_template_from})"
        )
    for name, f in zip(sorted(files), hash_files([dst / n for n in sorted(files)]), strict=True):
        files[name]["sha256"] = f
    return files, notes
