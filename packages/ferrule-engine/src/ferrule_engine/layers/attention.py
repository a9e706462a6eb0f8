"""``Attention``: writes the new keys and values into the paged KV cache, then runs the
attention kernel chosen through the registry.

The runner binds each layer's cache tensor ``[2, num_blocks, block_size, num_kv_heads,
head_dim]`` to ``layer.kv_cache`` before the first forward. A forward call gets the new
tokens' projected (and rotated) queries, keys and values as flat ``[T, heads * head_dim]``
rows, stores the keys and values at ``batch.slot_mapping`` (rows whose slot is ``-1`` are not
stored), and hands the queries, the cache and the batch to the kernel, which reads every
key and value of each sequence, old and new, from the cache.

Masking, whatever the kernel: a new token at position ``p`` attends to the positions
``q <= p`` of its own sequence, and with ``sliding_window=W`` only to those with
``p - q < W`` (transformers' ``sliding_window_overlay``: ``kv_idx > q_idx - W``).

The kernel is selected on the first forward (and again if the device or dtype changes)
with ``KernelRequest.attention``; ``ctx.attention_kernel`` fixes it by name. A kernel object
with a ``write_kv(cache, key, value, slot_mapping)`` method stores the new keys and values
itself (GPU kernels do it in one launch without reading the slots back to the host);
otherwise :func:`write_kv` below does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ferrule_core.errors import ConfigError
from ferrule_core.forward_batch import ForwardBatch, check_kv_cache
from ferrule_core.quant_linear import platform_of
from ferrule_core.specs import KernelRequest, KernelSpec
from ferrule_engine.layers.context import ModelContext


class Attention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        scale: float,
        sliding_window: int | None = None,
        prefix: str,
        ctx: ModelContext,
    ):
        super().__init__()
        ctx.tp.require_single(prefix)
        if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ConfigError(
                f"{prefix}: num_heads={num_heads} must be a positive multiple of "
                f"num_kv_heads={num_kv_heads}"
            )
        if sliding_window is not None and sliding_window <= 0:
            raise ConfigError(
                f"{prefix}: sliding_window={sliding_window} must be positive, or None for none"
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.prefix = prefix
        self.registry = ctx.registry
        self.kernel_choice = ctx.attention_kernel
        self.kv_cache: torch.Tensor | None = None
        self.kernel_spec: KernelSpec | None = None
        self._kernel: Any = None
        self._kernel_key: tuple[Any, ...] | None = None

    def kernel_request(self, device: torch.device, dtype: torch.dtype) -> KernelRequest:
        capability = None
        if device.type == "cuda":
            capability = tuple(torch.cuda.get_device_capability(device))
        return KernelRequest.attention(
            platform_of(device),
            str(dtype).removeprefix("torch."),
            self.head_dim,
            sliding_window=self.sliding_window,
            capability=capability,
        )

    def select_kernel(self, device: torch.device, dtype: torch.dtype) -> KernelSpec:
        """Choose (and build) the attention kernel for queries on ``device`` in ``dtype``."""
        from ferrule_core.plugins import default_registry

        registry = self.registry if self.registry is not None else default_registry()
        spec = registry.select_kernel(
            "attention", self.kernel_request(device, dtype), choice=self.kernel_choice
        )
        self._kernel = spec.factory(self)
        self._kernel_key = (device, dtype)
        self.kernel_spec = spec
        return spec

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """``[T, num_heads * head_dim]`` attention outputs of the new tokens."""
        cache = self.kv_cache
        if cache is None:
            raise RuntimeError(
                f"{self.prefix}: no KV cache is bound; set layer.kv_cache to a tensor "
                f"[2, num_blocks, {batch.block_size}, {self.num_kv_heads}, {self.head_dim}]"
            )
        self._check_cache(cache, batch)
        tokens = query.shape[0]
        query = query.reshape(tokens, self.num_heads, self.head_dim)
        key = key.reshape(tokens, self.num_kv_heads, self.head_dim)
        value = value.reshape(tokens, self.num_kv_heads, self.head_dim)
        if self._kernel_key != (query.device, query.dtype):
            self.select_kernel(query.device, query.dtype)
        # A kernel may bring its own cache writer (one launch, no host sync on -1 slots).
        getattr(self._kernel, "write_kv", write_kv)(cache, key, value, batch.slot_mapping)
        out = self._kernel.forward(query, cache, batch)
        return out.reshape(tokens, self.num_heads * self.head_dim)

    def _check_cache(self, cache: torch.Tensor, batch: ForwardBatch) -> None:
        check_kv_cache(self.prefix, cache, batch.block_size, self.num_kv_heads, self.head_dim)

    def extra_repr(self) -> str:
        window = f", sliding_window={self.sliding_window}" if self.sliding_window else ""
        kernel = self.kernel_spec.name if self.kernel_spec else "not chosen yet"
        return (
            f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, "
            f"head_dim={self.head_dim}, scale={self.scale:.4g}{window}, kernel={kernel}"
        )


def write_kv(
    cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Store ``key``/``value`` ``[T, Hkv, D]`` at ``slot_mapping`` (``-1``: skip the row)."""
    if slot_mapping.numel() != key.shape[0]:
        raise ValueError(
            f"slot_mapping has {slot_mapping.numel()} slots for {key.shape[0]} new tokens"
        )
    if key.shape[0] == 0:
        return
    flat = cache.view(2, -1, cache.shape[3], cache.shape[4])
    if bool((slot_mapping < 0).any()):
        keep = slot_mapping >= 0
        slot_mapping, key, value = slot_mapping[keep], key[keep], value[keep]
    flat[0].index_copy_(0, slot_mapping, key.to(cache.dtype))
    flat[1].index_copy_(0, slot_mapping, value.to(cache.dtype))
