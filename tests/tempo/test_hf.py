"""Tempo's compressor on real HF vision-language classes: tiny random LLaVA and Idefics3 (the
SmolVLM architecture) models with their real processors and a chat template, built in-process
and saved like a user's local checkpoint (nothing is downloaded)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fmlab.cli import app
from fmlab.core.io import CheckpointError
from fmlab.tempo.hf import HFCompressor
from fmlab.tempo.pipeline import Stack, TrainConfig, segments_of, train_stack
from fmlab.tempo.synth import make_video

runner = CliRunner()

_TEXT = (
    "<pad> <unk> <image> <|im_start|> <|im_end|> system user assistant Yes No Query: Is this "
    "segment relevant to the query? Answer or what colour is square how many flashes You "
    "compress a video segment. Store in memory tokens that follow minimal information needed "
    "answer query. <fake_token_around_image> <global-img> <end_of_utterance>"
)
WORDS = _TEXT.split() + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }} "
    "{% endif %}{% endfor %}<|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
SMALL = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(WORDS))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip


def tiny_vlm(path, family="llava", chat_template=True):
    """A tiny random VLM of a real HF class with its real processor, saved to ``path``:
    LLaVA (CLIP vision tower + Llama) or Idefics3 (SigLIP-style tower, pixel shuffle, Llama)."""
    import transformers as tf

    tok = _tokenizer()
    template = TEMPLATE if chat_template else None
    text = dict(vocab_size=len(tok), num_hidden_layers=2, num_key_value_heads=2, **SMALL)
    vision = dict(num_hidden_layers=1, patch_size=8, **SMALL)
    torch.manual_seed(0)
    if family == "llava":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        size = 16
        proc = tf.LlavaProcessor(
            image_processor=CLIPImageProcessorPil(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}
            ),
            tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, chat_template=template,
        )  # fmt: skip
        cfg = tf.LlavaConfig(
            vision_config=tf.CLIPVisionConfig(image_size=size, **vision),
            text_config=tf.LlamaConfig(**text), image_token_id=tok.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="default", vision_feature_layer=-1,
        )  # fmt: skip
        model = tf.LlavaForConditionalGeneration(cfg)
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import (
            Idefics3ImageProcessorPil,
        )

        size = 32  # (32 / 8)^2 patches, pixel-shuffled by 2: 4 image tokens per frame
        proc = tf.Idefics3Processor(
            image_processor=Idefics3ImageProcessorPil(
                do_image_splitting=False, size={"longest_edge": size},
                max_image_size={"longest_edge": size},
            ),
            tokenizer=tok, image_seq_len=4, chat_template=template,
        )  # fmt: skip
        cfg = tf.Idefics3Config(
            vision_config=dict(image_size=size, **vision),
            text_config=dict(model_type="llama", **text), scale_factor=2,
            image_token_id=tok.convert_tokens_to_ids("<image>"),
        )  # fmt: skip
        model = tf.Idefics3ForConditionalGeneration(cfg)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return tiny_vlm(tmp_path_factory.mktemp("llava") / "tiny-llava")


def _segments(n_frames=24, seed=0):
    return segments_of(make_video(seed, n_frames).frames, 8)


@pytest.mark.parametrize(
    "family,chat_template", [("llava", True), ("llava", False), ("idefics3", True)]
)
def test_relevance_is_the_yes_no_logit_gap_at_the_last_prompt_position(
    tmp_path, family, chat_template
):
    c = HFCompressor.from_pretrained(tiny_vlm(tmp_path / "m", family, chat_template), mem_tokens=4)
    seg = _segments()
    with torch.no_grad():
        mem, rel = c(seg, "what colour is the square")
    assert mem.shape == (3, 4, 32) and rel.shape == (3,)
    # independently: the full model's LM logits on the same prompt, without memory tokens
    text = c.prompt(8, "what colour is the square")
    assert ("<|im_start|> assistant" in text) == chat_template
    frames = seg.flatten(0, 1).permute(0, 2, 3, 1).numpy()
    inputs = c.processor(text=[text] * 3, images=list(frames), return_tensors="pt")
    with torch.no_grad():
        logits = c.model(**inputs).logits[:, -1]
    torch.testing.assert_close(rel, logits[:, c.yes] - logits[:, c.no], atol=1e-5, rtol=1e-5)
    sigma = torch.sigmoid(rel)
    p = torch.softmax(logits[:, [c.yes, c.no]], -1)[:, 0]
    torch.testing.assert_close(sigma, p, atol=1e-5, rtol=1e-5)  # P(Yes) / (P(Yes) + P(No))


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_one_batched_forward_equals_one_segment_at_a_time(llava_dir, tmp_path, family):
    path = llava_dir if family == "llava" else tiny_vlm(tmp_path / "m", family)
    c = HFCompressor.from_pretrained(path, mem_tokens=4)
    seg = _segments(32)
    with torch.no_grad():
        mem, rel = c(seg, "how many flashes")
        for i in range(len(seg)):
            m1, r1 = c(seg[i : i + 1], "how many flashes")
            torch.testing.assert_close(m1[0], mem[i], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r1[0], rel[i], atol=1e-5, rtol=1e-5)


def test_memory_tokens_are_learned_and_initialised_from_the_embeddings(llava_dir):
    c = HFCompressor.from_pretrained(llava_dir, mem_tokens=6)
    emb = c.model.get_input_embeddings().weight
    assert c.memory.shape == (6, 32)
    with torch.no_grad():
        assert abs(float(c.memory.mean() - emb.mean())) < 3 * float(emb.std())
    seg = _segments(16)
    mem, rel = c(seg, "what colour is the square")
    mem.sum().backward()
    assert c.memory.grad is not None and c.memory.grad.abs().sum() > 0
    with torch.no_grad():  # the states depend on the memory parameter, the relevance does not
        c.memory.add_(1.0)
        mem2, rel2 = c(seg, "what colour is the square")
    assert not torch.allclose(mem, mem2)
    torch.testing.assert_close(rel.detach(), rel2)


def test_query_changes_the_compression_unless_agnostic(llava_dir):
    c = HFCompressor.from_pretrained(llava_dir, mem_tokens=4)
    seg = _segments(16)
    with torch.no_grad():
        a, _ = c(seg, "what colour is the square")
        b, _ = c(seg, "how many flashes")
        assert not torch.allclose(a, b)
        c.query_aware = False
        a, _ = c(seg, "what colour is the square")
        b, _ = c(seg, "how many flashes")
    torch.testing.assert_close(a, b)


def test_stack_with_hf_compressor_trains_saves_and_loads(llava_dir, tmp_path):
    cfg = TrainConfig(stages=(("align", 2, 16), ("long-sft", 2, 24)), batch=2, checkpoint_every=2)
    stack = train_stack("tempo", tmp_path / "run", cfg, compressor=llava_dir, log=lambda m: None)
    assert stack.hf and stack.cfg.d_svlm == 32 and stack.cfg.frame_size == 16
    v = make_video(5, 24)
    with torch.no_grad():
        blocks, info = stack.blocks(v.frames, v.questions[0].text, 6, "tempo")
        assert sum(len(t) for _, t in blocks) == sum(info["alloc"]) <= 6
        before = stack.logits([(blocks, v.questions[0].text)])
    stack.save(tmp_path / "m")
    assert (tmp_path / "m" / "compressor" / "config.json").is_file()
    loaded = Stack.load(tmp_path / "m")
    with torch.no_grad():
        b2, _ = loaded.blocks(v.frames, v.questions[0].text, 6, "tempo")
        torch.testing.assert_close(before, loaded.logits([(b2, v.questions[0].text)]))
    frozen = train_stack("tempo", None, cfg, compressor=llava_dir, freeze_backbone=True,
                         log=lambda m: None)  # fmt: skip
    fresh = HFCompressor.from_pretrained(llava_dir)
    for (k, p), q in zip(frozen.compressor.model.state_dict().items(),
                         fresh.model.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(p, q), k


def test_cli_compresses_a_real_mp4_with_an_hf_checkpoint(llava_dir, tmp_path):
    video = tmp_path / "v.mp4"
    assert runner.invoke(app, ["tempo", "make-video", str(video), "--frames", "40"]).exit_code == 0
    res = runner.invoke(app, ["tempo", "compress", str(video), "--query", "what colour is the square",
                              "--budget", "30", "--model", str(llava_dir)])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["segments"] == 5 and out["tokens_used"] <= 30 and len(out["relevance"]) == 5
    res = runner.invoke(app, ["tempo", "answer", str(video), "--question", "how many flashes",
                              "--model", str(llava_dir)])  # fmt: skip
    assert res.exit_code != 0 and "fmlab tempo train --compressor" in res.output


def test_bad_hf_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json missing"):
        HFCompressor.from_pretrained(tmp_path)
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
                                 num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path / "llm")  # fmt: skip
    with pytest.raises(CheckpointError, match="vision-language"):
        HFCompressor.from_pretrained(tmp_path / "llm")


def test_hf_compressor_runs_in_chunks_of_segments(llava_dir, tmp_path):
    from fmlab.core.video import open_video, read_video
    from fmlab.tempo.pipeline import Stack

    video = tmp_path / "v.mp4"
    make_video(5, 40).write(video)
    stack = Stack("tempo", compressor=HFCompressor.from_pretrained(llava_dir, mem_tokens=4)).eval()
    size = (stack.cfg.frame_size, stack.cfg.frame_size)
    whole = read_video(video, size=size).frames
    stream = open_video(video, size=size)
    with torch.no_grad():
        mem, rel = stack.compress(whole, "how many flashes")  # one forward of 5 segments
        chunks = (f for f, _ in stream.chunks(16))  # 2 segments per chunk, then 1
        mem2, rel2, t = stack.compress_chunks(chunks, "how many flashes", batch_segments=1)
    assert t == 40 and mem2.shape == mem.shape == (5, 4, 32)
    torch.testing.assert_close(mem2, mem, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rel2, rel, atol=1e-5, rtol=1e-5)
    base = ["tempo", "compress", str(video), "--query", "how many flashes", "--budget", "30",
            "--model", str(llava_dir)]  # fmt: skip
    outs = [runner.invoke(app, [*base, "--batch-segments", k]) for k in ("1", "16")]
    assert all(r.exit_code == 0 for r in outs), outs[0].output
    a, b = (json.loads(r.stdout) for r in outs)
    assert a["allocation"] == b["allocation"] and a["segments"] == 5
