"""Launch configurations of ``triton-gptq``, chosen by the number of input rows ``M``.

The table is data so that it can be tuned on a GPU without touching the programs. Each entry
serves the ``M`` up to its key (the smallest key ``>= M`` wins; the largest key also serves
every larger ``M``) and names one of two programs:

- ``gemv`` (:mod:`ferrule_triton_kernels.gptq_gemv`): one tile holds all the rows
  (``BLOCK_M`` >= M, padded to 16 for ``tl.dot``; ``BLOCK_M = 1`` at M = 1 is a reduction
  without ``tl.dot``) so every weight word is read once per call, and K is split into
  ``split_k`` slices summed in float32. Small M is bound by reading the weight, so the grid
  must keep every SM streaming: ``split_k = 0`` picks the split that gives about
  ``PROGRAMS_PER_SM`` programs per SM while each slice still runs ``MIN_BLOCKS_PER_SLICE``
  K blocks; a positive ``split_k`` is taken as it is (the table's measured entries).
- ``gemm`` (:mod:`ferrule_triton_kernels.gptq_gemm`): ``BLOCK_M x BLOCK_N`` tiles over the
  whole K, swizzled in groups of ``group_m`` M tiles for L2 reuse.

Both compute their tiles transposed (``tl.dot(W^T, x^T)``, see
:mod:`ferrule_triton_kernels.dequant`): ``BLOCK_N`` is the tensor cores' M side (Hopper's
``wgmma`` wants a multiple of 64 there) and ``BLOCK_M`` their N side (16 to 256).

:func:`configs_for` resolves an entry for one problem: it shrinks tiles to the problem,
keeps ``BLOCK_K`` within one quantization group where it can (one scale row per K block)
and short where rows are gathered one by one, and fixes ``split_k``. A configuration that
does not fit the device's shared memory is shrunk by :func:`smaller` when it first fails.
On CPU tensors (Triton's interpreter, for tests) the kernel object uses
:data:`INTERPRETER_CONFIGS` instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

PROGRAMS = ("gemv", "gemm")
DEFAULT_SMS = 132  # an H100 SXM; the kernel object passes the device's own count
PROGRAMS_PER_SM = 2
MIN_BLOCKS_PER_SLICE = 4
# Tiles whose rows are gathered one by one (3-bit codes straddling words; scales of groups
# that change inside a K block) stage [BLOCK_K, BLOCK_N] loads in shared memory per
# pipeline stage, so their K blocks stay short.
GENERIC_BLOCK_K = 32
PER_ROW_BLOCK_K = 64


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration. Block sizes are powers of two."""

    program: str
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 0  # gemv: K slices (0: fill the GPU); gemm: always 1
    group_m: int = 8  # gemm: M tiles that walk the N tiles together (L2 reuse)

    def __post_init__(self) -> None:
        problems = []
        if self.program not in PROGRAMS:
            problems.append(f"program={self.program!r} is not one of {', '.join(PROGRAMS)}")
        for name in ("block_m", "block_n", "block_k", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                problems.append(f"{name}={value} must be a power of two (e.g. 64)")
        if self.block_k < 16 or self.block_n < 16:
            problems.append(
                f"block_k={self.block_k} and block_n={self.block_n} must be at least 16 "
                "(tl.dot's smallest tile)"
            )
        if self.block_m != 1 and self.block_m < 16:
            problems.append(f"block_m={self.block_m} must be 1 (gemv at M=1) or at least 16")
        if self.block_m == 1 and self.program != "gemv":
            problems.append("block_m=1 (a reduction without tl.dot) exists only in gemv")
        if self.split_k < 0 or self.num_stages < 1 or self.group_m < 1:
            problems.append(
                f"split_k={self.split_k} must be >= 0, num_stages={self.num_stages} and "
                f"group_m={self.group_m} >= 1"
            )
        if problems:
            raise ValueError("TileConfig: " + "; ".join(problems))


# Keyed by the largest M each entry serves. Starting points for an H100, to be tuned there.
CONFIGS: dict[int, TileConfig] = {
    # M = 1 measured on an H100 (bench/triton_gptq_sweep.py, 2026-11-27): the best of the
    # sweep's candidates on 4096x14336 and 28672x8192.
    1: TileConfig("gemv", block_m=1, block_n=128, block_k=64, num_warps=4, num_stages=4),
    # The rest from the first experiment with the transposed tile on an H100 (2026-11-27): the
    # transposed tile (tl.dot(W^T, x^T)), best on 4096x14336 and 28672x8192 at M = 16, 64,
    # 256, 1024 against fp16 cuBLAS: 1.91x at 16, 1.35x at 64, 0.62-0.72x at 256, 0.60-0.70x
    # at 1024. It tried split 1 and 4 only and 4 won: set here, since split_k = 0 would pick
    # 1 or 2 on those shapes (PROGRAMS_PER_SM). M = 32 is not measured: the M = 16 entry with
    # 32 rows. At 256 its best on 28672x8192 was (128, 128, 128, 8, 3) (0.62x; 0.72x for the
    # entry's tile on 4096x14336).
    16: TileConfig(
        "gemv", block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4, split_k=4
    ),
    32: TileConfig(
        "gemv", block_m=32, block_n=64, block_k=128, num_warps=4, num_stages=4, split_k=4
    ),
    64: TileConfig(
        "gemv", block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=3, split_k=4
    ),
    # M = 256 from the sweep (H100, 2026-11-27): split-K tiles of 128 rows win on narrow layers
    # (0.74x on 14336x4096 where the GEMM's 32 tiles left the GPU idle at 0.28x); wide
    # layers get split 1 from split_k = 0 (0.66-0.76x with the best GEMM tiles there).
    256: TileConfig("gemv", block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3),
    1024: TileConfig("gemm", block_m=256, block_n=128, block_k=64, num_warps=8, num_stages=3),
}

# Triton's interpreter (CPU tensors, tests) pays Python time per tile operation, not per
# element: the same programs and buckets with larger tiles, so fewer programs and K steps.
INTERPRETER_CONFIGS: dict[int, TileConfig] = {
    1: TileConfig("gemv", block_m=1, block_n=128, block_k=256),
    64: TileConfig("gemv", block_m=64, block_n=128, block_k=256),
    1024: TileConfig("gemm", block_m=128, block_n=128, block_k=256),
}


def next_power_of_two(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()


def table_entry(m: int, table: Mapping[int, TileConfig]) -> TileConfig:
    """The entry with the smallest key ``>= m``, else the one with the largest key."""
    keys = sorted(table)
    if not keys:
        raise ValueError("the configuration table is empty")
    return table[next((key for key in keys if key >= m), keys[-1])]


def configs_for(
    m: int,
    k: int,
    n: int,
    *,
    bits: int = 4,
    group_size: int = -1,
    sms: int = DEFAULT_SMS,
    table: Mapping[int, TileConfig] | None = None,
) -> TileConfig:
    """The resolved configuration for ``x [m, k] @ W [k, n]`` (``split_k`` >= 1 set).

    ``group_size`` is the rows per quantization group of a layer whose groups are uniform
    (``g = k // group_size`` after sorting), -1 for a single group, 0 for uneven groups.
    """
    if m < 1 or k < 1 or n < 1:
        raise ValueError(f"configs_for needs m, k, n >= 1, got m={m}, k={k}, n={n}")
    entry = table_entry(m, CONFIGS if table is None else table)
    block_k = min(entry.block_k, max(16, next_power_of_two(k)))
    if 16 <= group_size < block_k and group_size & (group_size - 1) == 0:
        block_k = group_size  # a K block inside one group loads one row of scales
    groups_per_row = group_size == 0 or (group_size > 0 and group_size % block_k != 0)
    if 32 % bits:
        block_k = min(block_k, GENERIC_BLOCK_K)
    elif groups_per_row:
        block_k = min(block_k, PER_ROW_BLOCK_K)
    block_k = max(block_k, 16, _codes_per_word(bits))
    block_n = min(entry.block_n, max(16, next_power_of_two(n)))
    if entry.program == "gemm":
        block_m = min(entry.block_m, max(16, next_power_of_two(m)))
        return dataclasses.replace(
            entry, block_m=block_m, block_n=block_n, block_k=block_k, split_k=1
        )
    if m == 1 and entry.block_m == 1:
        block_m = 1
    else:
        block_m = max(16, min(max(entry.block_m, 16), next_power_of_two(m)))
    blocks = -(-k // block_k)
    split = entry.split_k
    if split == 0:
        tiles = -(-m // block_m) * -(-n // block_n)
        split = max(1, min(PROGRAMS_PER_SM * sms // tiles, blocks // MIN_BLOCKS_PER_SLICE))
    per_slice = -(-blocks // min(split, blocks))
    split = -(-blocks // per_slice)  # no empty slice
    return dataclasses.replace(
        entry, block_m=block_m, block_n=block_n, block_k=block_k, split_k=split
    )


def smaller(config: TileConfig, bits: int) -> TileConfig | None:
    """A configuration that needs less shared memory, or ``None`` at the smallest.

    Fewer pipeline stages first, then halved K blocks, a gemm's M blocks down to 64, N
    blocks, and M blocks (``split_k`` stays, so :func:`k_per_split` still covers K). In a
    gemm tile ``x``'s ``[BLOCK_K, BLOCK_M]`` is most of the shared memory, and ``BLOCK_N``
    is the tensor cores' M side (wgmma: 64 and up), so rows go before columns. For a device
    with less shared memory than the table was tuned on (Triton raises ``OutOfResources``
    before launching).
    """
    if config.num_stages > 2:
        return dataclasses.replace(config, num_stages=config.num_stages - 1)
    if config.block_k > max(16, _codes_per_word(bits)):
        return dataclasses.replace(config, block_k=config.block_k // 2)
    if config.program == "gemm" and config.block_m > 64:
        return dataclasses.replace(config, block_m=config.block_m // 2)
    if config.block_n > 16:
        return dataclasses.replace(config, block_n=config.block_n // 2)
    if config.program == "gemm" and config.block_m > 16:
        return dataclasses.replace(config, block_m=config.block_m // 2)
    return None


def _codes_per_word(bits: int) -> int:
    return 32 // bits if 32 % bits == 0 else 1


def k_per_split(config: TileConfig, k: int) -> int:
    """Rows of K in each of ``config.split_k`` slices: a whole number of K blocks."""
    blocks = -(-k // config.block_k)
    return -(-blocks // config.split_k) * config.block_k
