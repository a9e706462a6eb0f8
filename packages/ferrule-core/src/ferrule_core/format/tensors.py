"""The GPTQ tensor layout: packing, unpacking, zero-point conventions, reference dequantize.

A quantized linear layer with ``K`` input and ``N`` output features, ``bits`` bits per
weight and ``G`` groups is four tensors:

- ``qweight`` int32 ``[K * bits / 32, N]``: the weight codes of the transposed ``[K, N]``
  view of the ``nn.Linear`` weight, packed along ``K``.
- ``qzeros`` int32 ``[G, N * bits / 32]``: the zero-point codes, packed along ``N``.
- ``scales`` floating (usually float16) ``[G, N]``.
- ``g_idx`` int32 ``[K]``: the group of each input row; ``arange(K) // group_size`` unless
  act-order (``desc_act``) assigned rows to groups in another order.

Codes are unsigned integers in ``[0, 2**bits)`` and ``W[k, n] = (q[k, n] - z[g, n]) * s[g, n]``
with ``g = g_idx[k]``. Packing is a little-endian bitstream: code ``i`` along the packed
dimension takes stream bits ``[i * bits, (i + 1) * bits)``, and stream bit ``b`` is bit
``b % 32`` of word ``b // 32``. At 4 bits code ``i`` is word ``i // 8`` shifted by
``4 * (i % 8)``; at 3 bits codes straddle words, 32 codes filling exactly 3 words. A word
whose top bit is set reads as a negative int32; all bit arithmetic here is done in int64 and
wrapped back to int32 two's complement.

Zero points on disk. ``checkpoint_format="gptq_v2"`` stores the zero point ``z`` itself.
``"gptq"`` (v1, what AutoGPTQ writes and most engines read) stores ``z - 1``, a historical
off-by-one that readers undo with ``stored + 1``. ferrule keeps v2 semantics in memory and
converts at the file boundary, modulo ``2**bits``. For symmetric grids (``z = 2**(bits-1)``)
this is exact everywhere. For asymmetric grids a true zero of 0 is stored as ``2**bits - 1``
in v1: ferrule wraps it back, but readers that do not wrap compute ``2**bits`` and dequantize
a different weight. :func:`zeros_v2_to_v1` therefore refuses zero codes of 0 unless
``allow_wrap=True``; write such layers with ``checkpoint_format="gptq_v2"`` instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ferrule_core.config import CHECKPOINT_FORMATS, SUPPORTED_BITS
from ferrule_core.errors import FormatError

_WORD = 32
_WORD_MASK = (1 << _WORD) - 1


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise FormatError(
            f"bits={bits!r} is not supported: GPTQ packs "
            f"{', '.join(map(str, SUPPORTED_BITS))} bits per weight"
        )


def _period(bits: int) -> tuple[int, int]:
    """Codes and int32 words in one repeating packing period (32 codes / 3 words at 3 bits)."""
    codes = _WORD // math.gcd(bits, _WORD)
    return codes, codes * bits // _WORD


def num_groups(in_features: int, group_size: int) -> int:
    """Number of quantization groups: ``ceil(in_features / group_size)``, or 1 for -1."""
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features <= 0:
        raise FormatError(f"in_features={in_features!r} must be a positive integer")
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise FormatError(f"group_size={group_size!r} must be an integer: -1 or e.g. 128")
    if group_size == -1:
        return 1
    if group_size <= 0:
        raise FormatError(
            f"group_size={group_size} is invalid: use -1 (one group) or a positive size "
            "such as 32, 64 or 128"
        )
    return -(-in_features // group_size)


def default_g_idx(in_features: int, group_size: int, device=None) -> Tensor:
    """``g_idx`` without act-order: int32 ``[K]``, ``arange(K) // group_size`` (zeros for -1)."""
    num_groups(in_features, group_size)  # validates both
    rows = torch.arange(in_features, dtype=torch.int32, device=device)
    if group_size == -1:
        return torch.zeros_like(rows)
    return rows // group_size


