"""The model runner: turns a scheduler step into one forward pass and one sampling pass.

It owns the paged KV cache (one ``[2, num_blocks, block_size, num_kv_heads, head_dim]``
tensor per attention layer, bound to the layer) and the per-request random generators.
For each scheduled request it lays out that step's tokens flat (no padding), the positions,
the block table and the slot of each token (:func:`build_forward_batch`), runs the model,
computes logits only for the requests that sample this step, and samples them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ferrule_core.forward_batch import build_forward_batch
from ferrule_engine.sampler import Sampler, SamplingRow

logger = logging.getLogger("ferrule.engine")


@dataclass
class StepResult:
    """What one step produced: a token (and its logprobs) per request that sampled."""

    sampled: dict[str, int]
    logprobs: dict[str, Any]


class ModelRunner:
    def __init__(self, model: Any, *, device: torch.device, dtype: torch.dtype, block_size: int):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.layers = list(model.attention_layers())
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no attention layers to cache for")
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        self.kv_caches: list[torch.Tensor] = []
        self.num_blocks = 0

    def bytes_per_block(self) -> int:
        """KV cache bytes one block takes over all layers."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return sum(
            2 * self.block_size * layer.num_kv_heads * layer.head_dim * element
            for layer in self.layers
        )

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """One cache tensor per attention layer, bound to it (block 0 is the null block)."""
        self.num_blocks = num_blocks
        self.kv_caches = []
        for layer in self.layers:
            cache = torch.zeros(
                2,
                num_blocks,
                self.block_size,
                layer.num_kv_heads,
                layer.head_dim,
                dtype=self.dtype,
                device=self.device,
            )
            layer.kv_cache = cache
            self.kv_caches.append(cache)

    def prepare(self, max_model_len: int) -> None:
        """Size position-indexed tables (rotary cos/sin) once, before serving."""
        from ferrule_engine.layers.rotary import RotaryEmbedding

        for module in self.model.modules():
            if isinstance(module, RotaryEmbedding):
                module.ensure_length(max_model_len)

    def forget(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.generators.pop(request_id, None)

    @torch.inference_mode()
    def execute(self, scheduled: list[Any]) -> StepResult:
        """Run one step over ``scheduled`` (``ScheduledRequest`` records, in batch order)."""
        input_ids: list[int] = []
        positions: list[int] = []
        tables, query_lens, context_lens, sample = [], [], [], []
        for item in scheduled:
            request = item.request
            start, count = item.start_position, item.num_new_tokens
            input_ids.extend(request.all_token_ids[start : start + count])
            positions.extend(range(start, start + count))
            tables.append(item.block_ids)
            query_lens.append(count)
            context_lens.append(start + count)
            sample.append(item.sample)
        batch = build_forward_batch(
            tables, query_lens, context_lens, self.block_size, device=self.device, sample=sample
        )
        ids = torch.tensor(input_ids, dtype=torch.int64, device=self.device)
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)
        hidden = self.model(ids, pos, batch)
        samplers = [item for item, wanted in zip(scheduled, sample, strict=True) if wanted]
        if not samplers:
            return StepResult({}, {})
        logits = self.model.compute_logits(hidden[batch.logits_indices])
        _mask_early_stops(logits, [item.request for item in samplers])
        rows = [self._row(item.request) for item in samplers]
        out = self.sampler.sample(logits, rows)
        sampled = {
            item.request.request_id: t for item, t in zip(samplers, out.token_ids, strict=True)
        }
        logprobs = {
            item.request.request_id: lp
            for item, lp in zip(samplers, out.logprobs, strict=True)
            if lp is not None
        }
        return StepResult(sampled, logprobs)

    def _row(self, request: Any) -> SamplingRow:
        params = request.sampling_params
        generator = None
        if params.seed is not None:
            generator = self.generators.get(request.request_id)
            if generator is None:
                generator = torch.Generator(device=self.device)
                generator.manual_seed(params.seed)
                self.generators[request.request_id] = generator
        return SamplingRow(
            params=params,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
            generator=generator,
        )


def _mask_early_stops(logits: torch.Tensor, requests: list[Any]) -> None:
    """Until a request has ``min_tokens`` outputs, its stop token ids (and end of text, unless
    ``ignore_eos``) cannot be drawn, as in vLLM: their logits become ``-inf`` in place."""
    for row, request in enumerate(requests):
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            continue
        banned = list(params.stop_token_ids or ())
        if request.eos_token_id is not None and not params.ignore_eos:
            banned.append(request.eos_token_id)
        if banned:
            logits[row, banned] = float("-inf")
