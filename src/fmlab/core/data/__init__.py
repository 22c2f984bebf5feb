"""Data substrate: offline corpora, seeded synthetic tasks with verifiers, fact worlds."""

from fmlab.core.data.corpora import (
    CORPORA,
    Document,
    code_documents,
    encode_chat_sft,
    load_corpus,
    pack_documents,
    prose_documents,
    read_text_documents,
    split_documents,
    unigram_entropy,
)
from fmlab.core.data.facts import RELATIONS, Fact, FactWorld, make_fact_world
from fmlab.core.data.tasks import (
    TASKS,
    AdditionTask,
    CountdownTask,
    Example,
    SudokuTask,
    extract_answer,
    get_task,
)

__all__ = [
    "CORPORA",
    "RELATIONS",
    "TASKS",
    "AdditionTask",
    "CountdownTask",
    "Document",
    "Example",
    "Fact",
    "FactWorld",
    "SudokuTask",
    "code_documents",
    "encode_chat_sft",
    "extract_answer",
    "get_task",
    "load_corpus",
    "make_fact_world",
    "pack_documents",
    "prose_documents",
    "read_text_documents",
    "split_documents",
    "unigram_entropy",
]
