"""Tiny random Hugging Face model folders (weights, config and a real tokenizer), offline.

For tests that quantize, save, load and serve without downloading anything: the
tokenizer is a byte-level BPE trained in milliseconds on a fixed paragraph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

EOS = "<|endoftext|>"
_TEXT = (
    "The quick brown fox jumps over the lazy dog. A quantized model keeps its weights in a few "
    "bits per value and computes with them through fast kernels. Calibration data shows the "
    "quantizer which directions of the input matter; the Hessian of each layer records them. "
    "Serving engines batch many requests, cache the keys and values of attention in blocks, "
    "and reuse the blocks that several prompts share. def add(a, b):\n    return a + b\n"
)


# Small enough for CPU tests, large enough for grouped KV heads, group size 32 and a tokenizer.
TINY_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 320,
    "max_position_embeddings": 128,
}


def tiny_config(config_class: str, **overrides: Any) -> Any:
    """A tiny ``transformers`` config: ``tiny_config("LlamaConfig", num_hidden_layers=3)``.

    Sizes a family does not use are set as plain attributes and ignored by its model.
    """
    import transformers

    cls = getattr(transformers, config_class, None)
    if cls is None:
        raise LookupError(f"transformers {transformers.__version__} has no {config_class}")
    return cls(**{**TINY_SIZES, **overrides})


def train_tokenizer(vocab_size: int):
    """A ``PreTrainedTokenizerFast`` with exactly ``vocab_size`` tokens (>= 260)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level tokenizer; use 260 or more"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)
    if len(fast) > vocab_size:
        raise ValueError(f"tokenizer has {len(fast)} tokens, more than vocab_size={vocab_size}")
    return fast


def write_tiny_model(
    folder: str | Path, config: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Save a random ``AutoModelForCausalLM`` of ``config`` and a tokenizer into ``folder``."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    model.save_pretrained(folder)
    tokenizer = train_tokenizer(config.vocab_size)
    tokenizer.save_pretrained(folder)
    return folder
