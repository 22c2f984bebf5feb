"""Offline text corpora with deterministic document-level splits, and token packing.

Built-in corpora need nothing but the Python standard library:
- ``"prose"``: the language reference in ``pydoc_data.topics`` (~465 KB of English).
- ``"code"``: the standard library's own ``.py`` files.
User ``.txt`` files (one document per file, or per form-feed-separated part), ``.jsonl``
files (one document per line, text under a key) and local ``datasets`` directories
(``save_to_disk`` output) are accepted wherever a corpus is.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "CORPORA",
    "Document",
    "code_documents",
    "encode_chat_sft",
    "load_corpus",
    "pack_documents",
    "prose_documents",
    "read_text_documents",
    "split_documents",
    "unigram_entropy",
]


@dataclass(frozen=True)
class Document:
    """One document: a stable id (used for splitting), its text and where it came from."""

    id: str
    text: str
    source: str


def prose_documents() -> list[Document]:
    """English prose: one document per topic of ``pydoc_data.topics``, in sorted order."""
    from pydoc_data.topics import topics

    return [Document(f"prose/{k}", topics[k], "pydoc_data.topics") for k in sorted(topics)]


def code_documents(max_files: int | None = 400, max_chars: int = 40_000) -> list[Document]:
    """Python code: the standard library's top-level ``.py`` files, in sorted order.

    Args:
        max_files: cap on the number of files (None for all).
        max_chars: files longer than this are truncated (keeps the corpus balanced).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if max_files is not None:
        files = files[:max_files]
    docs = []
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")[:max_chars]
        if text.strip():
            docs.append(Document(f"code/{p.name}", text, str(root)))
    return docs


