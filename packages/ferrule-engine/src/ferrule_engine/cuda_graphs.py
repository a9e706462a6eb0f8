"""CUDA graphs for decode steps: one captured forward per batch size, replayed.

A decode step of ``n`` sequences (one new token each) launches a few hundred small kernels;
launched one by one from Python they cost more than they compute at small ``n``. At start
the model's forward is captured for the sizes in :func:`capture_sizes` on static input
buffers; a step of ``n`` sequences copies its inputs into the buffers, pads them to the
next captured size ``b`` (padding rows: token 0 at position 0, slot ``-1`` so nothing is
written, context length 0 so attention reads nothing) and replays graph ``b``. Attention
kernels must therefore take their launch shapes from tensor shapes only (the block-table
width is fixed at ``max_model_len / block_size``) and read the lengths on the device.

All graphs share one memory pool, captured largest first, as vLLM does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ferrule_core.forward_batch import ForwardBatch

logger = logging.getLogger("ferrule.engine")


def capture_sizes(limit: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to ``limit`` (vLLM's default ladder)."""
    sizes = [s for s in (1, 2, 4) if s <= limit]
    sizes += list(range(8, limit + 1, 8))
    if limit and (not sizes or sizes[-1] != limit):
        sizes.append(limit)
    return sizes


class DecodeGraphs:
    def __init__(self, model: Any, *, device: torch.device, block_size: int, max_blocks: int):
        self.model = model
        self.device = device
        self.block_size = block_size
        self.max_blocks = max_blocks
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.sizes: list[int] = []
        self.max_size = 0
        self.replays = 0

    def capture(self, limit: int) -> None:
        """Capture the forward for every size up to ``limit``."""
        sizes = capture_sizes(limit)
        if not sizes:
            return
        big = sizes[-1]
        # Static inputs: int64 [ids | positions | slots], int32 [starts | lens | tables].
        self.longs = torch.zeros(3 * big, dtype=torch.int64, device=self.device)
        self.ints = torch.zeros(
            (big + 1) + big + big * self.max_blocks, dtype=torch.int32, device=self.device
        )
        self.ids, self.positions, self.slots = self.longs.split([big, big, big])
        self.starts, self.lens, tables = self.ints.split([big + 1, big, big * self.max_blocks])
        self.tables = tables.view(big, self.max_blocks)
        self.starts.copy_(torch.arange(big + 1, dtype=torch.int32, device=self.device))
        self.slots.fill_(-1)
        started = time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for size in reversed(sizes):
                batch = self._batch(size)
                args = (self.ids[:size], self.positions[:size], batch)
                for _ in range(2):  # warm up: kernels chosen, compiled and autotuned eagerly
                    self.model(*args)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.outputs[size] = self.model(*args)
                self.graphs[size] = graph
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        self.sizes = sizes
        self.max_size = big
        logger.info(
            "captured CUDA graphs for %d decode batch sizes up to %d in %.1f s",
            len(sizes),
            big,
            time.perf_counter() - started,
        )

    def _batch(self, size: int) -> ForwardBatch:
        return ForwardBatch(
            query_start=self.starts[: size + 1],
            seq_lens=self.lens[:size],
            block_tables=self.tables[:size],
            slot_mapping=self.slots[:size],
            logits_indices=torch.arange(size, device=self.device),
            block_size=self.block_size,
            query_lens=[1] * size,
            context_lens=[1] * size,
        )

    def can_run(self, batch_size: int, width: int) -> bool:
        return 0 < batch_size <= self.max_size and width <= self.max_blocks

    def run(
        self,
        input_ids: list[int],
        positions: list[int],
        slots: list[int],
        tables: list[list[int]],
        context_lens: list[int],
    ) -> torch.Tensor:
        """Hidden states ``[n, hidden]`` of a decode step of ``n`` sequences."""
        n = len(input_ids)
        size = next(s for s in self.sizes if s >= n)
        pad = size - n
        longs = torch.tensor(
            input_ids + [0] * pad + positions + [0] * pad + slots + [-1] * pad,
            dtype=torch.int64,
        )
        # Only the used width of the block tables is copied: entries past a sequence's
        # length are never read, so what earlier steps left there does not matter.
        width = max(len(t) for t in tables)
        rows = [t + [0] * (width - len(t)) for t in tables] + [[0] * width] * pad
        table_rows = torch.tensor(rows, dtype=torch.int32)
        lens = torch.tensor(context_lens + [0] * pad, dtype=torch.int32)
        self.longs.view(3, -1)[:, :size].copy_(longs.view(3, size).pin_memory(), non_blocking=True)
        self.lens[:size].copy_(lens.pin_memory(), non_blocking=True)
        self.tables[:size, :width].copy_(table_rows.pin_memory(), non_blocking=True)
        self.graphs[size].replay()
        self.replays += 1
        return self.outputs[size][:n]
