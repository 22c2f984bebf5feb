import math

import pytest
import torch
import torch.nn.functional as F

from fmlab.core.data import AdditionTask
from fmlab.core.evaluate import generate, lm_loss, perplexity, task_accuracy


def _brute_nll(model, ids, window, stride):
    """Token-by-token reference: each scored token sees exactly the context the strided
    evaluation gives it."""
    total, n, prev_end = 0.0, 0, 1
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + window, len(ids))
        for pos in range(max(prev_end, begin + 1), end):
            logits = model(input_ids=ids[begin:pos][None]).logits[0, -1]
            total += float(F.cross_entropy(logits[None], ids[pos][None]))
            n += 1
        prev_end = end
        if end == len(ids):
            break
    return total / n, n


@torch.no_grad()
@pytest.mark.parametrize(("window", "stride"), [(16, 8), (16, 15), (64, 5), (100, 50)])
def test_sliding_window_perplexity_matches_brute_force(tiny_model, window, stride):
    tiny_model.eval()
    ids = torch.randint(len_vocab := tiny_model.config.vocab_size, (45,))
    assert len_vocab > 0
    got = perplexity(tiny_model, ids, window=window, stride=stride)
    nll, n = _brute_nll(tiny_model, ids, window, stride)
    assert got["tokens"] == n == 44  # every token but the first, exactly once
    assert got["nll"] == pytest.approx(nll, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(nll), rel=1e-5)


def test_perplexity_validates(tiny_model):
    with pytest.raises(ValueError, match="stride"):
        perplexity(tiny_model, [1, 2, 3], window=4, stride=4)
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(tiny_model, [1])


def test_lm_loss_uniform_model_is_log_vocab(tiny_model):
    with torch.no_grad():
        for p in tiny_model.lm_head.parameters():
            p.zero_()  # tied: zero embeddings -> all logits 0 -> uniform
    blocks = torch.randint(tiny_model.config.vocab_size, (5, 9))
    assert lm_loss(tiny_model, blocks, batch_size=2) == pytest.approx(
        math.log(tiny_model.config.vocab_size), rel=1e-5
    )


def test_generate_is_greedy_and_batch_invariant(tiny_model, bpe_tokenizer):
    prompts = ["1+1=", "a much longer prompt than the first one", "x"]
    batched = generate(tiny_model, bpe_tokenizer, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(tiny_model, bpe_tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single  # left padding does not change greedy outputs


def test_task_accuracy_counts_verified_answers(tiny_model, bpe_tokenizer):
    task = AdditionTask(digits=2)
    exs = task.generate(4, seed=0)
    res = task_accuracy(tiny_model, bpe_tokenizer, task, exs, max_new_tokens=4)
    assert res["n"] == 4 and 0.0 <= res["accuracy"] <= 1.0 and len(res["completions"]) == 4


def test_auroc_matches_pairwise_counting():
    import itertools

    import numpy as np

    from fmlab.core.evaluate import auroc

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 40).astype(float)  # many ties
    y = rng.random(40) < 0.4
    pairs = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(s[y], s[~y])]
    assert auroc(s, y) == pytest.approx(sum(pairs) / len(pairs))
    assert auroc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc([0.1, 0.2], [1, 1])
