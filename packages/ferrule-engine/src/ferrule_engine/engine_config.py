"""``EngineConfig``: how an engine is built, validated before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from ferrule_core.errors import ConfigError

GIB = 1 << 30
CPU_KV_CACHE_DEFAULT = 4 * GIB  # as vLLM's CPU backend: 4 GiB unless told otherwise
CPU_KV_CACHE_SHARE = 0.4  # ... and never more than this share of the available memory
LOAD_FORMATS = ("auto", "dummy")


@dataclass
class EngineConfig:
    """Settings of an :class:`~ferrule_engine.engine.LLMEngine`.

    ``kv_cache_memory`` (bytes) or ``num_kv_blocks`` size the paged KV cache; with neither,
    the CPU takes 4 GiB (at most 40% of the available memory) and a GPU what is left of
    ``gpu_memory_utilization`` of its memory once the weights, a profiled peak step
    (``max_num_batched_tokens`` tokens) and other processes' use are counted.
    ``max_model_len`` defaults to the model's ``max_position_embeddings``, lowered to what the
    cache can hold. ``max_num_batched_tokens`` is the token budget of one step (chunked
    prefill splits longer prompts).

    On CUDA, decode steps of up to ``min(max_cudagraph_batch, max_num_seqs)`` sequences
    replay CUDA graphs captured at start (batch padded to the next captured size; 512 at most
    by default, as vLLM); ``enforce_eager`` turns them off. ``load_format="dummy"`` fills the
    weights with random values instead of reading them (the folder needs only
    ``config.json``, a tokenizer and, for GPTQ, its quantize config): for speed
    measurements, as vLLM's option of that name.
    """

    dtype: str = "auto"
    platform: str | None = None
    block_size: int = 16
    kv_cache_memory: int | None = None
    num_kv_blocks: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    scheduling_policy: str = "fcfs"
    seed: int = 0
    linear_kernel: str | None = None
    attention_kernel: str | None = None
    trust_remote_code: bool = False
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool = False
    max_cudagraph_batch: int = 512
    load_format: str = "auto"

    def __post_init__(self) -> None:
        problems = []
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            problems.append(
                f"block_size={self.block_size!r} is not supported: use a power of two up to 128 "
                "(16 is the usual choice)"
            )
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        for name in ("kv_cache_memory", "max_model_len"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name}={value!r} must be a positive integer or None")
        if self.num_kv_blocks is not None and (
            not isinstance(self.num_kv_blocks, int) or self.num_kv_blocks < 2
        ):
            problems.append(
                f"num_kv_blocks={self.num_kv_blocks!r} must be at least 2 (block 0 is reserved)"
            )
        utilization = self.gpu_memory_utilization
        if not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
            problems.append(
                f"gpu_memory_utilization={utilization!r} must be a fraction in (0, 1], e.g. 0.9"
            )
        if not isinstance(self.max_cudagraph_batch, int) or self.max_cudagraph_batch < 0:
            problems.append(
                f"max_cudagraph_batch={self.max_cudagraph_batch!r} must be a non-negative "
                "integer (0 captures no graph)"
            )
        if self.load_format not in LOAD_FORMATS:
            problems.append(
                f"load_format={self.load_format!r} is not supported: use one of "
                f"{', '.join(LOAD_FORMATS)}"
            )
        if problems:
            raise ConfigError(problems)
