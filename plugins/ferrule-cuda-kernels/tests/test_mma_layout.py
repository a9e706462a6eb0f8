"""cuda-gptq-mma's packed layout, checked on the CPU against the PTX fragment definitions.

The kernel (``csrc/gptq_mma.cu``) turns a packed word into the A fragment of an mma.sync
m16n8k16 step by shifting it by 0, 4, 8 and 12 bits and keeping bits 0-3 (low half) and
16-19 (high half): register ``i`` of the fragment holds (low, high). The PTX ISA places the
A fragment's register ``i`` of lane ``l`` at row ``l // 4 + 8 (i & 1)`` and columns
``2 (l % 4) + 8 (i >> 1)`` + (0 for low, 1 for high). Decoding every word that way must give
back the layer's codes; ``unpack`` must invert ``pack`` too.
"""

import pytest
import torch

from ferrule_core.specs import KernelRequest
from ferrule_cuda_kernels.checks import check_mma
from ferrule_cuda_kernels.mma_pack import check_shape, pack, unpack


def decode_like_the_kernel(packed: torch.Tensor) -> torch.Tensor:
    tiles_n, blocks = packed.shape[:2]
    codes = torch.full((blocks * 64, tiles_n * 16), -1, dtype=torch.int64)
    for tile in range(tiles_n):
        for block in range(blocks):
            for lane in range(32):
                g, t = lane // 4, lane % 4
                for step in range(4):
                    word = int(packed[tile, block, lane, step]) & 0xFFFFFFFF
                    for i in range(4):
                        shifted = word >> (4 * i)
                        low, high = shifted & 0xF, (shifted >> 16) & 0xF
                        feature = tile * 16 + g + 8 * (i & 1)
                        row = block * 64 + step * 16 + 2 * t + 8 * (i >> 1)
                        codes[row, feature] = low
                        codes[row + 1, feature] = high
    return codes


@pytest.mark.parametrize(("k", "n"), [(64, 16), (128, 48)])
def test_words_decode_to_the_fragments_ptx_defines(k, n):
    codes = torch.randint(0, 16, (k, n), generator=torch.Generator().manual_seed(k + n))
    packed = pack(codes)
    assert packed.shape == (n // 16, k // 64, 32, 4) and packed.dtype == torch.int32
    assert torch.equal(decode_like_the_kernel(packed), codes)


def test_unpack_inverts_pack():
    codes = torch.randint(0, 16, (256, 96), generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack(pack(codes)), codes.to(torch.int32))


@pytest.mark.parametrize(("k", "n"), [(96, 16), (64, 24)])
def test_unpackable_shapes_are_refused_with_the_reason(k, n):
    reason = check_shape(k, n)
    assert reason is not None and str(k) in reason and str(n) in reason
    with pytest.raises(ValueError, match="multiple of"):
        pack(torch.zeros(k, n, dtype=torch.int32))


def test_check_refuses_groups_that_are_not_multiples_of_16():
    request = KernelRequest(
        platform="cuda", dtype="float16", bits=4, group_size=40, in_features=320, out_features=64
    )
    reason = check_mma(request)
    assert reason is not None and "multiple of 16" in reason and "40" in reason


def test_check_refuses_unpackable_shapes():
    request = KernelRequest(
        platform="cuda", dtype="float16", bits=4, group_size=32, in_features=160, out_features=96
    )
    assert "multiple of 64" in check_mma(request)
