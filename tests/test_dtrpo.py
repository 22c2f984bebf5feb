"""dTRPO: the block-diffusion LM, the trajectory sampler, the estimators and the trainers."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from fmlab.core.io import CheckpointError
from fmlab.core.train import TrainConfig
from fmlab.dtrpo.data import PairSet, build_tokenizer, make_items, make_pairs, reward
from fmlab.dtrpo.estimators import (
    ESTIMATORS,
    estimate,
    exact_expectation_dtrpo,
    log_ratio,
    single_pass_max_abs_diff,
)
from fmlab.dtrpo.model import layout, load_dllm, make_dllm, save_dllm
from fmlab.dtrpo.sampler import SamplerConfig, sample, transfer_schedule
from fmlab.dtrpo.train import ARMS, PrefConfig, evaluate, pretrain, train_arm


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def items():
    return make_items(4, seed=3)  # 12 prompts of three tasks, different lengths


def _model(tok, seed=0):
    return make_dllm(tok, "llama-tiny", gen_length=12, block_length=4, seed=seed).eval()


def _perturbed(model, scale=0.05, seed=1):
    """A copy with noise on every weight: a policy at moderate KL from ``model``."""
    other = model.copy()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def test_layout_mask_rules():
    pids = torch.tensor([[9, 5, 6]])
    real = torch.tensor([[False, True, True]])
    ans = torch.arange(10, 14)[None]  # 2 blocks of 2
    _, pos, m = layout(pids, real, ans, ans.clone(), block_length=2)
    m = m[0]
    P, c, n = 3, slice(3, 7), slice(7, 11)
    assert pos[0].tolist() == [0, 0, 1, 2, 3, 4, 5, 2, 3, 4, 5]
    assert not m[1:, 0].any() and m[0, 0]  # padding: only itself
    assert m[P:, 1:P].all()  # everyone sees the real prompt
    assert not m[1:P, P:].any()  # the prompt sees no answer
    cm = m[c, c]
    assert cm.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    nc = m[n, c]  # noised block b sees clean blocks < b only
    assert nc.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    nn = m[n, n]
    assert nn.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert not m[c, n].any()


def test_sampler_records_every_unmasking(tok, items):
    m = _model(tok)
    cfg = SamplerConfig(steps_per_block=3, temperature=1.0)
    tr = sample(m, [it.prompt for it in items], cfg, torch.Generator().manual_seed(0))
    assert (tr.answer != m.mask_id).all()
    assert (tr.block_steps == 3).all() and (tr.forwards == 9).all()
    sched = transfer_schedule(4, 3)
    assert sched == [2, 1, 1]
    for b in range(m.n_blocks):
        st = tr.bstep[:, 4 * b : 4 * b + 4]
        for s, k in enumerate(sched):
            assert ((st == s).sum(1) == k).all()
    # same seed, same trajectories
    tr2 = sample(m, [it.prompt for it in items], cfg, torch.Generator().manual_seed(0))
    assert torch.equal(tr.answer, tr2.answer) and torch.equal(tr.bstep, tr2.bstep)


def test_greedy_replay_matches_record(tok, items):
    """Replaying each recorded state reproduces the greedy choice made at that step."""
    from fmlab.dtrpo.estimators import exact_token_logprobs
    from fmlab.dtrpo.model import token_logprobs

    m = _model(tok)
    tr = sample(m, [it.prompt for it in items], SamplerConfig(steps_per_block=2, temperature=0.0))
    lp, _ = exact_token_logprobs(m, tr)
    # each recorded token was the argmax at its state, so its log-prob is the state's max
    for b in range(m.n_blocks):
        sl = slice(4 * b, 4 * b + 4)
        for s in range(2):
            noised = torch.where(tr.bstep[:, sl] < s, tr.answer[:, sl], m.mask_id)
            clean = tr.answer[:, : 4 * b] if b else None
            ids, pos, att = layout(tr.prompt_ids, tr.prompt_real, clean, noised, 4, b)
            with torch.no_grad():
                best = token_logprobs(m.logits(ids, pos, att)[:, -4:], m.banned).max(-1).values
            hit = tr.bstep[:, sl] == s
            assert torch.allclose(lp[:, sl][hit], best[hit], atol=1e-5)


def test_threshold_decoding_saves_forwards(tok, items):
    m = _model(tok)
    prompts = [it.prompt for it in items]
    fixed = sample(m, prompts, SamplerConfig(steps_per_block=4, temperature=0.0))
    # a threshold no token reaches: one token per step (= 4 steps per block)
    slow = sample(m, prompts, SamplerConfig(steps_per_block=4, temperature=0.0, threshold=0.999))
    assert torch.equal(slow.forwards, fixed.forwards)
    fast = sample(m, prompts, SamplerConfig(steps_per_block=4, temperature=0.0, threshold=0.01))
    assert (fast.forwards < fixed.forwards).all() and (fast.answer != m.mask_id).all()


def test_single_pass_equals_separate_passes(tok, items):
    m = _model(tok)
    tr = sample(m, [it.prompt for it in items], SamplerConfig(steps_per_block=2),
                torch.Generator().manual_seed(1))  # fmt: skip
    for model in (m, _perturbed(m)):
        assert single_pass_max_abs_diff(model, tr, range(6)) < 1e-5
        # in float64 only rounding is left: the layout itself is exact
        assert single_pass_max_abs_diff(model.copy(torch.float64), tr, range(6)) < 1e-10
    a = estimate(m, tr, "dtrpo", seed=5)
    b = estimate(m, tr, "dtrpo", seed=5, single_pass=False)
    assert torch.allclose(a.value, b.value, atol=1e-4)
    assert (a.forwards == 1).all() and (b.forwards == m.n_blocks).all()


def test_dtrpo_estimator_is_unbiased(tok, items):
    """Mean over many step draws → the exact trajectory log-ratio.

    Tolerance: per trajectory |mean − exact| < 4 standard errors of the mean (a two-sided
    z-test at ~6e-5 per trajectory), and the expectation by enumeration equals exact to 1e-3.
    """
    ref = _model(tok)
    pol = _perturbed(ref)
    tr = sample(ref, [it.prompt for it in items], SamplerConfig(steps_per_block=4),
                torch.Generator().manual_seed(2))  # fmt: skip
    with torch.no_grad():
        exact = log_ratio(pol, ref, tr, "exact").value
        enum = exact_expectation_dtrpo(pol, tr) - exact_expectation_dtrpo(ref, tr)
        draws = torch.stack([log_ratio(pol, ref, tr, "dtrpo", seed=s).value for s in range(200)])
    assert exact.abs().mean() > 0.1  # the policies really differ
    assert torch.allclose(enum, exact, atol=1e-3)
    se = draws.std(0) / math.sqrt(len(draws))
    assert ((draws.mean(0) - exact).abs() < 4 * se + 1e-4).all()
    assert draws.std(0).max() > 0  # it is a random estimator, not the exact value in disguise


def test_all_estimators_run_and_count(tok, items):
    m = _model(tok)
    tr = sample(m, [it.prompt for it in items], SamplerConfig(steps_per_block=4))
    fwd = {e: estimate(m, tr, e, n_mc=3, shrink=2).forwards for e in ESTIMATORS}
    assert (fwd["exact"] == 12).all() and (fwd["dtrpo"] == 1).all() and (fwd["d1"] == 1).all()
    assert (fwd["elbo"] == 3).all() and (fwd["tracerl"] == 6).all()
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate(m, tr, "nope")


def test_save_load_round_trip(tok, items, tmp_path):
    m = _model(tok)
    save_dllm(m, tmp_path / "m")
    back = load_dllm(tmp_path / "m")
    assert (back.gen_length, back.block_length, back.mask_id) == (12, 4, m.mask_id)
    prompts = [it.prompt for it in items]
    a = sample(m, prompts, SamplerConfig(temperature=0.0))
    b = sample(back, prompts, SamplerConfig(temperature=0.0))
    assert torch.equal(a.answer, b.answer)
    with pytest.raises(FileExistsError):
        save_dllm(m, tmp_path / "m")
    from fmlab.core.models.tiny import build_model

    build_model("llama-tiny", len(tok)).save_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="not a diffusion LM"):
        load_dllm(tmp_path / "plain")


def test_rewards_and_splits():
    train = make_items(50, seed=0)
    for it in train[:9]:
        assert reward(it, it.example.answer) == 1.0
        assert reward(it, "") == 0.0
    sud = next(it for it in train if it.task == "sudoku")
    blanks = [i for i, v in enumerate(sud.example.meta["puzzle"]) if v == 0]
    digits = [c for c in sud.example.answer if c.isdigit()]
    digits[blanks[0]] = "1" if digits[blanks[0]] != "1" else "2"  # one blank wrong
    assert reward(sud, "".join(digits)) == pytest.approx(0.9 * (len(blanks) - 1) / len(blanks))


def test_one_split_function_is_disjoint_and_sealed():
    from fmlab.core.experiment import SealedSplitError
    from fmlab.dtrpo.data import SPLIT_SIZES, dtrpo_splits, split_items, take

    splits = dtrpo_splits(n_train=20)
    s = splits.summary()
    assert s["disjoint"] and not any(s["overlaps"].values())
    assert s["key"] == "item_prompt" and s["sealed"] == ["test"]
    assert {n: v["n"] for n, v in s["splits"].items()} == {
        **{n: 3 * k for n, k in SPLIT_SIZES.items()},
        "train": 60,
    }
    with pytest.raises(SealedSplitError):
        splits["test"]  # sealed until open_test()
    # the test split depends on the seed only, never on the SFT split's size
    assert split_items(0, 20)["test"] == split_items(0, 7)["test"]
    assert split_items(0, 20)["test"] != split_items(1, 20)["test"]
    test = take(splits.open_test()["test"], 5)
    assert len(test) == 15 and [it.task for it in test[:3]] == ["addition", "countdown", "sudoku"]
    with pytest.raises(ValueError, match="200 items per task"):
        take(splits["test"], 500)


def test_overlapping_prompts_fail_on_purpose(monkeypatch):
    """A caller that builds its prompts outside the split function is caught at run time."""
    from fmlab.core.experiment import SplitError
    from fmlab.dtrpo import data

    # the old bench built pair prompts with make_items(200, 2000 + seed): test prompts leak
    with pytest.raises(SplitError, match="'pairs' and 'test' share"):
        data.check_disjoint({"pairs": make_items(200, 2000)})
    ok = data.check_disjoint({"pairs": list(data.split_items(0, 1)["pairs"])})
    assert ok["disjoint"]
    # a split builder that leaks test prompts into the SFT split raises before anything trains
    real = data._split_items

    def leaky(seed, n_train):
        out = dict(real(seed, n_train))
        out["train"] = out["train"] + out["test"][:3]
        return out

    monkeypatch.setattr(data, "_split_items", leaky)
    with pytest.raises(SplitError, match="share 3 items"):
        data.dtrpo_splits(n_train=5)


def test_pretrain_learns_and_pairs_round_trip(tok, tmp_path):
    torch.manual_seed(0)
    m = make_dllm(tok, "llama-tiny")  # 24 answer tokens: room for a sudoku grid
    items = make_items(30, seed=0)
    res = pretrain(m, items, TrainConfig(steps=40, batch_size=16, lr=3e-3, progress=False))
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < 0.7 * losses[0]
    ps = make_pairs(m, make_items(6, seed=5), k=4, seed=0)
    assert len(ps) > 0 and (ps.r_chosen > ps.r_rejected).all()
    ps.save(tmp_path / "pairs")
    back = PairSet.load(tmp_path / "pairs")
    assert torch.equal(back.chosen.answer, ps.chosen.answer)
    assert torch.equal(back.rejected.bstep, ps.rejected.bstep)
    assert back.items == ps.items
    with pytest.raises(CheckpointError, match="fmlab dtrpo pairs"):
        PairSet.load(tmp_path)


@pytest.mark.parametrize("arm", list(ARMS))
def test_every_arm_trains(tok, arm):
    torch.manual_seed(0)
    ref = make_dllm(tok, "llama-tiny")
    pretrain(ref, make_items(20, 0), TrainConfig(steps=20, batch_size=16, progress=False))
    ps = make_pairs(ref, make_items(4, seed=5), k=4, seed=0)
    policy = ref.copy()
    before = [p.detach().clone() for p in policy.net.parameters()]
    cfg = PrefConfig(arm=arm, group=4, prompts_per_step=2)
    tcfg = TrainConfig(steps=2, batch_size=3, lr=1e-3, warmup_steps=0, progress=False)
    res, count = train_arm(policy, ref, cfg, tcfg, ps, make_items(4, 5))
    assert math.isfinite(res.train_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.net.parameters(), strict=True))
    if arm == "dtrpo":
        assert count.policy == 2 * 2 * 3 and count.ref == count.policy  # one forward each
    if arm == "dpo-exact":
        assert count.policy == 2 * 2 * 3 * 12  # T = 3 blocks × 4 steps per response
    if arm in ("grpo", "wd1"):
        assert count.sampling > 0
    acc = evaluate(policy, make_items(2, 9))
    assert 0 <= acc["accuracy"] <= 1


def test_cli_round_trip(tmp_path):
    from typer.testing import CliRunner

    from fmlab.cli import app

    r = CliRunner()
    base = ["dtrpo"]
    res = r.invoke(app, [*base, "pretrain", "--out", str(tmp_path / "ref"), "--steps", "10",
                         "--size", "llama-tiny", "--n-per-task", "10", "--batch-size", "8"])  # fmt: skip
    assert res.exit_code == 0, res.output
    model = str(tmp_path / "ref" / "model")
    res = r.invoke(app, [*base, "sample", "--model", model, "--n", "1"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert len(rows) == 3 and all(len(x["unmask_step"]) == 24 for x in rows)
    assert "sample" in res.stderr  # progress goes to stderr, stdout stays JSON lines
    res = r.invoke(app, [*base, "pairs", "--model", model, "--out", str(tmp_path / "p"),
                         "--n-per-task", "4", "--k", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["pairs"] > 0
    assert "pairs: 4 samples x 12 prompts" in res.stderr
    res = r.invoke(app, [*base, "train", "--model", model, "--out", str(tmp_path / "t"),
                         "--pairs", str(tmp_path / "p"), "--steps", "2", "--batch-size", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "t" / "counts.json").read_text())["policy"] == 2 * 2 * 2
    res = r.invoke(app, [*base, "eval", "--model", str(tmp_path / "t" / "model"),
                         "--n-per-task", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert "eval (test split)" in res.stderr and "held-out test split" in res.stderr
    assert "per_task" in ev and ev["split"]["name"] == "test" and ev["split"]["items"] == 6
    # bad input: a clear error naming the fix, nothing written
    res = r.invoke(app, [*base, "train", "--model", model, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--pairs" in res.output
    res = r.invoke(app, [*base, "eval", "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "fmlab dtrpo pretrain" in res.output


def test_quick_bench_on_the_harness(tmp_path, monkeypatch):
    """The bench's record carries the disjoint splits, every arm's tuning, the intervals and
    costs in forwards and tokens; a rerun takes everything from its memo."""
    from fmlab.core.results import load_record
    from fmlab.dtrpo import bench, train

    cfg = bench.BenchConfig.quick()
    paths = bench.run(cfg, tmp_path, log=lambda m: None)
    assert sorted(p.name for p in paths) == ["estimators.json", "training.json"]
    est = load_record(tmp_path / "estimators.json")
    assert est["metrics"]["single_pass_max_abs_diff"] < 1e-5
    assert {"d1", "elbo-n1", "tracerl-s2", "exact"} <= set(est["baselines"])
    tr = load_record(tmp_path / "training.json")
    sp = tr["splits"]
    assert sp["disjoint"] and sp["test_opened"] and sp["test_seeds"] == [1, 2]
    assert any(s.startswith("tune") for s in sp["test_opened_after"])
    assert tr["seeds_seen_in_design"] == [0]
    assert all(v == 0 for ov in tr["setup"]["pair_prompt_checks"].values() for v in ov.values())
    arms = tr["tuning"]["arms"]
    assert set(arms) == set(cfg.arms) and arms["sft"]["fixed"]
    tuned = [a for a in arms if not arms[a]["fixed"]]
    assert len({sum(p["phase"] == "grid" for p in arms[a]["points"]) for a in tuned}) == 1
    assert set(tr["intervals"]) == {
        f"accuracy: dtrpo − {b}" for b in ("sft", "dpo-exact", "dpo-d1")
    }
    for iv in tr["intervals"].values():
        assert iv["per_seed"]["n"] == 2 and iv["per_item"]["n"] == 18
    m, d1 = tr["metrics"], tr["baselines"]["dpo-d1"]
    assert m["policy_forwards"]["mean"] == d1["policy_forwards"]["mean"] > 0  # equal cost
    assert m["train_tokens"]["mean"] > 0 and m["total_tokens"]["mean"] > m["train_tokens"]["mean"]
    assert tr["baselines"]["dpo-exact"]["policy_forwards"]["mean"] > m["policy_forwards"]["mean"]
    assert (tmp_path / "accuracy_vs_cost.png").stat().st_size > 0
    assert (tmp_path / "intervals.png").stat().st_size > 0

    def boom(*a, **k):
        raise AssertionError("a finished stage was recomputed")

    monkeypatch.setattr(train, "train_arm", boom)
    monkeypatch.setattr(train, "pretrain", boom)
    bench.run(cfg, tmp_path, log=lambda m: None)  # everything comes from the memo


@pytest.mark.parametrize("arm", ["dtrpo", "dpo-d1"])
def test_dpo_raises_the_exact_preference_margin(tok, arm):
    """Training on the pairs widens the exact-trajectory margin log-ratio(y_w) − log-ratio(y_l)
    (a sign or bookkeeping error in an estimator would shrink it)."""
    torch.manual_seed(0)
    ref = make_dllm(tok, "llama-tiny")
    pretrain(ref, make_items(20, 0), TrainConfig(steps=20, batch_size=16, progress=False))
    ps = make_pairs(ref, make_items(4, seed=5), k=4, seed=0)
    policy = ref.copy()
    tcfg = TrainConfig(steps=12, batch_size=len(ps), lr=3e-3, warmup_steps=0, weight_decay=0.0,
                       progress=False)  # fmt: skip
    train_arm(policy, ref, PrefConfig(arm=arm, beta=0.5), tcfg, ps)
    w = log_ratio(policy, ref, ps.chosen, "exact").value
    lose = log_ratio(policy, ref, ps.rejected, "exact").value
    assert float((w - lose).mean()) > 0.5


@pytest.fixture(scope="module")
def ref_and_pairs(tok, tmp_path_factory):
    """A tiny pre-trained reference and a pair set from the pairs split, saved."""
    from fmlab.dtrpo.data import dtrpo_splits, take

    d = tmp_path_factory.mktemp("ref")
    torch.manual_seed(0)
    ref = make_dllm(tok, "llama-tiny")
    splits = dtrpo_splits(n_train=20)
    pretrain(ref, list(splits["train"]), TrainConfig(steps=20, batch_size=16, progress=False))
    save_dllm(ref, d / "model")
    ps = make_pairs(ref, take(splits["pairs"], 4), k=4, seed=0)
    ps.save(d / "pairs")
    return d / "model", d / "pairs", len(ps)


@pytest.mark.slow
def test_two_process_ddp_dtrpo_replicas_bit_identical(ref_and_pairs, tmp_path):
    """`fmlab dtrpo train` under torchrun (2 processes, gloo): the loss runs through the DDP
    wrapper, so both replicas end bit-identical; rank 0 alone writes and prints."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from fmlab.core.train import param_checksum

    model, pairs, _ = ref_and_pairs
    fmlab_bin = Path(sys.executable).parent / "fmlab"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--no-python", str(fmlab_bin), "dtrpo", "train", "--model", str(model),
           "--pairs", str(pairs), "--out", str(tmp_path / "t"), "--steps", "3",
           "--batch-size", "2", "--lr", "1e-3"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "t" / "counts.json").read_text())
    assert res["world_size"] == 2 and len(res["param_checksums"]) == 2
    assert res["param_checksums"][0] == res["param_checksums"][1]  # gradients were synchronised
    assert res["param_checksums"][0] != param_checksum(load_dllm(model).net)  # it trained
    assert res["policy"] == 2 * 3 * 2 * 2  # ranks x steps x pairs x (chosen, rejected)
    assert len([ln for ln in p.stdout.splitlines() if ln.startswith("{")]) == 1  # rank 0's


