import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmlab.core.data import (
    AdditionTask,
    CountdownTask,
    Document,
    SudokuTask,
    code_documents,
    extract_answer,
    get_task,
    load_corpus,
    make_fact_world,
    pack_documents,
    split_documents,
    unigram_entropy,
)
from fmlab.core.data.tasks import _count_solutions


def test_builtin_corpora_are_offline_and_nonempty():
    prose = load_corpus("prose")
    assert len(prose) > 50 and sum(len(d.text) for d in prose) > 400_000
    code = code_documents(max_files=20)
    assert len(code) == 20 and all("def " in d.text or "import" in d.text for d in code[:5])


def test_split_is_deterministic_disjoint_and_order_free():
    docs = [Document(f"d{i}", f"text {i}", "t") for i in range(200)]
    a = split_documents(docs, seed=3)
    b = split_documents(list(reversed(docs)), seed=3)
    assert a == b
    ids = [d.id for part in a.values() for d in part]
    assert len(ids) == len(set(ids)) == 200
    assert 160 <= len(a["train"]) <= 190 and len(a["val"]) >= 5
    # adding documents does not move existing ones across splits
    c = split_documents([*docs, *(Document(f"x{i}", "", "t") for i in range(50))], seed=3)
    where = {d.id: k for k, v in a.items() for d in v}
    where2 = {d.id: k for k, v in c.items() for d in v}
    moved = sum(where[i] != where2[i] for i in where)
    assert moved < 20  # cut points shift a little; most documents stay
    assert split_documents(docs, seed=4) != a


def test_split_validates_fractions():
    with pytest.raises(ValueError, match="sum to 1"):
        split_documents([], fractions=(0.5, 0.2, 0.2))


def test_user_files(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\fsecond doc")
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n\n{"text": "y"}\n')
    docs = load_corpus(tmp_path)
    assert [d.text for d in docs] == ["first doc", "second doc", "x", "y"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1.*'text'"):
        load_corpus(bad)
    with pytest.raises(ValueError, match="prose, code"):
        load_corpus("no-such-corpus")


def test_pack_and_unigram_entropy(bpe_tokenizer, prose_splits):
    blocks = pack_documents(bpe_tokenizer, prose_splits["val"], seq_len=32)
    assert blocks.shape[1] == 33 and blocks.dtype.is_floating_point is False
    h = unigram_entropy(blocks, len(bpe_tokenizer))
    assert 3.0 < h < 6.3  # below log(512) = 6.24 bound, above trivial
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_documents(bpe_tokenizer, [Document("a", "hi", "t")], seq_len=64)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_addition_has_carries_and_verifies(digits, seed):
    task = AdditionTask(digits=digits, min_carries=1)
    for ex in task.generate(5, seed=seed):
        a, b = ex.meta["a"], ex.meta["b"]
        assert len(str(a)) == len(str(b)) == digits
        assert AdditionTask.carries(a, b) >= 1
        assert task.verify(ex, f"The answer is\n{a + b}") == 1.0
        assert task.verify(ex, str(a + b + 1)) == 0.0


def test_countdown_verifier():
    task = CountdownTask(n_numbers=3)
    exs = task.generate(20, seed=0)
    for ex in exs:
        assert task.verify(ex, f"<answer>{ex.answer}</answer>") == 1.0
    ex = exs[0]
    a, b, _c = ex.meta["numbers"]
    assert task.verify(ex, f"{a}+{b}") == 0.0  # does not use every number
    assert task.verify(ex, "__import__('os')") == 0.0  # never evaluated
    assert task.verify(ex, "1/0") == 0.0


def test_sudoku_unique_and_verifier():
    task = SudokuTask(blanks=8)
    for ex in task.generate(10, seed=1):
        assert ex.meta["puzzle"].count(0) == 8
        assert _count_solutions(list(ex.meta["puzzle"])) == 1
        assert task.verify(ex, ex.answer) == 1.0
        wrong = ex.answer.replace("1", "x").replace("2", "1").replace("x", "2")
        # swapping digits keeps validity but breaks the givens (at least one given is 1 or 2)
        assert task.verify(ex, wrong) == 0.0


def test_reward_fn_has_trl_signature():
    task = get_task("addition", digits=2)
    exs = task.generate(3, seed=0)
    reward = task.reward_fn()
    rs = reward(
        prompts=[e.prompt for e in exs],
        completions=[exs[0].answer, "0", "no"],
        meta=[e.meta for e in exs],
    )
    assert rs == [1.0, 0.0, 0.0]
    conv = [[{"role": "assistant", "content": exs[0].answer}]]
    assert reward(prompts=[exs[0].prompt], completions=conv, meta=[exs[0].meta]) == [1.0]
    with pytest.raises(ValueError, match="choose one of"):
        get_task("chess")


def test_extract_answer():
    assert extract_answer("think...\n<answer> 42 </answer>") == "42"
    assert extract_answer("blah\nAnswer: 7\n") == "7"
    assert extract_answer("") == ""


def test_fact_world():
    w = make_fact_world(30, seed=2)
    assert len(set(w.entities)) == 30 and len(w.facts) == 30 * 4
    assert make_fact_world(30, seed=2) == w
    a, b = w.split((0.5, 0.5), seed=0)
    assert {f.entity for f in a}.isdisjoint({f.entity for f in b})
    f = a[0]
    assert f.entity in f.statement() and f.value in f.statement() and f.entity in f.question()
    json.dumps([f.__dict__ for f in a])  # serializable


def test_split_documents_keeps_identical_texts_in_one_split():
    docs = [Document(f"d{i}", f"text {i % 7}", "t") for i in range(40)]  # every text ~6 times
    for seed in range(5):
        s = split_documents(docs, seed=seed)
        where = {}
        for name, part in s.items():
            for d in part:
                where.setdefault(d.text, set()).add(name)
        assert all(len(v) == 1 for v in where.values())
        assert sum(map(len, s.values())) == 40