def read_text_documents(path: str | os.PathLike, text_key: str = "text") -> list[Document]:
    """Documents from a user path: ``.txt``, ``.jsonl``, a directory of them, or a ``datasets``
    directory written by ``save_to_disk``.

    A ``.txt`` file is one document unless it contains form feeds (``\\f``), which separate
    documents. Each ``.jsonl`` line is one document with its text under ``text_key``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such corpus file or directory")
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _datasets_documents(path, text_key)
        files = sorted([*path.rglob("*.txt"), *path.rglob("*.jsonl")])
        if not files:
            raise ValueError(f"{path}: directory holds no .txt or .jsonl files")
        return [d for f in files for d in read_text_documents(f, text_key)]
    if path.suffix == ".jsonl":
        docs = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from e
                if not isinstance(row, dict) or not isinstance(row.get(text_key), str):
                    raise ValueError(
                        f"{path}:{i + 1}: expected an object with a string field "
                        f"{text_key!r}; pass text_key= to use another field"
                    )
                docs.append(Document(f"{path.name}/{i}", row[text_key], str(path)))
        return docs
    text = path.read_text(encoding="utf-8", errors="replace")
    parts = [p for p in text.split("\f") if p.strip()]
    return [Document(f"{path.name}/{i}", p, str(path)) for i, p in enumerate(parts)]


def _datasets_documents(path: Path, text_key: str) -> list[Document]:
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"{path} is a `datasets` directory; install the library with: pip install datasets"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets([ds[k] for k in sorted(ds)])
    if text_key not in ds.column_names:
        raise ValueError(f"{path}: no column {text_key!r}; columns are {ds.column_names}")
    return [Document(f"{path.name}/{i}", t, str(path)) for i, t in enumerate(ds[text_key])]


CORPORA: dict[str, Callable[[], list[Document]]] = {
    "prose": prose_documents,
    "code": code_documents,
}


def load_corpus(name_or_path: str | os.PathLike, text_key: str = "text") -> list[Document]:
    """A built-in corpus by name (``prose``, ``code``) or the documents at a user path."""
    key = str(name_or_path)
    if key in CORPORA:
        return CORPORA[key]()
    if Path(key).expanduser().exists():
        return read_text_documents(key, text_key)
    raise ValueError(
        f"unknown corpus {key!r}; choose one of: {', '.join(CORPORA)}, or pass a .txt/.jsonl "
        "file or a directory"
    )


def split_documents(
    docs: Sequence[Document],
    fractions: Sequence[float] = (0.9, 0.05, 0.05),
    names: Sequence[str] = ("train", "val", "test"),
    seed: int = 0,
) -> dict[str, list[Document]]:
    """Deterministic document-level split by a hash of (seed, document id).

    A document's split depends only on its id and the seed, never on corpus order, so adding
    documents does not move existing ones between splits. Documents with identical text (the
    prose corpus has topics repeated under two ids) follow the first of them by id, so one text
    never lands in two splits. Every split with a positive fraction gets at least one document
    when there are enough documents.
    """
    if len(fractions) != len(names):
        raise ValueError("fractions and names must have the same length")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")

    first_id: dict[str, str] = {}
    for d in sorted(docs, key=lambda d: d.id):
        first_id.setdefault(d.text, d.id)

    def u(doc: Document) -> tuple[float, str]:
        h = hashlib.sha256(f"{seed}:{first_id[doc.text]}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64, doc.id

    ranked = sorted(docs, key=u)
    out: dict[str, list[Document]] = {}
    start, cum = 0, 0.0
    for i, (name, frac) in enumerate(zip(names, fractions, strict=True)):
        cum += frac
        stop = len(ranked) if i == len(names) - 1 else round(cum * len(ranked))
        if frac > 0 and stop <= start and start < len(ranked):
            stop = start + 1
        while 0 < stop < len(ranked) and ranked[stop].text == ranked[stop - 1].text:
            stop += 1  # twins (same text, adjacent in the ranking) stay together
        out[name] = sorted(ranked[start:stop], key=lambda d: d.id)
        start = stop
    return out


def pack_documents(
    tokenizer, docs: Sequence[Document], seq_len: int, sep_token_id: int | None = None
) -> torch.Tensor:
    """Tokenize, join with a separator token and cut into ``(N, seq_len + 1)`` blocks.

    Each row holds ``seq_len`` inputs plus the next token, so ``x = row[:-1], y = row[1:]``.
    The tail that does not fill a block is dropped.
    """
    sep = tokenizer.bos_token_id if sep_token_id is None else sep_token_id
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d.text, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
    n = len(ids) // (seq_len + 1)
    if n == 0:
        raise ValueError(
            f"corpus has {len(ids)} tokens, fewer than one block of {seq_len + 1}; use a "
            "shorter seq_len or more text"
        )
    return torch.tensor(ids[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


def unigram_entropy(blocks: torch.Tensor, vocab_size: int) -> float:
    """Entropy in nats of the empirical token distribution of ``blocks`` (any shape).

    This is the loss of the best context-free predictor: a language model that learns anything
    about context must go below it.
    """
    counts = torch.bincount(blocks.reshape(-1), minlength=vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def encode_chat_sft(
    tokenizer, pairs: Sequence[tuple[str, str]], max_len: int | None = None, chat: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt, reply) pairs as right-padded ``(N, T)`` inputs and shifted labels.

    With ``chat`` the prompt is wrapped in the chat template as the user's turn; without it the
    reply follows the prompt text directly (completion-style post-training).
    ``labels[i, t]`` is the token after ``input_ids[i, t]`` when that token belongs to the
    reply (including the end-of-turn token), else -100, so the loss trains only the reply.
    Batches from :class:`fmlab.core.train.TensorSampler` feed ``causal_lm_loss``.
    """
    rows: list[tuple[list[int], int]] = []
    for user, reply in pairs:
        prompt = user
        if chat:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
            )
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p_ids + r_ids, len(p_ids)))
    width = max(len(ids) for ids, _ in rows)
    if max_len is not None and width > max_len:
        raise ValueError(f"a chat example has {width} tokens, more than max_len={max_len}")
    pad = tokenizer.pad_token_id
    x = torch.full((len(rows), width), pad, dtype=torch.long)
    y = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, n_prompt - 1 : len(ids) - 1] = torch.tensor(ids[n_prompt:])
    return x, y
