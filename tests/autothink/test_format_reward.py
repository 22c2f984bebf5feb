"""Format, normalisation and reward on hand-written completions, each with its exact value."""

import pytest

from fmlab.autothink import (
    FALLBACK,
    a1_reward,
    a2_reward,
    format_ok,
    format_reward,
    normalize,
    parse,
    reward,
)

GOOD = r"\boxed{B} <think> the ball is red, so B </think> \boxed{B}"


def r1(completion, answer="B", **kw):
    return reward(["q"], [completion], [answer], **kw)[0]


def test_parse_parts():
    p = parse(GOOD)
    assert (p.a1, p.think, p.a2, p.fallback) == ("B", "the ball is red, so B", "B", False)
    p = parse(FALLBACK + " <think> count them: 3 </think> \\boxed{3}")
    assert (p.a1, p.a2, p.fallback) == (FALLBACK, "3", True)
    p = parse(r"\boxed{Let's analyze the problem step by step.}<think>x</think>\boxed{4}")
    assert p.fallback and p.a2 == "4"
    assert parse(r"\boxed{7}") == type(p)(a1="7", think=None, a2=None)
    assert parse("") == type(p)(a1=None, think=None, a2=None)


def test_nested_braces_one_level():
    t = r"\boxed{\frac{1}{2}} <think> half </think> \boxed{\frac{1}{2}}"
    p = parse(t)
    assert p.a1 == p.a2 == r"\frac{1}{2}" and format_ok(t)
    assert normalize(p.a1) == "1/2" == normalize("0.5")


@pytest.mark.parametrize(
    "text, ok",
    [
        (GOOD, True),
        (FALLBACK + " <think> r </think> \\boxed{B}", True),
        ("  " + GOOD + "\n", True),  # surrounding whitespace is fine
        (r"\boxed{B} <think>   </think> \boxed{B}", False),  # empty think
        (r"\boxed{B} <think></think> \boxed{B}", False),
        (GOOD + " and more", False),  # text after the second box
        (GOOD + r" \boxed{C}", False),  # a third box
        (r"\boxed{B} <think> a </think> <think> b </think> \boxed{B}", False),  # two thinks
        (r"\boxed{B} <think> a <think> b </think> \boxed{B}", False),  # nested think tag
        (r"\boxed{B} \boxed{B}", False),  # no think block
        (r"so \boxed{B} <think> r </think> \boxed{B}", False),  # text before the first box
        (r"\boxed{B} <think> r </think> done", False),  # no second box
        (r"\boxed{} <think> r </think> \boxed{B}", False),  # empty first box
        (r"\boxed{B} <think> r", False),  # unterminated
        ("", False),
    ],
)
def test_format_ok(text, ok):
    assert format_ok(text) is ok


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("B", "B"),
        ("(b)", "B"),
        ("B.", "B"),
        ("(C) a red ball", "C"),
        ("The answer is C", "C"),
        ("Yes.", "yes"),
        ("TRUE", "yes"),
        ("no", "no"),
        ("1,000", "1000"),
        ("1000.0", "1000"),
        ("$-3$", "-3"),
        ("2/4", "1/2"),
        ("\\dfrac{3}{4}", "3/4"),
        ("  A  Red\n Ball. ", "a red ball"),
        ("\\text{Paris}", "paris"),
        (None, ""),
        (7, "7"),
    ],
)
def test_normalize(raw, norm):
    assert normalize(raw) == norm


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, 3.0),  # 0.9 + 1.1 + 1.0
        (r"\boxed{A} <think> r </think> \boxed{B}", 2.1),  # a1 wrong: 1.1 + 1.0
        (r"\boxed{B} <think> r </think> \boxed{A}", 1.9),  # a2 wrong: 0.9 + 1.0
        (r"\boxed{A} <think> r </think> \boxed{C}", 1.0),  # both wrong: format only
        (FALLBACK + r" <think> r </think> \boxed{B}", 2.4),  # 1.1 + 1.0 + 0.3 bonus
        (FALLBACK + r" <think> r </think> \boxed{A}", 1.0),  # fallback, a2 wrong: no bonus
        (r"\boxed{B} <think>  </think> \boxed{B}", 2.0),  # empty think: format 0
        (GOOD + " trailing words", 2.0),  # text after the second box: format 0
        (r"\boxed{B} <think> a </think> <think> b </think> \boxed{B}", 2.0),  # two thinks
        (r"\boxed{B}", 0.9),  # direct answer only
        ("no boxes at all", 0.0),
        ("", 0.0),
        (None, 0.0),  # not even a string: scores 0, never raises
        (12, 0.0),
    ],
)
def test_reward_exact(completion, expected):
    assert r1(completion) == pytest.approx(expected, abs=1e-12)


def test_reward_nested_braces_exact():
    t = r"\boxed{\frac{1}{2}} <think> half </think> \boxed{0.5}"
    assert reward(None, [t], ["1/2"]) == [pytest.approx(3.0)]


def test_reward_weights_and_bonus_are_parameters():
    fb = FALLBACK + r" <think> r </think> \boxed{B}"
    assert r1(fb, bonus=0.0) == pytest.approx(2.1)
    assert r1(GOOD, w1=1.0, w2=1.0, w_format=0.5) == pytest.approx(2.5)
    assert r1(r"\boxed{B} <think> r </think> \boxed{A}", w1=0.0) == pytest.approx(1.0)


def test_conversational_completions():
    convo = [[{"role": "assistant", "content": GOOD}]]
    assert reward([[{"role": "user", "content": "q"}]], convo, ["B"]) == [pytest.approx(3.0)]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": GOOD}]}]]
    assert reward(None, parts, ["B"]) == [pytest.approx(3.0)]
    bad = [[{"role": "assistant"}], [{"content": 5}], [None], {"oops": 1}]
    assert reward(None, bad, ["B"] * 4) == [0.0] * 4


def test_term_functions_sum_to_reward_with_official_weights():
    cs = [GOOD, FALLBACK + r" <think> r </think> \boxed{B}", r"\boxed{A}", "junk"]
    ans = ["B"] * 4
    terms = zip(
        a1_reward(None, cs, ans), a2_reward(None, cs, ans), format_reward(None, cs), strict=True
    )
    total = [0.9 * a + 1.1 * b + 1.0 * f for a, b, f in terms]
    assert total == pytest.approx(reward(None, cs, ans))


def test_multiple_acceptable_answers():
    assert r1(GOOD, answer=["b", "blue"]) == pytest.approx(3.0)


def test_reward_bad_columns_name_the_fix():
    with pytest.raises(ValueError, match="'answer' column"):
        reward(None, [GOOD])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        reward(None, [GOOD, GOOD], ["B"])
