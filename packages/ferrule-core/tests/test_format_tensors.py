"""The GPTQ tensor format against an independent bit-level oracle written with Python ints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferrule_core.errors import FormatError
from ferrule_core.format import (
    SUPPORTED_BITS,
    check_tensors,
    default_g_idx,
    dequantize,
    num_groups,
    pack_cols,
    pack_rows,
    unpack_cols,
    unpack_rows,
    zeros_v1_to_v2,
    zeros_v2_to_v1,
)

# (bits, K): 3-bit K must be a multiple of 32, 4-bit of 8, 2-bit of 16, 8-bit of 4.
ROW_SHAPES = [(2, 16), (2, 160), (3, 32), (3, 160), (4, 8), (4, 24), (4, 160), (8, 4), (8, 12)]
# (bits, N): N not a power of two where the bit width allows it.
COL_SHAPES = [(2, 48), (3, 96), (4, 24), (4, 40), (8, 12), (8, 4)]


def random_codes(shape: tuple[int, int], bits: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1 << bits, shape, generator=gen, dtype=torch.int32)


def words_to_codes(words: np.ndarray, bits: int, count: int) -> list[int]:
    """Read ``count`` codes from int32 words as one little-endian bitstream."""
    stream = int.from_bytes(np.ascontiguousarray(words).astype("<i4").tobytes(), "little")
    return [(stream >> (i * bits)) & ((1 << bits) - 1) for i in range(count)]


def codes_to_words(codes: list[int], bits: int) -> list[int]:
    """Write codes as a little-endian bitstream and read it back as signed int32 words."""
    stream = sum(code << (i * bits) for i, code in enumerate(codes))
    data = stream.to_bytes(len(codes) * bits // 8, "little")
    return np.frombuffer(data, dtype="<i4").tolist()


def oracle_unpack_rows(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    words = qweight.numpy()
    count = words.shape[0] * 32 // bits
    columns = [words_to_codes(words[:, n], bits, count) for n in range(words.shape[1])]
    return torch.tensor(columns, dtype=torch.int32).t()


def oracle_unpack_cols(qzeros: torch.Tensor, bits: int) -> torch.Tensor:
    words = qzeros.numpy()
    count = words.shape[1] * 32 // bits
    return torch.tensor([words_to_codes(row, bits, count) for row in words], dtype=torch.int32)


@pytest.mark.parametrize("bits,k", ROW_SHAPES)
@pytest.mark.parametrize("n", [1, 7, 33])
def test_pack_rows_matches_independent_bitstream(bits, k, n):
    codes = random_codes((k, n), bits, seed=k * n + bits)
    qweight = pack_rows(codes, bits)
    assert qweight.dtype == torch.int32
    assert qweight.shape == (k * bits // 32, n)
    assert torch.equal(oracle_unpack_rows(qweight, bits), codes)
    expected = [codes_to_words(codes[:, j].tolist(), bits) for j in range(n)]
    assert qweight.t().tolist() == expected
    assert torch.equal(unpack_rows(qweight, bits), codes)


@pytest.mark.parametrize("bits,n", COL_SHAPES)
@pytest.mark.parametrize("groups", [1, 5])
def test_pack_cols_matches_independent_bitstream(bits, n, groups):
    codes = random_codes((groups, n), bits, seed=groups * n + bits)
    qzeros = pack_cols(codes, bits)
    assert qzeros.dtype == torch.int32
    assert qzeros.shape == (groups, n * bits // 32)
    assert torch.equal(oracle_unpack_cols(qzeros, bits), codes)
    assert qzeros.tolist() == [codes_to_words(row, bits) for row in codes.tolist()]
    assert torch.equal(unpack_cols(qzeros, bits), codes)


def test_known_4bit_words():
    assert pack_rows(torch.arange(8).reshape(8, 1), 4).item() == 0x76543210
    high = pack_rows(torch.arange(8, 16).reshape(8, 1), 4).item()
    assert high == 0xFEDCBA98 - (1 << 32)  # top bit set: negative as int32
    assert pack_cols(torch.arange(8).reshape(1, 8), 4).item() == 0x76543210


def test_known_3bit_words_with_straddling_codes():
    codes = torch.zeros(32, 1, dtype=torch.int64)
    codes[0] = 0b111  # word 0, bits 0-2
    codes[10] = 0b101  # stream bits 30-32: low two bits end word 0, top bit starts word 1
    codes[21] = 0b110  # stream bits 63-65: bit 0 ends word 1, bits 1-2 start word 2
    codes[31] = 0b111  # stream bits 93-95: the top of word 2
    qweight = pack_rows(codes, 3)
    assert qweight.flatten().tolist() == [0x40000007, 0x00000001, 0xE0000003 - (1 << 32)]
    assert torch.equal(unpack_rows(qweight, 3), codes.to(torch.int32))


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_all_ones_codes_give_minus_one_words(bits):
    codes = torch.full((32, 3), (1 << bits) - 1)
    assert torch.equal(pack_rows(codes, bits), torch.full((bits, 3), -1, dtype=torch.int32))


@pytest.mark.parametrize(
    "bits,k,multiple", [(3, 48, 32), (4, 100, 8), (2, 24, 16), (8, 6, 4), (3, 96 + 16, 32)]
)
def test_pack_rows_rejects_partial_words(bits, k, multiple):
    with pytest.raises(FormatError, match=rf"{k} codes of {bits} bits.*multiple of {multiple}"):
        pack_rows(torch.zeros(k, 4, dtype=torch.int32), bits)


def test_pack_cols_names_out_features():
    with pytest.raises(FormatError, match=r"pack_cols \(N = out_features\): 20 codes of 4 bits"):
        pack_cols(torch.zeros(2, 20, dtype=torch.int32), 4)


@pytest.mark.parametrize("bad", [-1, 16])
def test_pack_rejects_codes_out_of_range(bad):
    codes = torch.zeros(8, 2, dtype=torch.int32)
    codes[3, 1] = bad
    with pytest.raises(FormatError, match=r"codes span .* must lie in \[0, 15\]"):
        pack_rows(codes, 4)


def test_pack_and_unpack_reject_bad_inputs():
    with pytest.raises(FormatError, match=r"bits=5 is not supported.*2, 3, 4, 8"):
        pack_rows(torch.zeros(32, 1, dtype=torch.int32), 5)
    with pytest.raises(FormatError, match=r"integer tensor, got dtype torch\.float32"):
        pack_rows(torch.zeros(8, 1), 4)
    with pytest.raises(
        FormatError, match=r"2-D int32 tensor, got shape \(3, 2\) dtype torch.int64"
    ):
        unpack_rows(torch.zeros(3, 2, dtype=torch.int64), 4)
    with pytest.raises(FormatError, match=r"4 packed words.*multiple of 3 at bits=3"):
        unpack_rows(torch.zeros(4, 2, dtype=torch.int32), 3)


def test_num_groups_and_default_g_idx():
    assert num_groups(160, 32) == 5
    assert num_groups(100, 32) == 4
    assert num_groups(160, -1) == 1
    assert default_g_idx(160, 32).tolist() == [k // 32 for k in range(160)]
    assert default_g_idx(160, 32).dtype == torch.int32
    assert default_g_idx(64, -1).tolist() == [0] * 64
    with pytest.raises(FormatError, match=r"group_size=0 is invalid"):
        num_groups(64, 0)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_zero_conversion_is_exact_for_symmetric_grids(bits):
    true_zero = 1 << (bits - 1)
    v2 = pack_cols(torch.full((3, 96), true_zero), bits)
    v1 = zeros_v2_to_v1(v2, bits)
    assert torch.equal(unpack_cols(v1, bits), torch.full((3, 96), true_zero - 1, dtype=torch.int32))
    assert torch.equal(zeros_v1_to_v2(v1, bits), v2)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_asymmetric_zero_of_zero_refuses_v1_unless_wrapping(bits):
    zeros = random_codes((4, 96), bits, seed=bits)
    zeros[zeros == 0] = 1
    zeros[0, :5] = 0
    v2 = pack_cols(zeros, bits)
    with pytest.raises(
        FormatError, match=r'5 of 384 zero points are 0.*checkpoint_format="gptq_v2"'
    ):
        zeros_v2_to_v1(v2, bits)
    v1 = zeros_v2_to_v1(v2, bits, allow_wrap=True)
    stored = unpack_cols(v1, bits)
    assert stored[0, :5].tolist() == [(1 << bits) - 1] * 5
    assert torch.equal(stored, (zeros - 1) % (1 << bits))
    assert torch.equal(zeros_v1_to_v2(v1, bits), v2)


def make_layer(bits: int, k: int, n: int, group_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    groups = num_groups(k, group_size)
    codes = random_codes((k, n), bits, seed)
    zeros = random_codes((groups, n), bits, seed + 1)
    scales = (torch.rand(groups, n, generator=gen) * 0.1 + 1e-3).to(torch.float16)
    g_idx = torch.randint(0, groups, (k,), generator=gen, dtype=torch.int32)  # act-order
    return codes, zeros, scales, g_idx


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_dequantize_matches_slow_float64_reference(bits):
    k, n, group_size = 64, 96, 16
    codes, zeros, scales, g_idx = make_layer(bits, k, n, group_size, seed=bits)
    qweight, qzeros = pack_rows(codes, bits), pack_cols(zeros, bits)
    check_tensors(qweight, qzeros, scales, g_idx, bits, k, n, group_size)
    c, z, s, g = codes.tolist(), zeros.tolist(), scales.double().tolist(), g_idx.tolist()
    slow = [[(c[i][j] - z[g[i]][j]) * s[g[i]][j] for j in range(n)] for i in range(k)]
    slow = torch.tensor(slow, dtype=torch.float64)

    exact = dequantize(qweight, qzeros, scales, g_idx, bits, dtype=torch.float64)
    assert exact.dtype == torch.float64 and exact.shape == (k, n)
    assert torch.equal(exact, slow)
    half = dequantize(qweight, qzeros, scales, g_idx, bits)
    assert half.dtype == torch.float16
    assert torch.equal(half, slow.to(torch.float16))
    assert dequantize(qweight, qzeros, scales, g_idx, bits, dtype=torch.float32).dtype == (
        torch.float32
    )
    v1 = zeros_v2_to_v1(qzeros, bits, allow_wrap=True)
    from_v1 = dequantize(
        qweight, v1, scales, g_idx, bits, checkpoint_format="gptq", dtype=torch.float64
    )
    assert torch.equal(from_v1, slow)


def test_dequantize_rejects_mismatched_tensors():
    codes, zeros, scales, g_idx = make_layer(4, 32, 16, 16, seed=0)
    qweight, qzeros = pack_rows(codes, 4), pack_cols(zeros, 4)
    with pytest.raises(FormatError, match=r"qzeros has shape \(2, 1\)"):
        dequantize(qweight, qzeros[:, :1], scales, g_idx, 4)
    with pytest.raises(FormatError, match=r"g_idx values span \[2, 2\] but must lie in \[0, 1\]"):
        dequantize(qweight, qzeros, scales, torch.full_like(g_idx, 2), 4)
    with pytest.raises(FormatError, match=r"checkpoint_format='gptq_v3' is unknown"):
        dequantize(qweight, qzeros, scales, g_idx, 4, checkpoint_format="gptq_v3")


def test_check_tensors_names_each_bad_tensor():
    bits, k, n, group_size = 4, 64, 24, 32
    codes, zeros, scales, g_idx = make_layer(bits, k, n, group_size, seed=3)
    good = {
        "qweight": pack_rows(codes, bits),
        "qzeros": pack_cols(zeros, bits),
        "scales": scales,
        "g_idx": g_idx,
    }
    check_tensors(**good, bits=bits, in_features=k, out_features=n, group_size=group_size)
    broken = {
        "qweight": good["qweight"][:-1],
        "qzeros": good["qzeros"].to(torch.int64),
        "scales": scales.to(torch.int32),
        "g_idx": g_idx.to(torch.int64),
    }
    for name, bad in broken.items():
        tensors = {**good, name: bad}
        with pytest.raises(FormatError) as info:
            check_tensors(**tensors, bits=bits, in_features=k, out_features=n, group_size=32)
        message = str(info.value)
        assert message.startswith(f"{name} has shape {tuple(bad.shape)} dtype {bad.dtype}")
        assert "expected shape" in message and "in_features=64" in message
    out_of_range = g_idx.clone()
    out_of_range[7] = 5
    with pytest.raises(FormatError, match=r"g_idx values span \[0, 5\] .* \[0, 1\] for 2 groups"):
        check_tensors(
            **good | {"g_idx": out_of_range},
            bits=bits,
            in_features=k,
            out_features=n,
            group_size=group_size,
        )
    with pytest.raises(FormatError, match=r"in_features=60 cannot be packed.*multiple of 8"):
        check_tensors(**good, bits=bits, in_features=60, out_features=n, group_size=group_size)
