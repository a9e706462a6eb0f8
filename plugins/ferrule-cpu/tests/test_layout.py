"""The row layout that maps any GPTQ grouping onto torch's uniform int4 groups."""

import torch

from ferrule_core.format import default_g_idx
from ferrule_cpu.layout import plan_rows


def _act_order_g_idx(in_features, group_size, seed=0):
    order = torch.randperm(in_features, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[order] = (torch.arange(in_features) // group_size).to(torch.int32)
    return g_idx


def test_in_order_groups_are_the_identity_with_the_largest_op_group():
    layout = plan_rows(default_g_idx(512, 128), 4)
    assert layout.rows is None and layout.group_size == 128
    assert layout.block_groups.tolist() == [0, 1, 2, 3]
    x = torch.randn(3, 512)
    assert torch.equal(layout.gather(x), x)


def test_per_channel_splits_one_group_into_op_groups():
    layout = plan_rows(default_g_idx(1024, -1), 1)
    assert layout.rows is None and layout.group_size == 256
    assert layout.block_groups.tolist() == [0, 0, 0, 0]


def test_act_order_permutes_rows_without_padding():
    g_idx = _act_order_g_idx(256, 64)
    layout = plan_rows(g_idx, 4)
    assert not layout.padded and layout.group_size == 64
    assert torch.equal(layout.rows, torch.argsort(g_idx.long(), stable=True))
    # every op group holds rows of exactly one GPTQ group: its own
    per_block = g_idx.long()[layout.rows].view(-1, 64)
    assert torch.equal(per_block, layout.block_groups[:, None].expand(-1, 64))
    x = torch.randn(2, 256)
    assert torch.equal(layout.gather(x), x[:, layout.rows])


def test_short_last_group_needs_no_padding_at_a_smaller_op_group():
    layout = plan_rows(default_g_idx(160, 128), 2)  # groups of 128 and 32 rows
    assert layout.rows is None and layout.group_size == 32
    assert layout.block_groups.tolist() == [0, 0, 0, 0, 1]


def test_uneven_groups_are_padded_with_rows_that_read_zero():
    g_idx = torch.tensor([1] * 40 + [0] * 24, dtype=torch.int32)  # 24 and 40 rows
    layout = plan_rows(g_idx, 2)
    assert layout.group_size == 32 and layout.padded_features == 96
    assert layout.block_groups.tolist() == [0, 1, 1]
    x = torch.randn(3, 64)
    gathered = layout.gather(x)
    assert gathered.shape == (3, 96) and gathered.is_contiguous()
    real = layout.rows < 64
    assert torch.equal(gathered[:, real], x[:, layout.rows[real]])
    assert not gathered[:, ~real].any()
    assert int(real.sum()) == 64 and sorted(layout.rows[real].tolist()) == list(range(64))
    # padding sits at the end of each group's op groups, never inside another group's
    assert (g_idx.long()[layout.rows[:32][real[:32]]] == 0).all()
    assert (g_idx.long()[layout.rows[32:][real[32:]]] == 1).all()


def test_fewest_padding_rows_win_then_the_larger_op_group():
    layout = plan_rows(default_g_idx(200, 128), 2)  # 128 + 72 rows
    assert layout.group_size == 32 and layout.padded_features == 224
