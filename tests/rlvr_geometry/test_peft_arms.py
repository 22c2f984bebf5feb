"""The PEFT arms of the RL-vs-SFT study: the LoRA/PiSSA/MiLoRA inits preserve the function and
take the components they claim, the merged checkpoint is the base plus the learned update with
the base's tensor names, the fixed masks are analyze's M_princ and hold under training, and
every arm runs end to end in the quick study."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fmlab.core.checkpoint import TensorSource
from fmlab.core.models import build_model
from fmlab.core.rl import MasterAdamW
from fmlab.core.train import causal_lm_loss
from fmlab.rlvr_geometry.metrics import pair_metrics
from fmlab.rlvr_geometry.peft_arms import (
    LORA_TARGETS,
    block_linears,
    fixed_masks,
    max_logit_change,
    merge_lora,
    principal_mask,
    wrap_lora,
)
from fmlab.rlvr_geometry.study import PEFT_ARMS, StudyConfig, parse_arms, run_study

VOCAB = 50


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matrices: one thread is faster, and SVDs on two threads stall when other jobs
    keep the cores busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _bf16_model():
    return build_model("llama-tiny", VOCAB, seed=0).to(torch.bfloat16)


def _ids(seed=1):
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


def _lora_layers(pm):
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in pm.named_modules() if isinstance(m, LoraLayer)}


def _weight_name(layer_name: str) -> str:
    """The base model's weight name of a peft LoRA layer."""
    return layer_name.removeprefix("base_model.model.") + ".weight"


@pytest.mark.parametrize("init", ["lora", "pissa", "milora"])
def test_inits_preserve_the_function_and_merge_back_to_the_base(init):
    model = _bf16_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ids = _ids()
    model.float()
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
    pm = wrap_lora(model, init, rank=4, alpha=8.0)
    assert max_logit_change(pm, ref, ids) < 1e-4
    layers = _lora_layers(pm)
    assert {n.rsplit(".", 1)[-1] for n in layers} == set(LORA_TARGETS)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in pm.parameters() if p.requires_grad)
    for name, layer in layers.items():
        held = layer.get_base_layer().weight.to(torch.bfloat16)
        moved = not torch.equal(held, base[_weight_name(name)])
        assert moved == (init != "lora"), name  # PiSSA / MiLoRA hold a residual base
    merged = merge_lora(pm).state_dict()
    assert list(merged) == list(base)
    for k in base:  # the fp32 residual merges back to the bf16 base bit for bit
        assert merged[k].dtype == base[k].dtype and torch.equal(merged[k], base[k]), k


@pytest.mark.parametrize("init,which", [("pissa", "largest"), ("milora", "smallest")])
def test_adapter_holds_the_named_singular_components(init, which):
    model = _bf16_model()
    w = {n: p.detach().double().numpy() for n, p in block_linears(model).items()}
    pm = wrap_lora(model, init, rank=3, alpha=6.0)
    for name, layer in _lora_layers(pm).items():
        w0 = w[_weight_name(name)]
        u, s, vt = np.linalg.svd(w0, full_matrices=False)
        part = slice(0, 3) if which == "largest" else slice(len(s) - 3, len(s))
        expect = (u[:, part] * s[part]) @ vt[part]
        a = layer.lora_A["default"].weight.detach().double().numpy()
        b = layer.lora_B["default"].weight.detach().double().numpy()
        got = layer.scaling["default"] * b @ a
        np.testing.assert_allclose(got, expect, atol=1e-5 * s[0])
        res = layer.get_base_layer().weight.detach().double().numpy()
        np.testing.assert_allclose(res + got, w0, atol=1e-5 * s[0])


def test_a_bf16_residual_would_not_merge_back():
    """Why the frozen base is fp32: PiSSA's residual rounded to bf16 no longer sums back to
    the base."""
    model = _bf16_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    pm = wrap_lora(model, "pissa", rank=4, alpha=8.0)
    with torch.no_grad():
        for layer in _lora_layers(pm).values():
            w = layer.get_base_layer().weight
            w.copy_(w.to(torch.bfloat16).float())
    merged = merge_lora(pm).state_dict()
    assert sum(int((merged[k] != base[k]).sum()) for k in base) > 0


