"""Map a GPTQ 4-bit layer onto torch's CUDA int4 weight-only matmul (tinygemm).

The op, established from torch's source (``aten/src/ATen/native/cuda/int4mm.cu``, torch>=2.5)
and its test helper (``_group_quantize_tensor`` in ``torch/testing/_internal/
common_quantization.py``):

- ``aten._convert_weight_to_int4pack(w, inner_k_tiles)`` takes codes packed two to a byte,
  uint8 ``[N, K/2]`` with byte ``b`` of row ``n`` holding ``(w[n, 2b] << 4) | w[n, 2b + 1]``
  (the *high* nibble is the even row: the tensor-core B layout reads it as the lower k), and
  returns the m16n8k16 tensor-core layout int32 ``[N/8, K/(16*inner_k_tiles), 32,
  inner_k_tiles/2]``. ``inner_k_tiles`` is 2, 4 or 8 and ``16 * inner_k_tiles`` must divide K.
  (The CPU op of the same name lays codes out differently; this module is for CUDA only.)
- ``aten._weight_int4pack_mm(x, packed, groupsize, scales_and_zeros)`` needs ``x`` contiguous
  2-D **bfloat16**, groupsize 32, 64, 128 or 256 dividing K, ``scales_and_zeros`` bfloat16
  ``[K/groupsize, N, 2]``, and returns bfloat16 ``[M, N]`` with
  ``y[m, n] = sum_k x[m, k] * ((w[n, k] - 8) * s[k // groupsize, n] + z[k // groupsize, n])``:
  the kernel turns a code into ``code - 8`` in bfloat16 and applies ``fma(., scale, zero)`` in
  bfloat16 (``__hfma2``), accumulating on tensor cores in float32. It needs sm_80 or newer.

GPTQ's ``(q - z) * s`` is ``(q - 8) * s + (8 - z) * s``, so each group maps exactly with zero
``(8 - z) * s`` (rounded to bfloat16 with the scale). The layer arrives with its rows sorted by
group (``sorted_groups=True``), so each GPTQ group is a run of rows; one op groupsize must
divide every run (the largest such of 256, 128, 64, 32 is used, each GPTQ group repeating its
scale and zero over its op groups). That covers group sizes 32, 64, 128, 256 and their
multiples, act-order, a short last group of a multiple of 32 rows, and per-channel layers
whose K is a multiple of 32; other layers are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

INNER_K_TILES = (8, 4, 2)  # largest first: 16-byte weight loads


def inner_k_tiles(in_features: int) -> int:
    """The widest ``inner_k_tiles`` whose tile of ``16 * inner_k_tiles`` rows divides K."""
    for tiles in INNER_K_TILES:
        if in_features % (16 * tiles) == 0:
            return tiles
    raise ValueError(f"in_features={in_features} is not a multiple of 32")


def block_groups(rows: Sequence[int], size: int) -> Tensor:
    """The GPTQ group of each op group: group ``g`` repeated ``rows[g] // size`` times."""
    counts = torch.tensor([count // size for count in rows], dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(len(rows)), counts)


def pack_nibbles(codes: Tensor) -> Tensor:
    """int codes ``[N, K]`` in [0, 16) to the op's input, uint8 ``[N, K/2]``."""
    if codes.shape[-1] % 2:
        raise ValueError(f"K={codes.shape[-1]} must be even to pack two codes a byte")
    return ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8).contiguous()


def scales_and_zeros(scales: Tensor, zeros: Tensor, blocks: Tensor) -> Tensor:
    """The op's float64 ``[K/size, N, 2]`` table: ``s`` and ``(8 - z) * s`` of each op group.

    ``scales`` ``[G, N]``, ``zeros`` the unpacked zero codes ``[G, N]``, ``blocks`` from
    :func:`block_groups`. The caller casts it to bfloat16.
    """
    s = scales.double()[blocks]
    z = zeros.double()[blocks]
    return torch.stack([s, (8 - z) * s], dim=-1).contiguous()
