"""Moving one step's inputs to the device: host lists in, device tensors out.

On a GPU every small ``torch.tensor(list, device="cuda")`` is its own synchronous copy from
pageable memory. Here the step's integer inputs are laid out in two host tensors (int64:
token ids, positions, slots, logits rows; int32: query starts, sequence lengths, block
tables), pinned, and each copied with one asynchronous transfer; the fields are views into
the two device tensors. On the CPU the same views are used without a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferrule_core.forward_batch import ForwardBatch, build_forward_batch


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    batch: ForwardBatch


def stage_step(
    input_ids: list[int],
    positions: list[int],
    tables: list[list[int]],
    query_lens: list[int],
    context_lens: list[int],
    block_size: int,
    sample: list[bool],
    device: torch.device,
) -> StepInputs:
    """The step's inputs on ``device`` (see the module's docstring)."""
    host = build_forward_batch(
        tables, query_lens, context_lens, block_size, device="cpu", sample=sample
    )
    ids = torch.tensor(input_ids, dtype=torch.int64)
    pos = torch.tensor(positions, dtype=torch.int64)
    if device.type == "cpu":
        return StepInputs(ids, pos, host)
    longs = [ids, pos, host.slot_mapping, host.logits_indices]
    ints = [host.query_start, host.seq_lens, host.block_tables.reshape(-1)]
    long_dev = _transfer(torch.cat(longs), device)
    int_dev = _transfer(torch.cat(ints), device)
    ids_d, pos_d, slots_d, logits_d = torch.split(long_dev, [t.numel() for t in longs])
    starts_d, lens_d, tables_d = torch.split(int_dev, [t.numel() for t in ints])
    batch = ForwardBatch(
        query_start=starts_d,
        seq_lens=lens_d,
        block_tables=tables_d.reshape(host.block_tables.shape),
        slot_mapping=slots_d,
        logits_indices=logits_d,
        block_size=block_size,
        query_lens=host.query_lens,
        context_lens=host.context_lens,
    )
    return StepInputs(ids_d, pos_d, batch)


def _transfer(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    return host.pin_memory().to(device, non_blocking=True)
