"""What ``triton-gptq`` prepares once per layer for its programs (:class:`GptqOperands`).

- ``scales`` are read as the layer stores them and converted in registers;
- zero points: when every zero is ``2**(bits-1)`` (symmetric grids) the value is a compile-time
  constant and nothing is loaded; otherwise they are unpacked once to uint8 ``[G, N]`` (one
  byte per group and column: 1/128 of the 4-bit weight's bytes at group size 128, and no
  bit-twiddling in the inner loop), and the weight is ``(q - z) * s``, never ``q * s - z * s``,
  which cancels badly in bfloat16;
- groups: after ``QuantLinear.sort_groups`` an act-order layer's ``g_idx`` is
  ``arange(K) // group_size`` like any other, so the programs compute the group from the row
  and load no ``g_idx``. A K block inside one group (``group_size % BLOCK_K == 0``) loads a
  single row of scales (``GROUP_MODE = 0``), otherwise one per row (``1``); a layer whose
  groups are uneven reads ``g_idx`` per row (``2``);
- ``input_perm`` (act-order): the activations are gathered through it inside the programs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ferrule_core.format import unpack_cols

ONE_GROUP = 1 << 30  # "group size" of a per-channel layer: every row is in group 0
UNEVEN = 0  # group_size of a layer whose g_idx is read per row


@dataclass(frozen=True)
class GptqOperands:
    """A layer's tensors as the programs read them (see the module docstring)."""

    qweight: Tensor  # int32 [K * bits / 32, N], contiguous
    scales: Tensor  # [G, N], contiguous, the layer's dtype
    zeros: Tensor | None  # uint8 [G, N], or None when every zero point is ``zero``
    g_idx: Tensor | None  # int32 [K] for uneven groups, else None
    perm: Tensor | None  # int32 [K]: the input feature each stored row reads
    bits: int
    group_size: int  # rows per group (ONE_GROUP: one group; UNEVEN: read g_idx)
    zero: int  # the common zero point, or -1 when ``zeros`` is loaded
    in_features: int
    out_features: int

    @classmethod
    def from_layer(cls, layer) -> GptqOperands:
        bits, k = layer.bits, layer.in_features
        codes = unpack_cols(layer.qzeros, bits)
        common = 1 << (bits - 1)
        symmetric = bool((codes == common).all())
        size = ONE_GROUP if layer.group_size == -1 else layer.group_size
        rows = torch.arange(k, device=layer.g_idx.device)
        uniform = torch.equal(layer.g_idx.long(), rows // size)
        perm = getattr(layer, "input_perm", None)
        return cls(
            qweight=layer.qweight.contiguous(),
            scales=layer.scales.contiguous(),
            zeros=None if symmetric else codes.to(torch.uint8).contiguous(),
            g_idx=None if uniform else layer.g_idx.to(torch.int32).contiguous(),
            perm=None if perm is None else perm.to(torch.int32).contiguous(),
            bits=bits,
            group_size=size if uniform else UNEVEN,
            zero=common if symmetric else -1,
            in_features=k,
            out_features=layer.out_features,
        )

    def group_mode(self, block_k: int) -> int:
        """0: one scale row per K block; 1: group ``k // group_size`` per row; 2: ``g_idx``."""
        if self.g_idx is not None:
            return 2
        return 0 if self.group_size % block_k == 0 else 1

    def launch_args(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``perm, qweight, scales, zeros, g_idx`` pointers (unused ones point at qweight)."""
        spare = self.qweight
        return (
            spare if self.perm is None else self.perm,
            self.qweight,
            self.scales,
            spare if self.zeros is None else self.zeros,
            spare if self.g_idx is None else self.g_idx,
        )

    def constants(self, block_k: int) -> dict[str, int | bool]:
        """The compile-time parameters the tile helpers take."""
        return {
            "BITS": self.bits,
            "GROUP_SIZE": max(self.group_size, 1),
            "GROUP_MODE": self.group_mode(block_k),
            "ZERO": self.zero,
            "HAS_PERM": self.perm is not None,
        }


def dot_precision(dtype: torch.dtype) -> str:
    """float32 activations multiply in full precision, not TF32 (the oracle allows 1e-5)."""
    return "ieee" if dtype == torch.float32 else "tf32"
