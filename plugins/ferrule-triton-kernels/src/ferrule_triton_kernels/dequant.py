"""How the ``triton-gptq`` programs read a GPTQ layer: the ``@triton.jit`` tile helpers.

The weight stays in GPTQ's layout: ``qweight`` int32 ``[K * bits / 32, N]`` packed along K,
so word row ``r`` holds input rows ``r * PACK .. r * PACK + PACK - 1`` (``PACK = 32 / bits``;
code ``j`` of a word is bits ``[j * bits, (j + 1) * bits)``) and a row of words is contiguous
along N, which is the direction the programs' loads coalesce in. ``W[k, n] = (q[k, n] -
z[g, n]) * s[g, n]`` with ``g`` the group of row ``k``; how scales, zero points, groups and
``input_perm`` are prepared is described in :mod:`ferrule_triton_kernels.operands`.

Two ways to unpack a tile. When ``bits`` divides 32 (2, 4, 8: the fast path) a
``[BLOCK_K / PACK, BLOCK_N]`` block of words is loaded once (16-byte loads along N); each of
the ``PACK`` code planes is shifted out, dequantized in the words' layout and the planes are
joined (:func:`_weight_planes`) into ``[BLOCK_K / PACK, PACK, BLOCK_N]``, which reshapes to
``[BLOCK_K, BLOCK_N]`` in row order. At 3 bits codes straddle words (32 codes per 3 words), so
each row loads its word and, where the code spills over, the next one (the generic path; rows
share words, which the caches absorb).

Codes become floats without an int-to-float conversion (a quarter-rate instruction on
NVIDIA GPUs): OR-ed into the mantissa of a power of two whose ulp is 1 (:func:`_as_float`),
zero points likewise, so ``q - z`` is exact and ``(q - z) * s`` rounds once.

The products run transposed (:func:`dot_step_t`): ``out^T [N, M] = W^T [N, K] @ x^T [K, M]``,
``tl.dot(tl.trans(w_tile), x_tile^T)`` into a float32 ``[BLOCK_N, BLOCK_M]`` accumulator that
the programs store as ``out[m, n] = acc[n, m]``. The dequantized weight is then the left
operand. On Hopper ``wgmma`` can take A from registers (B must sit in shared memory), so the
unpacked weight need not round-trip through shared memory while ``x``, loaded as stored,
streams through it (Triton 3.6 does issue wgmma with A in registers here, but converts the
dequantized tile to the fragments' layout through shared memory, with barriers, in the sm_90
TTGIR; ``cuda-gptq-wgmma`` avoids that); and wgmma's M side
(64 rows per warpgroup) is filled by ``BLOCK_N`` output columns instead of the few input
rows, which only have to fill its N side (8 to 256; at M = 16 the untransposed tile padded
the rows 4x). Measured on an H100 against fp16
cuBLAS (K x N 4096x14336 and 28672x8192, 2026-11-27): 1.91x at M = 16 (the untransposed
small-batch program: 0.9x), 1.35x at M = 64, 0.62-0.72x at M = 256 and 0.60-0.70x at
M = 1024 (the untransposed GEMM: 0.45-0.55x).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def source_cols(perm_ptr, k, k_mask, HAS_PERM: tl.constexpr):
    """The input features that stored rows ``k`` read (``input_perm[k]`` under act-order)."""
    if HAS_PERM:
        k = tl.load(perm_ptr + k, mask=k_mask, other=0)
    return k


@triton.jit
def _group_rows(g_idx_ptr, k, k_mask, GROUP_SIZE: tl.constexpr, GROUP_MODE: tl.constexpr):
    if GROUP_MODE == 2:
        g = tl.load(g_idx_ptr + k, mask=k_mask, other=0)
    else:
        g = k // GROUP_SIZE
    return g


@triton.jit
def _as_float(codes, BITS: tl.constexpr, DTYPE: tl.constexpr):
    """``codes + BIAS`` in ``DTYPE`` for int32 codes in ``[0, 2**BITS)``, and ``BIAS``.

    No int-to-float conversion (a quarter-rate instruction): the code is OR-ed into the
    mantissa of a power of two whose ulp is 1, ``2**10`` in float16, ``2**7`` in bfloat16
    (codes below 128, so not 8 bits), ``2**23`` in float32, and the bits are reinterpreted.
    """
    if DTYPE == tl.float16:  # noqa: SIM300 (DTYPE is a parameter)
        value = (codes | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        BIAS: tl.constexpr = 1024
    elif DTYPE == tl.float32:  # noqa: SIM300
        value = (codes | 0x4B000000).to(tl.float32, bitcast=True)
        BIAS: tl.constexpr = 8388608
    elif DTYPE == tl.bfloat16 and BITS < 8:  # noqa: SIM300
        value = (codes | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
        BIAS: tl.constexpr = 128
    else:
        value = codes.to(DTYPE)
        BIAS: tl.constexpr = 0
    return value, BIAS


@triton.jit
def _group_params(
    scales_ptr,
    zeros_ptr,
    at,
    mask,
    BITS: tl.constexpr,
    ZERO: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """Scales and biased zero points (see :func:`_as_float`) at offsets ``at`` of the [G, N]
    tensors, in ``DTYPE``; a symmetric grid's zero point is a typed constant (bfloat16
    minus a Python number would promote to float32)."""
    scale = tl.load(scales_ptr + at, mask=mask, other=0.0).to(DTYPE)
    if ZERO >= 0:
        zero, _ = _as_float(tl.full((1, 1), ZERO, tl.int32), BITS, DTYPE)  # broadcasts
    else:
        zero, _ = _as_float(tl.load(zeros_ptr + at, mask=mask, other=0).to(tl.int32), BITS, DTYPE)
    return scale, zero


@triton.jit
def _dequantize(codes, scale, zero, BITS: tl.constexpr, DTYPE: tl.constexpr):
    """``(codes - z) * s``: the difference is exact (both carry the same bias), so the
    product rounds once."""
    value, _ = _as_float(codes, BITS, DTYPE)
    return ((value - zero) * scale).to(DTYPE)


@triton.jit
def packed_rows(k0, BITS: tl.constexpr, BLOCK_K: tl.constexpr):
    """The input row of each code of a K block's words, ``[WORDS, PACK]``: ``k0 + r * PACK
    + j`` for code ``j`` of word ``r``."""
    PACK: tl.constexpr = 32 // BITS
    return k0 + tl.arange(0, BLOCK_K // PACK)[:, None] * PACK + tl.arange(0, PACK)[None, :]


@triton.jit
def _weight_planes(
    words,
    scale,
    zero,
    k0,
    offs_n,
    n_mask,
    K,
    N,
    scales_ptr,
    zeros_ptr,
    g_idx_ptr,
    FIRST: tl.constexpr,
    STEP: tl.constexpr,
    COUNT: tl.constexpr,
    BITS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    ZERO: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """The weights of codes ``FIRST, FIRST + STEP, ...`` (``COUNT`` of them) of every word,
    each plane dequantized in the words' own layout, then stacked on new trailing dims of
    size 2 by a tree of ``tl.join``: flattened, entry ``i`` is code ``FIRST + i * STEP``.

    Joined dims live within a thread, so each thread holds all the weights of its words and
    the tile stores to shared memory (for ``tl.dot``) in 16-byte vectors. Broadcasting the
    words against a vector of shifts instead, or scaling after the join, leaves one 2-byte
    store per weight (seen in the SASS for sm_90). ``scale`` and ``zero`` are the block's
    when ``GROUP_MODE == 0``; otherwise each plane loads its rows' own.
    """
    if COUNT == 1:
        codes = (words >> (FIRST * BITS)) & ((1 << BITS) - 1)
        if GROUP_MODE != 0:
            PACK: tl.constexpr = 32 // BITS
            k = k0 + tl.arange(0, BLOCK_K // PACK) * PACK + FIRST
            g = _group_rows(g_idx_ptr, k, k < K, GROUP_SIZE, GROUP_MODE)
            at = g[:, None] * N + offs_n[None, :]
            mask = (k < K)[:, None] & n_mask[None, :]
            scale, zero = _group_params(scales_ptr, zeros_ptr, at, mask, BITS, ZERO, DTYPE)
        planes = _dequantize(codes, scale, zero, BITS, DTYPE)
    else:
        planes = tl.join(
            _weight_planes(
                words, scale, zero, k0, offs_n, n_mask, K, N, scales_ptr, zeros_ptr, g_idx_ptr,
                FIRST, 2 * STEP, COUNT // 2, BITS, BLOCK_K, GROUP_SIZE, GROUP_MODE, ZERO, DTYPE,
            ),
            _weight_planes(
                words, scale, zero, k0, offs_n, n_mask, K, N, scales_ptr, zeros_ptr, g_idx_ptr,
                FIRST + STEP, 2 * STEP, COUNT // 2, BITS, BLOCK_K, GROUP_SIZE, GROUP_MODE, ZERO,
                DTYPE,
            ),
        )  # fmt: skip
    return planes


@triton.jit
def packed_weights(
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    g_idx_ptr,
    k0,
    offs_n,
    n_mask,
    K,
    N,
    BITS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    ZERO: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """Rows ``k0 .. k0 + BLOCK_K`` as ``[WORDS, PACK, BLOCK_N]`` (row ``k0 + r * PACK + j`` at
    ``[r, j]``), unpacked from one load of their words. ``BITS`` divides 32."""
    PACK: tl.constexpr = 32 // BITS
    WORDS: tl.constexpr = BLOCK_K // PACK
    word = k0 // PACK + tl.arange(0, WORDS)
    mask = (word < K // PACK)[:, None] & n_mask[None, :]
    # int32 shifts are arithmetic: each plane's mask drops the copies of the sign bit
    words = tl.load(qweight_ptr + word[:, None] * N + offs_n[None, :], mask=mask, other=0)
    scale, zero = 0.0, 0.0  # per plane unless the block is inside one group
    if GROUP_MODE == 0:
        # loaded 1-D and broadcast, so that they take the words' layout rather than impose
        # their own on every plane
        at = (k0 // GROUP_SIZE) * N + offs_n
        group_mask = n_mask & (k0 < K)  # a split's last block may start past K
        scale, zero = _group_params(scales_ptr, zeros_ptr, at, group_mask, BITS, ZERO, DTYPE)
        scale = scale[None, :]
        if ZERO < 0:
            zero = zero[None, :]
    planes = _weight_planes(
        words, scale, zero, k0, offs_n, n_mask, K, N, scales_ptr, zeros_ptr, g_idx_ptr,
        0, 1, PACK, BITS, BLOCK_K, GROUP_SIZE, GROUP_MODE, ZERO, DTYPE,
    )  # fmt: skip
    return tl.permute(tl.reshape(planes, (WORDS, BLOCK_N, PACK)), (0, 2, 1))


@triton.jit
def generic_weights(
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    g_idx_ptr,
    k0,
    offs_n,
    n_mask,
    K,
    N,
    BITS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    ZERO: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """Rows ``k0 .. k0 + BLOCK_K`` as ``[BLOCK_K, BLOCK_N]`` for any ``BITS``: row ``k``'s
    code starts at stream bit ``k * BITS`` and may continue into the next word."""
    k = k0 + tl.arange(0, BLOCK_K)
    k_mask = k < K
    bit = k * BITS
    shift = (bit % 32).to(tl.uint32)
    spills = shift + BITS > 32
    mask = k_mask[:, None] & n_mask[None, :]
    at = (bit // 32)[:, None] * N + offs_n[None, :]
    low = tl.load(qweight_ptr + at, mask=mask, other=0).to(tl.uint32, bitcast=True)
    high = tl.load(qweight_ptr + at + N, mask=mask & spills[:, None], other=0)
    high = high.to(tl.uint32, bitcast=True)
    up = tl.where(spills, 32 - shift, 0)  # a shift by 32 is undefined: rows that do not spill
    codes = ((low >> shift[:, None]) | (high << up[:, None])) & ((1 << BITS) - 1)
    if GROUP_MODE == 0:
        at = ((k0 // GROUP_SIZE) * N + offs_n)[None, :]
        group_mask = (n_mask & (k0 < K))[None, :]
    else:
        g = _group_rows(g_idx_ptr, k, k_mask, GROUP_SIZE, GROUP_MODE)
        at = g[:, None] * N + offs_n[None, :]
        group_mask = mask
    scale, zero = _group_params(scales_ptr, zeros_ptr, at, group_mask, BITS, ZERO, DTYPE)
    return _dequantize(codes.to(tl.int32), scale, zero, BITS, DTYPE)


@triton.jit
def weight_tile(
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    g_idx_ptr,
    k0,
    offs_n,
    n_mask,
    K,
    N,
    BITS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    ZERO: tl.constexpr,
    DTYPE: tl.constexpr,
):
    """The dequantized ``[BLOCK_K, BLOCK_N]`` tile in ``DTYPE``, by the fast or generic path."""
    if 32 % BITS == 0:
        w = packed_weights(
            qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, k0, offs_n, n_mask, K, N,
            BITS, BLOCK_K, BLOCK_N, GROUP_SIZE, GROUP_MODE, ZERO, DTYPE,
        )  # fmt: skip
        w = tl.reshape(w, (BLOCK_K, BLOCK_N))
    else:
        w = generic_weights(
            qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, k0, offs_n, n_mask, K, N,
            BITS, BLOCK_K, GROUP_SIZE, GROUP_MODE, ZERO, DTYPE,
        )  # fmt: skip
    return w


@triton.jit
def dot_step_t(
    acc,
    x_ptr,
    perm_ptr,
    qweight_ptr,
    scales_ptr,
    zeros_ptr,
    g_idx_ptr,
    rows,
    m_mask,
    k0,
    offs_n,
    n_mask,
    K,
    N,
    stride_xm,
    stride_xk: tl.constexpr,
    BITS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUP_MODE: tl.constexpr,
    ZERO: tl.constexpr,
    HAS_PERM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``acc += W[k0 : k0 + BLOCK_K, offs_n]^T @ x[rows, k0 : k0 + BLOCK_K]^T``: one K step of
    the transposed product, ``acc`` float32 ``[BLOCK_N, BLOCK_M]`` (``acc[n, m]`` is
    ``out[m, n]``).

    The activations load transposed, ``[BLOCK_K, BLOCK_M]`` (a strided load; any strides),
    and the dequantized weight is the left operand (see the module docstring).
    """
    k = k0 + tl.arange(0, BLOCK_K)
    k_mask = k < K
    cols = source_cols(perm_ptr, k, k_mask, HAS_PERM)
    xt_mask = k_mask[:, None] & m_mask[None, :]
    xt = tl.load(
        x_ptr + cols[:, None] * stride_xk + rows[None, :] * stride_xm, mask=xt_mask, other=0.0
    )
    w = weight_tile(
        qweight_ptr, scales_ptr, zeros_ptr, g_idx_ptr, k0, offs_n, n_mask, K, N,
        BITS, BLOCK_K, BLOCK_N, GROUP_SIZE, GROUP_MODE, ZERO, xt.dtype,
    )  # fmt: skip
    return tl.dot(tl.trans(w), xt, acc, input_precision=PRECISION)
