"""``gather_columns`` (act-order's ``x[:, perm]`` at two or more rows) against torch's indexing.

Where there is no GPU the program runs in Triton's interpreter (see conftest.py); on a GPU the
same test runs compiled.
"""

from __future__ import annotations

import pytest
import torch

from ferrule_triton_kernels.gather import gather_columns

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("whole_row_from", [1, 1000])  # whole rows on chip, or column blocks
def test_matches_indexing_for_strided_inputs(dtype, index_dtype, whole_row_from):
    gen = torch.Generator().manual_seed(0)
    k = 2500  # not a multiple of the block, nor a power of two
    wide = torch.randn(5, 2 * k, generator=gen).to(dtype).to(DEVICE)
    x = wide[:, ::2]  # columns two apart
    perm = torch.randperm(k, generator=gen).to(index_dtype).to(DEVICE)
    out = gather_columns(x, perm, whole_row_from=whole_row_from)
    assert out.is_contiguous()
    assert torch.equal(out, x[:, perm.long()])


def test_rows_too_long_for_shared_memory_go_by_blocks():
    k = 20_000  # 32,768 float32 values would need 128 KB on chip: column blocks instead
    x = torch.randn(2, k).to(DEVICE)
    perm = torch.randperm(k).to(DEVICE)
    assert torch.equal(gather_columns(x, perm, whole_row_from=1), x[:, perm])


def test_no_rows():
    x = torch.empty(0, 64, device=DEVICE)
    assert gather_columns(x, torch.arange(64, device=DEVICE)).shape == (0, 64)
