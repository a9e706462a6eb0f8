"""Arrange a GPTQ layer's input rows into the uniform groups torch's int4 CPU kernel needs.

``aten._weight_int4pack_mm_for_cpu`` applies one (scale, zero) to each run of ``groupsize``
consecutive input rows, with ``groupsize`` in {32, 64, 128, 256} dividing K. A GPTQ layer
gives row ``k`` to group ``g_idx[k]``: in order (``k // group_size``), through a permutation
(act-order), with a short last group (K not a multiple of group_size), or one group for all
rows (per-channel, ``group_size=-1``). Every such layer maps exactly:

1. sort the rows by group, keeping their order within a group (a stable argsort of g_idx);
2. give each GPTQ group a whole number of op groups, choosing the op groupsize that needs
   the fewest padding rows (the largest on a tie); a group whose size is no multiple of it
   gets padding rows whose activation is zero, so whatever weight they hold adds nothing;
3. repeat each GPTQ group's scale and zero for each of its op groups.

A GPTQ act-order layer (each group exactly ``group_size`` rows) and every layer with a group
size that is a multiple of 32 need no padding; the activations are then only permuted, and
not even that when g_idx is already in order (no act-order, or act-order with static groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Largest first: on a tie in padding the larger groupsize loads fewer scales.
OP_GROUP_SIZES = (256, 128, 64, 32)


@dataclass(frozen=True)
class RowLayout:
    """Where each op row's activation comes from.

    ``rows`` int64 ``[K']``: the input feature read by each row of the packed weight,
    ``in_features`` (one past the last) for a padding row; ``None`` when the layout is the
    identity. ``block_groups`` int64 ``[K' / group_size]``: the GPTQ group of each op group.
    """

    in_features: int
    group_size: int
    rows: Tensor | None
    block_groups: Tensor

    @property
    def padded_features(self) -> int:
        return self.in_features if self.rows is None else self.rows.numel()

    @property
    def padded(self) -> bool:
        return self.padded_features > self.in_features

    def source_rows(self) -> Tensor:
        """``rows`` even for the identity layout."""
        return torch.arange(self.in_features) if self.rows is None else self.rows

    def gather(self, x: Tensor) -> Tensor:
        """``x [M, K]`` rearranged into the op's row order, contiguous ``[M, K']``."""
        if self.rows is None:
            return x.contiguous()
        if self.padded:
            x = F.pad(x, (0, 1))  # column K reads zero
        return x.index_select(1, self.rows)


def plan_rows(g_idx: Tensor, groups: int) -> RowLayout:
    """The layout of a layer whose row ``k`` belongs to GPTQ group ``g_idx[k]`` of ``groups``."""
    g = g_idx.detach().to("cpu", torch.int64)
    in_features = g.numel()
    counts = torch.bincount(g, minlength=groups)
    best = None
    for size in OP_GROUP_SIZES:
        padded = (counts + size - 1) // size * size
        if best is None or int(padded.sum()) < int(best[1].sum()):
            best = (size, padded)
    size, padded = best
    block_groups = torch.repeat_interleave(torch.arange(groups), padded // size)

    order = torch.argsort(g, stable=True)
    in_group = g[order]
    rank = torch.arange(in_features) - (torch.cumsum(counts, 0) - counts)[in_group]
    dest = (torch.cumsum(padded, 0) - padded)[in_group] + rank
    rows = torch.full((int(padded.sum()),), in_features, dtype=torch.int64)
    rows[dest] = order
    if rows.numel() == in_features and torch.equal(rows, torch.arange(in_features)):
        rows = None
    return RowLayout(in_features, size, rows, block_groups)