def test_merged_update_is_the_base_plus_the_learned_change():
    model = _bf16_model()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    pm = wrap_lora(model, "pissa", rank=4, alpha=8.0)
    layers = _lora_layers(pm)
    init = {n: (m.lora_A["default"].weight.detach().double().clone(),
                m.lora_B["default"].weight.detach().double().clone()) for n, m in layers.items()}  # fmt: skip
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # stand-in for training: move every adapter
        for m in layers.values():
            for p in (m.lora_A["default"].weight, m.lora_B["default"].weight):
                p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g))
    after = {n: (m.lora_A["default"].weight.detach().double(),
                 m.lora_B["default"].weight.detach().double(), m.scaling["default"])
             for n, m in layers.items()}  # fmt: skip
    merged = merge_lora(pm).state_dict()
    for n, (a, b, s) in after.items():
        key = _weight_name(n)
        a0, b0 = init[n]
        expect = (base[key].double() + s * (b @ a - b0 @ a0)).to(torch.bfloat16)
        got = merged[key]
        ulp = torch.finfo(torch.bfloat16).eps * expect.double().abs().clamp(min=1e-30)
        assert ((got.double() - expect.double()).abs() <= ulp).all(), key  # ≤ 1 bf16 ulp
        assert (got == expect).double().mean() > 0.99, key


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])  # wide (analyze transposes) and tall
def test_principal_mask_is_analyze_m_princ(shape):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(*shape, generator=g, dtype=torch.float64)
    w0 += (
        3
        * torch.randn(shape[0], 2, generator=g, dtype=torch.float64)
        @ torch.randn(2, shape[1], generator=g, dtype=torch.float64)
    )  # a planted principal structure
    mask = principal_mask(w0, k0=4, alpha=0.3)
    k = int(0.3 * w0.numel() + 0.5)
    assert mask.dtype == torch.bool and int(mask.sum()) == k
    # independent: the K largest |U_4 S_4 V_4^T| entries from numpy's SVD
    u, s, vt = np.linalg.svd(w0.numpy())
    recon = np.abs((u[:, :4] * s[:4]) @ vt[:4]).ravel()
    expect = np.zeros(recon.size, dtype=bool)
    expect[np.argsort(-recon, kind="stable")[:k]] = True
    assert np.array_equal(mask.numpy().ravel(), expect)
    # analyze's definition: an update on exactly the mask overlaps M_princ fully, and its
    # complement not at all
    for m, overlap in ((mask, 1.0), (~mask, 0.0)):
        w1 = torch.where(m, w0 * 1.5 + 0.1, w0)
        got = pair_metrics(w0, w1, ks=(1, 4), alpha=0.3)["overlap_principal"]
        assert got == pytest.approx(overlap, abs=1e-12)


@pytest.mark.parametrize("kind", ["principal", "offprincipal"])
def test_masked_update_touches_only_mask_entries(kind):
    model = _bf16_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = fixed_masks(model, kind, k0=4, alpha=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: m for p, m in masks.items()}
    assert set(by_name) == set(block_linears(model))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(by_name)
    opt = MasterAdamW(model.parameters(), lr=1e-2, masks=masks)
    ids = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        causal_lm_loss(model, {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}).backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k in before:
        changed = before[k] != after[k]
        if k in by_name:
            assert not (changed & ~by_name[k]).any(), k
            assert changed[by_name[k]].double().mean() > 0.5, k  # the mask does train
        else:
            assert not changed.any(), k  # embeddings and norms frozen


