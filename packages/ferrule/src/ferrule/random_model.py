"""Model folders of real shapes without weights, for speed measurements.

``write_random_model(folder, "llama3-8b", bits=4)`` writes ``config.json`` (Llama-3-8B's
shapes: hidden 4096, FFN 14336, 32 layers, 32 heads / 8 KV heads, vocabulary 128,256), a
word-level tokenizer over the whole vocabulary (token ``i`` is the word ``t<i>``, so any id
detokenizes) and, with ``bits``, a GPTQ ``quantize_config.json``. The engine runs it with
``load_format="dummy"`` (random weights); ``transformers`` builds it with ``from_config``.
"""

from __future__ import annotations

import os
from pathlib import Path

SHAPES: dict[str, dict[str, object]] = {
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
    },
    # For tests on the CPU.
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
    },
}
# A few layers of Llama-3-8B's widths: quick checks of the same kernels.
SHAPES["llama3-8b-2layers"] = {**SHAPES["llama3-8b"], "num_hidden_layers": 2}


def write_random_model(
    folder: str | os.PathLike[str],
    shape: str = "llama3-8b",
    *,
    bits: int | None = None,
    group_size: int = 128,
    desc_act: bool = False,
    dtype: str = "float16",
) -> Path:
    """Write the folder (created if missing) and return its path."""
    from transformers import LlamaConfig

    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r} is not known: use one of {', '.join(SHAPES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = dict(SHAPES[shape])
    vocab = int(sizes["vocab_size"])
    config = LlamaConfig(
        **sizes, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, dtype=dtype
    )
    config.save_pretrained(folder)
    _write_tokenizer(folder, vocab)
    if bits is not None:
        from ferrule_core.config import QuantizeConfig

        QuantizeConfig(bits=bits, group_size=group_size, desc_act=desc_act, sym=True).save(folder)
    return folder


def _write_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab_size)}
    core = Tokenizer(models.WordLevel(words, unk_token="t2"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="t0", eos_token="t1", unk_token="t2"
    )
    tokenizer.save_pretrained(folder)