def _to_int32(words: Tensor) -> Tensor:
    """int64 words in ``[0, 2**32)`` to int32 with the same bits (two's complement)."""
    return torch.where(words >= 1 << 31, words - (1 << _WORD), words).to(torch.int32)


def _pack_dim0(codes: Tensor, bits: int, what: str) -> Tensor:
    """Pack int codes ``[L, M]`` into int32 words ``[L * bits / 32, M]`` along dim 0."""
    if codes.dim() != 2:
        raise FormatError(f"{what}: expected a 2-D tensor of codes, got shape {tuple(codes.shape)}")
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise FormatError(f"{what}: codes must be an integer tensor, got dtype {codes.dtype}")
    length, width = codes.shape
    per_period, words_per_period = _period(bits)
    if length * bits % _WORD:
        raise FormatError(
            f"{what}: {length} codes of {bits} bits make {length * bits} bits, not a whole "
            f"number of 32-bit words; the packed size must be a multiple of {per_period} "
            f"at bits={bits} (e.g. {-(-length // per_period) * per_period})"
        )
    c = codes.to(torch.int64)
    if c.numel():
        low, high = int(c.min()), int(c.max())
        if low < 0 or high >= 1 << bits:
            raise FormatError(
                f"{what}: codes span [{low}, {high}] but {bits}-bit codes must lie in "
                f"[0, {(1 << bits) - 1}]"
            )
    c = c.reshape(length // per_period, per_period, width)
    words = torch.zeros(
        length // per_period, words_per_period, width, dtype=torch.int64, device=codes.device
    )
    for i in range(per_period):
        word, shift = divmod(i * bits, _WORD)
        words[:, word] |= (c[:, i] << shift) & _WORD_MASK
        if shift + bits > _WORD:  # straddles into the next word
            words[:, word + 1] |= c[:, i] >> (_WORD - shift)
    return _to_int32(words.reshape(-1, width))


def _unpack_dim0(packed: Tensor, bits: int, what: str) -> Tensor:
    """Inverse of :func:`_pack_dim0`: int32 words ``[R, M]`` to codes ``[R * 32 / bits, M]``."""
    if packed.dim() != 2 or packed.dtype != torch.int32:
        raise FormatError(
            f"{what}: expected a 2-D int32 tensor, got shape {tuple(packed.shape)} "
            f"dtype {packed.dtype}"
        )
    rows, width = packed.shape
    per_period, words_per_period = _period(bits)
    if rows % words_per_period:
        raise FormatError(
            f"{what}: {rows} packed words of {bits}-bit codes do not make whole codes; "
            f"the packed size must be a multiple of {words_per_period} at bits={bits}"
        )
    mask = (1 << bits) - 1
    if _WORD % bits == 0:  # no code straddles a word: one broadcast shift does it
        shifts = torch.arange(0, _WORD, bits, dtype=torch.int32, device=packed.device)
        # int32 shifts are arithmetic; the mask drops the copies of the sign bit
        codes = (packed.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask
        return codes.reshape(-1, width)
    words = (packed.to(torch.int64) & _WORD_MASK).reshape(-1, words_per_period, width)
    codes = torch.empty(words.shape[0], per_period, width, dtype=torch.int64, device=packed.device)
    for i in range(per_period):
        word, shift = divmod(i * bits, _WORD)
        code = words[:, word] >> shift
        if shift + bits > _WORD:
            code = code | (words[:, word + 1] << (_WORD - shift))
        codes[:, i] = code & mask
    return codes.reshape(-1, width).to(torch.int32)


def pack_rows(codes: Tensor, bits: int) -> Tensor:
    """Pack weight codes int ``[K, N]`` along ``K`` into ``qweight`` int32 ``[K*bits/32, N]``."""
    _check_bits(bits)
    return _pack_dim0(codes, bits, "pack_rows (K = in_features)")


def unpack_rows(qweight: Tensor, bits: int) -> Tensor:
    """Unpack ``qweight`` int32 ``[K*bits/32, N]`` into codes int32 ``[K, N]``."""
    _check_bits(bits)
    return _unpack_dim0(qweight, bits, "unpack_rows (qweight)")


def pack_cols(codes: Tensor, bits: int) -> Tensor:
    """Pack zero codes int ``[G, N]`` along ``N`` into ``qzeros`` int32 ``[G, N*bits/32]``."""
    _check_bits(bits)
    if codes.dim() != 2:
        raise FormatError(f"pack_cols: expected 2-D codes [G, N], got shape {tuple(codes.shape)}")
    return _pack_dim0(codes.t(), bits, "pack_cols (N = out_features)").t().contiguous()


def unpack_cols(qzeros: Tensor, bits: int) -> Tensor:
    """Unpack ``qzeros`` int32 ``[G, N*bits/32]`` into codes int32 ``[G, N]``."""
    _check_bits(bits)
    if qzeros.dim() != 2:
        raise FormatError(f"unpack_cols: expected 2-D qzeros, got shape {tuple(qzeros.shape)}")
    return _unpack_dim0(qzeros.t(), bits, "unpack_cols (qzeros)").t().contiguous()


def zeros_v1_to_v2(qzeros: Tensor, bits: int) -> Tensor:
    """Packed v1 zeros (stored ``z - 1``) to packed v2 zeros: ``(stored + 1) mod 2**bits``."""
    stored = unpack_cols(qzeros, bits)
    return pack_cols((stored + 1) & ((1 << bits) - 1), bits)


def zeros_v2_to_v1(qzeros: Tensor, bits: int, *, allow_wrap: bool = False) -> Tensor:
    """Packed v2 zeros to packed v1 zeros: ``(z - 1) mod 2**bits``.

    A zero code of 0 becomes ``2**bits - 1``, which only wrapping readers (ferrule) read back
    as 0; this raises :class:`FormatError` unless ``allow_wrap=True``.
    """
    zeros = unpack_cols(qzeros, bits)
    wrapped = int((zeros == 0).sum())
    if wrapped and not allow_wrap:
        raise FormatError(
            f"{wrapped} of {zeros.numel()} zero points are 0, which the v1 'gptq' format "
            f"stores as {(1 << bits) - 1} (z - 1 wrapped to {bits} bits); readers that do not "
            f"wrap would see zero point {1 << bits} and a different weight. Save with "
            'checkpoint_format="gptq_v2", or pass allow_wrap=True if every reader wraps'
        )
    return pack_cols((zeros - 1) & ((1 << bits) - 1), bits)


def _check_format(checkpoint_format: str) -> None:
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise FormatError(
            f"checkpoint_format={checkpoint_format!r} is unknown: use 'gptq' (v1, stores "
            "zero - 1) or 'gptq_v2' (stores the zero point)"
        )


def dequantize(
    qweight: Tensor,
    qzeros: Tensor,
    scales: Tensor,
    g_idx: Tensor,
    bits: int,
    *,
    checkpoint_format: str = "gptq_v2",
    dtype=None,
) -> Tensor:
    """Reference dequantize to ``[K, N]`` (the transposed ``nn.Linear`` weight).

    ``W[k, n] = (q[k, n] - z[g_idx[k], n]) * scales[g_idx[k], n]``, computed in float64
    when ``dtype`` is float64 and in float32 otherwise, returned in ``dtype`` (default
    ``scales.dtype``). ``qzeros`` is read as v1 (``stored + 1``) when
    ``checkpoint_format="gptq"``. Shapes are inferred from ``qweight`` and ``scales``.
    """
    _check_bits(bits)
    _check_format(checkpoint_format)
    if scales.dim() != 2 or not scales.dtype.is_floating_point:
        raise FormatError(
            f"scales has shape {tuple(scales.shape)} dtype {scales.dtype}, expected a "
            "floating [G, N] tensor"
        )
    codes = unpack_rows(qweight, bits)
    groups, out_features = scales.shape
    layer = (bits, codes.shape[0], out_features, groups, f"groups={groups} from scales")
    _check_layout((qweight, qzeros, scales, g_idx), *layer, g_idx_dtypes=(torch.int32, torch.int64))
    zeros = unpack_cols(qzeros, bits)
    if checkpoint_format == "gptq":
        zeros = (zeros + 1) & ((1 << bits) - 1)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    rows = g_idx.long()
    weight = (codes - zeros[rows]).to(compute) * scales[rows].to(compute)
    return weight.to(scales.dtype if dtype is None else dtype)


def check_tensors(
    qweight: Tensor,
    qzeros: Tensor,
    scales: Tensor,
    g_idx: Tensor,
    bits: int,
    in_features: int,
    out_features: int,
    group_size: int,
) -> None:
    """Raise :class:`FormatError` naming every tensor whose shape, dtype or device is wrong.

    Expected: ``qweight`` int32 ``[K*bits/32, N]``, ``qzeros`` int32 ``[G, N*bits/32]``,
    ``scales`` floating ``[G, N]``, ``g_idx`` int32 ``[K]`` with values in ``[0, G)``, where
    ``G = num_groups(in_features, group_size)``.
    """
    _check_bits(bits)
    groups = num_groups(in_features, group_size)
    layer = (bits, in_features, out_features, groups, f"group_size={group_size}")
    _check_layout((qweight, qzeros, scales, g_idx), *layer, g_idx_dtypes=(torch.int32,))


def _check_layout(
    tensors: tuple[Tensor, Tensor, Tensor, Tensor],
    bits: int,
    in_features: int,
    out_features: int,
    groups: int,
    context: str,
    *,
    g_idx_dtypes: tuple[torch.dtype, ...],
) -> None:
    qweight, qzeros, scales, g_idx = tensors
    problems = []
    for name, size in (("in_features", in_features), ("out_features", out_features)):
        if size <= 0 or size * bits % _WORD:
            problems.append(
                f"{name}={size} cannot be packed at bits={bits}: {name} * bits must be a "
                f"positive multiple of 32, so {name} must be a multiple of {_period(bits)[0]}"
            )
    if problems:
        raise FormatError("; ".join(problems))
    expected = {
        "qweight": (qweight, (in_features * bits // _WORD, out_features), (torch.int32,)),
        "qzeros": (qzeros, (groups, out_features * bits // _WORD), (torch.int32,)),
        "scales": (scales, (groups, out_features), None),
        "g_idx": (g_idx, (in_features,), g_idx_dtypes),
    }
    for name, (tensor, shape, dtypes) in expected.items():
        dtype_ok = tensor.dtype.is_floating_point if dtypes is None else tensor.dtype in dtypes
        if tuple(tensor.shape) != shape or not dtype_ok:
            want = "a floating dtype" if dtypes is None else " or ".join(map(str, dtypes))
            problems.append(
                f"{name} has shape {tuple(tensor.shape)} dtype {tensor.dtype}, expected shape "
                f"{shape} with {want} (in_features={in_features}, out_features={out_features}, "
                f"bits={bits}, {context})"
            )
        elif tensor.device != qweight.device:
            problems.append(f"{name} is on {tensor.device} but qweight is on {qweight.device}")
    if not problems and g_idx.numel():
        low, high = int(g_idx.min()), int(g_idx.max())
        if low < 0 or high >= groups:
            problems.append(
                f"g_idx values span [{low}, {high}] but must lie in [0, {groups - 1}] "
                f"for {groups} groups ({context})"
            )
    if problems:
        raise FormatError("; ".join(problems))