def test_recovered_order_is_the_greedy_record(tok, items):
    """The teacher-forced confidence rule gives back the order greedy decoding recorded."""
    from fmlab.dtrpo.sampler import recover_trajectories

    m = _model(tok)
    prompts = [it.prompt for it in items]
    for steps in (2, 4):
        tr = sample(m, prompts, SamplerConfig(steps_per_block=steps, temperature=0.0))
        back = recover_trajectories(m, prompts, tr.answer, steps)
        assert torch.equal(back.bstep, tr.bstep) and torch.equal(back.answer, tr.answer)
        assert torch.equal(back.block_steps, tr.block_steps)
    # any answer gets a complete order: every token unmasked once, schedule respected
    other = recover_trajectories(m, prompts, torch.roll(tr.answer, 1, 0), 4)
    assert ((other.bstep >= 0) & (other.bstep < 4)).all()


def _tiny_causal_lm(path, arch="llama"):
    """An HF causal LM checkpoint that save_dllm did not write: a character tokenizer with no
    mask, pad or end token, and a random 2-layer Llama (or Qwen2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,  # fmt: skip
        Qwen2ForCausalLM,
    )

    chars = "0123456789+-*/()=.,: \nUsingmakeSolvthisudc"
    vocab = {c: i for i, c in enumerate(dict.fromkeys(chars))} | {"[UNK]": len(set(chars))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tk.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    cfg_cls, cls = (
        (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    cfg = cfg_cls(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(0)
    cls(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_convert_causal_lm(tmp_path, arch):
    from fmlab.dtrpo.adapter import check_block_forward, convert_causal_lm

    src = _tiny_causal_lm(tmp_path / "src", arch)
    with pytest.raises(CheckpointError, match="fmlab dtrpo convert"):
        load_dllm(src)
    convert_causal_lm(src, tmp_path / "dllm", gen_length=12, block_length=4)
    m = load_dllm(tmp_path / "dllm")
    assert (m.gen_length, m.block_length) == (12, 4)
    assert len({m.mask_id, m.pad_id, m.eos_id}) == 3  # added, and padding is not the end token
    assert check_block_forward(m) < 1e-4  # the 4-D mask is honoured (parity with causal)
    tr = sample(m, ["12+34="], SamplerConfig(steps_per_block=2, temperature=1.0))
    assert (tr.answer != m.mask_id).all() and (tr.block_steps == 2).all()
    with pytest.raises(ValueError, match="multiple of block_length"):
        convert_causal_lm(src, tmp_path / "bad", gen_length=10, block_length=4)


def test_train_cli_on_jsonl_pairs_and_a_converted_causal_lm(tmp_path):
    """`fmlab dtrpo convert` then `fmlab dtrpo train --pairs pairs.jsonl --model <converted>`."""
    from typer.testing import CliRunner

    from fmlab.cli import app

    src = _tiny_causal_lm(tmp_path / "src")
    r = CliRunner()
    res = r.invoke(app, ["dtrpo", "convert", "--src", str(src), "--out", str(tmp_path / "m"),
                         "--gen-length", "12", "--block-length", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    from fmlab.dtrpo.data import split_items

    pairs = split_items(0, 1)["pairs"][:6]  # task prompts outside val and test
    rows = [{"prompt": it.prompt, "chosen": it.example.answer[:8], "rejected": "0"}
            for it in pairs]  # fmt: skip
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    res = r.invoke(app, ["dtrpo", "train", "--model", str(tmp_path / "m"), "--pairs",
                         str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "t"),
                         "--steps", "2", "--batch-size", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    counts = json.loads((tmp_path / "t" / "counts.json").read_text())
    assert counts["policy"] == 2 * 2 * 2 and counts["world_size"] == 1
    assert load_dllm(tmp_path / "t" / "model").gen_length == 12
    # a malformed line names the file, the line and the fields
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1=", "chosen": "2"}\n')
    res = r.invoke(app, ["dtrpo", "train", "--model", str(tmp_path / "m"), "--pairs",
                         str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "t2")])  # fmt: skip
    assert res.exit_code == 2 and "bad.jsonl:1" in res.output and "rejected" in res.output
    # pairs on a test prompt are refused: eval would report a contaminated score
    test = split_items(0, 1)["test"][0]
    row = {"prompt": test.prompt, "chosen": test.example.answer, "rejected": "0"}
    (tmp_path / "leak.jsonl").write_text(json.dumps(row) + "\n")
    res = r.invoke(app, ["dtrpo", "train", "--model", str(tmp_path / "m"), "--pairs",
                         str(tmp_path / "leak.jsonl"), "--out", str(tmp_path / "t3")])  # fmt: skip
    assert res.exit_code == 2 and "held-out test split" in res.output, res.output


def test_resumed_run_reports_the_same_counts(ref_and_pairs, tmp_path):
    model, pairs, _ = ref_and_pairs
    ps = PairSet.load(pairs)
    tcfg = TrainConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=0, progress=False)
    counts = {}
    for name, stops in (("straight", [None]), ("resumed", [1, 2, None])):
        policy, ref = load_dllm(model), load_dllm(model)
        for stop in stops:
            _, count = train_arm(policy, ref, PrefConfig(arm="dpo-exact"), tcfg, ps,
                                 out_dir=tmp_path / name, stop_at=stop)  # fmt: skip
        counts[name] = dataclasses.asdict(count)
    assert counts["resumed"] == counts["straight"] and counts["straight"]["policy"] > 0


def test_cli_errors_are_clear(ref_and_pairs, tmp_path):
    from typer.testing import CliRunner

    from fmlab.cli import app
    from fmlab.dtrpo.data import split_items

    model, pairs, _ = ref_and_pairs
    r = CliRunner()
    res = r.invoke(app, ["dtrpo", "eval", "--model", str(model), "--n-per-task", "500"])
    assert res.exit_code == 2 and "200 items per task" in res.output, res.output
    for cmd in (["eval"], ["sample"]):
        res = r.invoke(app, ["dtrpo", *cmd, "--model", str(model), "--steps-per-block", "9"])
        assert res.exit_code == 2 and "choose 1 to 8" in res.output, res.output
    # a pair set built on test prompts (as the old CLI did) is refused, naming the overlap
    ps = PairSet.load(pairs)
    test = split_items(0, 1)["test"]
    ps.items = [test[i] for i in range(len(ps))]
    ps.save(tmp_path / "leaky")
    res = r.invoke(app, ["dtrpo", "train", "--model", str(model), "--pairs",
                         str(tmp_path / "leaky"), "--out", str(tmp_path / "t")])  # fmt: skip
    assert res.exit_code == 2 and "'pairs' and 'test' share" in res.output, res.output
    assert not (tmp_path / "t").exists()
