"""Group arithmetic for torch's int4 op, without torch (the checks run it at selection time).

torch's ``aten._weight_int4pack_mm`` applies one scale and zero to each run of ``groupsize``
rows, ``groupsize`` in 32, 64, 128, 256. A GPTQ layer sorted by group has runs of
``group_size`` rows (a shorter last one when ``group_size`` does not divide K; one run of K for
``group_size=-1``); it maps exactly when one op groupsize divides every run.
"""

from __future__ import annotations

from collections.abc import Sequence

OP_GROUP_SIZES = (256, 128, 64, 32)  # largest first: fewer scale loads


def group_rows(in_features: int, group_size: int) -> list[int]:
    """Rows in each GPTQ group of a layer (``group_size=-1``: one group of all rows)."""
    if group_size == -1 or group_size >= in_features:
        return [in_features]
    full, rest = divmod(in_features, group_size)
    return [group_size] * full + ([rest] if rest else [])


def op_group_size(rows: Sequence[int]) -> int | None:
    """The largest op groupsize dividing every group's row count, ``None`` if there is none."""
    for size in OP_GROUP_SIZES:
        if all(count % size == 0 for count in rows):
            return size
    return None