def test_arms_config_and_cli_selection():
    assert not set(PEFT_ARMS) & set(StudyConfig().interventions)  # off by default
    assert parse_arms("peft, rl-lr,rl-lora") == (*PEFT_ARMS, "rl-lr")
    with pytest.raises(ValueError, match="choose from: gates, peft, rl-lr"):
        parse_arms("rl-dora")
    with pytest.raises(ValueError, match="rl-mask-principal"):
        StudyConfig(interventions=("rl-dora",))
    from fmlab.rlvr_geometry.cli import app

    res = CliRunner().invoke(app, ["bench", "--quick", "--arms", "rl-dora"])
    assert res.exit_code != 0 and "rl-dora" in res.output and "rl-pissa" in res.output


def test_adapter_init_depends_on_the_arm_seed_only():
    """peft draws lora_A from torch's global RNG; an arm's init must not depend on what ran
    before it in the process (a fresh study once gave rl-lora a different init)."""
    from fmlab.rlvr_geometry.study import _prepare

    spec = {"adapter": "lora", "lora_rank": 4, "lora_alpha": 8}

    def init_a(global_seed, seed):
        torch.manual_seed(global_seed)
        pm = _prepare(_bf16_model(), spec, seed)[0]
        return torch.cat([m.lora_A["default"].weight.flatten()
                          for m in _lora_layers(pm).values()])  # fmt: skip

    a = init_a(1, seed=0)
    assert torch.equal(a, init_a(2, seed=0))
    assert not torch.equal(a, init_a(1, seed=1))


@pytest.fixture(scope="module")
def peft_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("peft_study")
    cfg = replace(StudyConfig.quick(), interventions=PEFT_ARMS, rl_seeds=(0,))
    return out, run_study(out, cfg, log=lambda *_: None)


@pytest.mark.slow
def test_every_peft_arm_runs_end_to_end(peft_study):
    out, rec = peft_study
    assert set(PEFT_ARMS) <= set(rec.baselines)
    base = TensorSource.open(out / ".work" / "base-bf16")
    for arm in PEFT_ARMS:
        # mask arms train in fp32 with bf16 storage emulated: stored/ is their bf16 copy
        ckpt = out / ".work" / arm / "seed0" / ("merged" if "mask" not in arm else "stored")
        got = TensorSource.open(ckpt)
        assert got.keys() == base.keys(), arm
        for k in base:
            assert got.spec(k).shape == base.spec(k).shape, (arm, k)
            assert got.spec(k).dtype == base.spec(k).dtype == torch.bfloat16, (arm, k)
        assert rec.baselines[arm]["sparsity_bf16"]["mean"] < 1.0, arm  # it trained
    by = rec.metrics["by_arm"]
    for arm in ("rl-lora", "rl-pissa", "rl-milora"):
        assert by[arm]["init_max_logit_change"]["mean"] < 1e-4
    for arm, overlap in (("rl-mask-principal", 1.0), ("rl-mask-offprincipal", 0.0)):
        assert by[arm]["changed_outside_mask"]["mean"] == 0
        assert by[arm]["overlap_principal"]["mean"] == pytest.approx(overlap, abs=1e-9)
        assert by[arm]["mask_density"]["mean"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_peft_predictions_and_comparisons(peft_study):
    _, rec = peft_study
    preds, comps = rec.metrics["predictions"], rec.metrics["comparisons"]
    for name in ("accuracy: principal-mask RL below dense RL",
                 "accuracy: principal-mask RL below off-principal-mask RL",
                 "accuracy: PiSSA no gain over LoRA"):  # fmt: skip
        v = preds[name]
        assert v["prompts"] == 8 and v["lo"] <= v["delta"] <= v["hi"]
        first = v["verdict"].split()[0]
        assert first in ("holds", "FAILS", "not")
        if first in ("holds", "FAILS"):
            assert v["lo"] > 0 or v["hi"] < 0
    assert "nss: PiSSA − MiLoRA" in comps and "accuracy: PiSSA − MiLoRA" in comps
    assert all("verdict" not in v for v in comps.values())  # the spec predicts nothing there
    assert not any("PEFT" in n for n in rec.notes if n.startswith("Not built"))
