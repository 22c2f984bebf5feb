"""`fmlab autothink answer|reward` on files and a saved tiny model."""

import json

import pytest
from typer.testing import CliRunner

from fmlab.cli import app

runner = CliRunner()
GOOD = r"\boxed{B} <think> red </think> \boxed{B}"


def test_reward_scores_a_jsonl(tmp_path):
    f = tmp_path / "c.jsonl"
    lines = [
        {"prompt": "q", "completion": GOOD, "answer": "B"},
        {"completion": [{"role": "assistant", "content": GOOD + " extra"}], "answer": "b"},
        {"completion": None, "answer": "B"},
    ]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    res = runner.invoke(app, ["autothink", "reward", "--completions", str(f)])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert [o["reward"] for o in out] == pytest.approx([3.0, 2.0, 0.0])
    res = runner.invoke(app, ["autothink", "reward", "--completions", str(f), "--w-format", "0"])
    assert [json.loads(x)["reward"] for x in res.stdout.splitlines()] == pytest.approx([2, 2, 0])


@pytest.mark.parametrize(
    "content, msg",
    [
        ("{not json\n", "c.jsonl:1: not valid JSON"),
        ('{"completion": "x"}\n', "'answer'"),
        ("", "no lines"),
    ],
)
def test_reward_bad_file_names_the_line(tmp_path, content, msg):
    f = tmp_path / "c.jsonl"
    f.write_text(content)
    res = runner.invoke(app, ["autothink", "reward", "--completions", str(f)])
    assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["autothink", "reward", "--completions", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_answer_on_a_saved_model(tmp_path, script_llama, script_tokenizer):
    script_llama.save_pretrained(tmp_path)
    script_tokenizer.chat_template = None  # plain prompts: the scripted model knows no chat
    try:
        script_tokenizer.save_pretrained(tmp_path)
    finally:
        from fmlab.core.models import CHAT_TEMPLATE

        script_tokenizer.chat_template = CHAT_TEMPLATE
    args = ["autothink", "answer", "--model", str(tmp_path), "--no-instruction", "--device", "cpu"]
    res = runner.invoke(app, [*args, "Q1", "Q3"])
    assert res.exit_code == 0, res.output
    a, b = (json.loads(x) for x in res.stdout.splitlines())
    assert (a["answer"], a["thought"], a["tokens"]) == ("C", False, 2)
    assert (b["answer"], b["thought"], b["tokens"]) == ("A", True, 5)
    assert {"answer", "thought", "confidence", "tokens", "seconds"} <= a.keys()
    res = runner.invoke(app, [*args, "--tau", "0.5", "Q3"])
    assert json.loads(res.stdout)["answer"] == "B"


def test_answer_bad_model_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["autothink", "answer", "--model", str(tmp_path / "nope"), "q"])
    assert res.exit_code == 2 and "unknown model" in res.output and "Traceback" not in res.output
