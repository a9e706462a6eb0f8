"""The layout ``cuda-gptq-mma`` reads: 4-bit codes repacked for tensor-core fragments.

``pack(codes)`` takes a layer's codes ``[K, N]`` (input rows sorted by group) and returns int32
``[N / 16, K / 64, 32, 4]``: for each tile of 16 output features and superblock of 64 input
rows, lane ``l`` of a warp loads 4 words with one 16-byte load, word ``j`` holding the 8 codes
of its A fragment for the mma step over rows ``16j .. 16j + 15`` of the superblock. Code ``i``
of a word (bits ``4i .. 4i + 3``) is output feature ``g + 8 (i & 1)`` and input row
``2t + 8 ((i >> 1) & 1) + (i >> 2)`` of the 16 x 16 tile, ``g = l // 4``, ``t = l % 4``
(``csrc/gptq_mma.cu`` explains why). ``unpack`` inverts it, for tests and the layer's own
round trip.
"""

from __future__ import annotations

import torch
from torch import Tensor

TILE_N = 16
SUPER_K = 64
LANES = 32
STEPS = 4  # mma steps of 16 rows in a superblock
CODES = 8  # codes a word


def fragment_index(device: torch.device | str = "cpu") -> Tensor:
    """``[32, 8]``: for lane ``l`` and code ``i``, the flat position ``row * 16 + col`` of its
    value in a 16 (output features) x 16 (input rows) tile."""
    lane = torch.arange(LANES, device=device)[:, None]
    code = torch.arange(CODES, device=device)[None, :]
    feature = lane // 4 + 8 * (code & 1)
    row = 2 * (lane % 4) + 8 * ((code >> 1) & 1) + (code >> 2)
    return feature * 16 + row


def check_shape(k: int, n: int) -> str | None:
    """Why a ``[k, n]`` layer cannot be packed, or ``None``."""
    if k % SUPER_K or n % TILE_N:
        return (
            f"packs 64 input rows by 16 output features at a time; in_features={k} must be a "
            f"multiple of {SUPER_K} and out_features={n} of {TILE_N}"
        )
    return None


def pack(codes: Tensor) -> Tensor:
    """int32 ``[N / 16, K / 64, 32, 4]`` from integer codes ``[K, N]`` in ``[0, 16)``."""
    k, n = codes.shape
    if problem := check_shape(k, n):
        raise ValueError(f"cuda-gptq-mma {problem}")
    # [N/16, 16 features, K/64, 4 steps, 16 rows] -> [N/16, K/64, 4, 256 (feature, row)]
    tiles = codes.t().to(torch.int32).reshape(n // TILE_N, TILE_N, k // SUPER_K, STEPS, 16)
    tiles = tiles.permute(0, 2, 3, 1, 4).reshape(n // TILE_N, k // SUPER_K, STEPS, 256)
    lanes = tiles[..., fragment_index(codes.device)]  # [N/16, K/64, 4, 32, 8]
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=codes.device)
    words = (lanes << shifts).sum(-1, dtype=torch.int64)  # disjoint bits: the sum is an OR
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return words.permute(0, 1, 3, 2).contiguous()  # [N/16, K/64, 32 lanes, 4 steps]


def unpack(packed: Tensor) -> Tensor:
    """The codes ``[K, N]`` (int32) that :func:`pack` packed."""
    tiles_n, blocks, _, _ = packed.shape
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    lanes = (packed.permute(0, 1, 3, 2)[..., None] >> shifts) & 0xF  # [N/16, K/64, 4, 32, 8]
    tiles = torch.empty(tiles_n, blocks, STEPS, 256, dtype=torch.int32, device=packed.device)
    tiles[..., fragment_index(packed.device)] = lanes
    tiles = tiles.reshape(tiles_n, blocks, STEPS, TILE_N, 16).permute(0, 3, 1, 2, 4)
    return tiles.reshape(tiles_n * TILE_N, blocks * SUPER_K).t().contiguous()
