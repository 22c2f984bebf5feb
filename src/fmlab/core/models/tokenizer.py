"""Train small tokenizers with the ``tokenizers`` library and wrap them for ``transformers``.

Both kinds come back as a ``PreTrainedTokenizerFast`` with the same special tokens and a
ChatML chat template (the format SmolLM2 uses), so a tiny model and the bundled model are
prompted the same way and save/load beside the model with ``save_pretrained``.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "DOC_SEP",
    "SPECIAL_TOKENS",
    "train_bpe_tokenizer",
    "train_char_tokenizer",
    "wrap_tokenizer",
]

DOC_SEP = "<|endoftext|>"  # separates documents when packing a corpus; also BOS
IM_START, IM_END, PAD, MASK = "<|im_start|>", "<|im_end|>", "<pad>", "<|mask|>"
SPECIAL_TOKENS = [DOC_SEP, IM_START, IM_END, PAD, MASK]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def wrap_tokenizer(tok: Tokenizer, max_length: int = 1 << 20) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer`` with fmlab's special tokens and chat template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=DOC_SEP,
        eos_token=IM_END,
        pad_token=PAD,
        mask_token=MASK,
        additional_special_tokens=[IM_START],
        model_max_length=max_length,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2, split_digits: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (any text encodes; no unknown tokens).

    Args:
        texts: training documents.
        vocab_size: total vocabulary including the 256 byte symbols and special tokens.
        split_digits: every digit its own pre-token (no merges across digits), so that
            arithmetic stays learnable digit by digit.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size {vocab_size} is too small for byte-level BPE; use at least "
            f"{256 + len(SPECIAL_TOKENS)}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), tok.pre_tokenizer]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return wrap_tokenizer(tok)


def train_char_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over the characters seen in ``texts`` (others map to <pad>).

    Useful for arithmetic-style tasks, where a digit per token makes the task learnable.
    """
    chars = sorted({c for t in texts for c in t})
    vocab = {s: i for i, s in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return wrap_tokenizer(tok)
