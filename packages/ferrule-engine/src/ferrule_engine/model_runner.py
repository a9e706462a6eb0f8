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
from ferrule_engine.staging import stage_step

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
        self.graphs = None  # DecodeGraphs once captured (CUDA only)

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

    @torch.inference_mode()
    def profile_peak_memory(self, num_tokens: int, num_seqs: int, max_model_len: int) -> int:
        """Peak device bytes of the largest step the scheduler can make, weights included.

        Runs one forward of ``num_tokens`` prompt tokens (in sequences of at most
        ``max_model_len``) against a two-block scratch cache (nothing is written: every slot
        is ``-1``), then the logits of ``num_seqs`` rows and their softmax, which is what
        sampling holds at its peak. Call before the KV cache is allocated.
        """
        device = self.device
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        self.allocate_kv_cache(2)
        lengths = []
        left = num_tokens
        while left > 0:
            lengths.append(min(left, max_model_len))
            left -= lengths[-1]
        width = -(-max(lengths) // self.block_size)
        batch = build_forward_batch(
            [[1] * width] * len(lengths), lengths, lengths, self.block_size, device=device
        )
        batch.slot_mapping.fill_(-1)
        ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
        positions = torch.cat([torch.arange(n, device=device) for n in lengths])
        hidden = self.model(ids, positions, batch)
        rows = hidden[: min(num_seqs, num_tokens)]
        logits = self.model.compute_logits(rows)
        torch.softmax(logits, dim=-1)
        del hidden, rows, logits
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        for layer in self.layers:
            layer.kv_cache = None
        self.kv_caches = []
        torch.cuda.empty_cache()
        return int(peak)

    def capture_graphs(self, max_batch: int, max_model_len: int) -> None:
        """Capture decode CUDA graphs for batches up to ``max_batch`` (after the KV cache)."""
        from ferrule_engine.cuda_graphs import DecodeGraphs

        if max_batch < 1:
            return
        graphs = DecodeGraphs(
            self.model,
            device=self.device,
            block_size=self.block_size,
            max_blocks=-(-max_model_len // self.block_size),
        )
        with torch.inference_mode():
            graphs.capture(max_batch)
        self.graphs = graphs

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
        samplers = [item for item, wanted in zip(scheduled, sample, strict=True) if wanted]
        graphs = self.graphs
        if (
            graphs is not None
            and all(q == 1 for q in query_lens)
            and len(samplers) == len(scheduled)
            and graphs.can_run(len(scheduled), max(len(t) for t in tables))
        ):
            size = self.block_size
            slots = [
                table[p // size] * size + p % size
                for table, p in zip(tables, positions, strict=True)
            ]
            hidden = graphs.run(input_ids, positions, slots, tables, context_lens)
        else:
            staged = stage_step(
                input_ids,
                positions,
                tables,
                query_lens,
                context_lens,
                self.block_size,
                sample,
                self.device,
            )
            hidden = self.model(staged.input_ids, staged.positions, staged.batch)
            if not samplers:
                return StepResult({}, {})
            hidden = hidden[staged.batch.logits_indices]
        logits = self.model.compute_logits(hidden)
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
