"""MobileLLM-Flash: latency-guided pruning search over a pretrained Llama-style backbone.

``import fmlab.flash`` registers ``FlashConfig`` / ``FlashForCausalLM`` with the transformers
Auto classes (``model_type="fmlab_flash"``), so a non-uniformly pruned model saved with
``save_pretrained`` loads with ``AutoModelForCausalLM.from_pretrained``. See docs/flash.md.
"""

from fmlab.flash.arch import ATTENTION_MODES, BackboneShape, FlashArch, FlashArchError
from fmlab.flash.model import FlashConfig, FlashForCausalLM, FlashModel, flash_config

__all__ = [
    "ATTENTION_MODES",
    "BackboneShape",
    "FlashArch",
    "FlashArchError",
    "FlashConfig",
    "FlashForCausalLM",
    "FlashModel",
    "flash_config",
]
