"""Step inputs staged for the device, and the ladder of CUDA-graph batch sizes."""

from __future__ import annotations

import itertools

import pytest
import torch

from ferrule_core.forward_batch import build_forward_batch
from ferrule_engine.cuda_graphs import capture_sizes
from ferrule_engine.staging import stage_step

CASE = {
    "input_ids": [11, 12, 13, 14, 15, 21],
    "positions": [0, 1, 2, 3, 4, 9],
    "tables": [[3, 1], [2, 5, 4]],
    "query_lens": [5, 1],
    "context_lens": [5, 10],
    "block_size": 4,
    "sample": [True, True],
}


def _check(staged, device):
    expected = build_forward_batch(
        CASE["tables"],
        CASE["query_lens"],
        CASE["context_lens"],
        CASE["block_size"],
        sample=CASE["sample"],
    )
    assert staged.input_ids.tolist() == CASE["input_ids"]
    assert staged.positions.tolist() == CASE["positions"]
    batch = staged.batch
    for name in ("query_start", "seq_lens", "block_tables", "slot_mapping", "logits_indices"):
        got, want = getattr(batch, name), getattr(expected, name)
        assert got.device.type == device
        assert got.dtype == want.dtype, name
        assert torch.equal(got.cpu(), want), name
    assert batch.query_lens == CASE["query_lens"] and batch.context_lens == CASE["context_lens"]


def test_staging_on_the_cpu_matches_build_forward_batch():
    _check(stage_step(**CASE, device=torch.device("cpu")), "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_staging_on_cuda_copies_once_per_dtype_and_matches():
    staged = stage_step(**CASE, device=torch.device("cuda"))
    torch.cuda.synchronize()
    _check(staged, "cuda")
    # Views into two device buffers: one int64, one int32.
    assert staged.input_ids.untyped_storage().data_ptr() == (
        staged.batch.slot_mapping.untyped_storage().data_ptr()
    )
    assert staged.batch.seq_lens.untyped_storage().data_ptr() == (
        staged.batch.block_tables.untyped_storage().data_ptr()
    )


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (0, []),
        (1, [1]),
        (3, [1, 2, 3]),
        (8, [1, 2, 4, 8]),
        (20, [1, 2, 4, 8, 16, 20]),
    ],
)
def test_capture_sizes(limit, expected):
    assert capture_sizes(limit) == expected


def test_capture_sizes_up_to_256_step_by_8():
    sizes = capture_sizes(256)
    assert sizes[:4] == [1, 2, 4, 8] and sizes[-1] == 256
    assert all(b - a == 8 for a, b in itertools.pairwise(sizes[3:]))
