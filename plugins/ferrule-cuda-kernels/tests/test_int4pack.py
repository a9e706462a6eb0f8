"""torch-int4's map of a GPTQ layer, checked on the CPU against an independent decoding.

The decoding below is the op's arithmetic as torch's CUDA source states it
(``int4mm.cu``): byte ``b`` of row ``n`` holds row ``2b`` in its high nibble and ``2b + 1`` in
its low one, and a code dequantizes to ``(code - 8) * scale + zero`` of its op group.
"""

import pytest
import torch

from ferrule_core.format import dequantize, unpack_cols, unpack_rows
from ferrule_core.quant_linear import QuantLinear
from ferrule_core.testing.kernels import random_gptq_tensors
from ferrule_cuda_kernels.groups import op_group_size
from ferrule_cuda_kernels.int4pack import (
    block_groups,
    inner_k_tiles,
    pack_nibbles,
    scales_and_zeros,
)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K/2]`` back to codes ``[N, K]``, one byte at a time."""
    n, half = packed.shape
    codes = torch.empty(n, 2 * half, dtype=torch.int64)
    for b in range(half):
        byte = packed[:, b].long()
        codes[:, 2 * b] = byte >> 4
        codes[:, 2 * b + 1] = byte & 15
    return codes


def op_dequantize(packed: torch.Tensor, table: torch.Tensor, size: int) -> torch.Tensor:
    """The op's weight ``[K, N]`` in float64 from its inputs."""
    codes = unpack_nibbles(packed).double()  # [N, K]
    groups = torch.arange(codes.shape[1]) // size
    scale, zero = table[groups, :, 0].t(), table[groups, :, 1].t()  # [N, K]
    return ((codes - 8) * scale + zero).t()


def test_pack_nibbles_puts_the_even_row_high():
    codes = torch.tensor([[1, 2, 3, 4], [15, 0, 7, 8]])
    assert pack_nibbles(codes).tolist() == [[0x12, 0x34], [0xF0, 0x78]]
    random = torch.randint(0, 16, (24, 64))
    packed = pack_nibbles(random)
    assert packed.dtype == torch.uint8 and packed.shape == (24, 32)
    assert torch.equal(unpack_nibbles(packed), random)
    with pytest.raises(ValueError, match="even"):
        pack_nibbles(torch.zeros(2, 3, dtype=torch.int64))


def test_inner_k_tiles():
    assert [inner_k_tiles(k) for k in (4096, 192, 160, 32)] == [8, 4, 2, 2]
    with pytest.raises(ValueError):
        inner_k_tiles(40)


def test_block_groups():
    assert block_groups([128, 32], 32).tolist() == [0, 0, 0, 0, 1]
    assert block_groups([256, 0, 256], 128).tolist() == [0, 0, 2, 2]


@pytest.mark.parametrize(
    ("k", "n", "group_size", "desc_act", "sym"),
    [
        (256, 64, 128, False, True),
        (256, 64, 32, True, False),
        (160, 96, 128, True, False),
        (160, 96, -1, False, False),
        (512, 32, 256, True, True),
    ],
)
def test_the_map_is_exact(k, n, group_size, desc_act, sym):
    tensors = random_gptq_tensors(k, n, 4, group_size, desc_act=desc_act, sym=sym)
    layer = QuantLinear.from_tensors(tensors, 4, group_size, desc_act=desc_act, sym=sym)
    layer.sort_groups()  # what QuantLinear does for a kernel with sorted_groups
    groups = layer.scales.shape[0]
    rows = torch.bincount(layer.g_idx.long(), minlength=groups).tolist()
    size = op_group_size(rows)
    assert size is not None
    codes = unpack_rows(layer.qweight, 4)
    table = scales_and_zeros(layer.scales, unpack_cols(layer.qzeros, 4), block_groups(rows, size))
    assert table.shape == (k // size, n, 2)
    got = op_dequantize(pack_nibbles(codes.t()), table, size)
    expected = dequantize(
        layer.qweight, layer.qzeros, layer.scales, layer.g_idx, 4, dtype=torch.float64
    )  # stored (sorted) order, which is the order of the input the kernel receives
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    # ... and x[:, input_perm] @ that is the layer's product in the original order.
    x = torch.randn(3, k, dtype=torch.float64)
    perm = layer.input_perm.long() if layer.input_perm is not None else torch.arange(k)
    original = layer.dequantize_weight(torch.float64).t()
    assert torch.allclose(x[:, perm] @ got, x @ original, atol=1e-9)
