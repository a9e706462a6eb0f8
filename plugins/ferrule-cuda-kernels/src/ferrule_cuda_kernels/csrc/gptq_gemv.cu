// cuda-gptq-gemv: y = x @ W for a few rows of x and a GPTQ 4- or 8-bit weight, read in place.
//
// Layout. qweight is int32 [K * bits / 32, N]: word (r, n) holds the codes of rows
// k = r * c .. r * c + c - 1 (c = 32 / bits codes a word) of column n, code i in bits
// [i * bits, (i + 1) * bits). Columns are contiguous, so one thread loads 16 bytes: the words
// of 4 adjacent columns, a warp 128 columns (512 bytes, coalesced).
//
// Work split. A block is 8 warps over one tile of 128 columns; the 32 lanes of a warp take 4
// columns each. K is cut into units of 4 words (32 rows at 4 bits, 16 at 8 bits), each inside
// one group, so a unit needs one scale and one zero per column. The block stages its share of
// x in shared memory once (through `perm` for act-order layers; in chunks of 8192 / ROWS rows
// when K is longer), and then each warp streams its own units, w, w + 8, w + 16, ... (at one
// float16 row a run of consecutive ones, kOneRow), with no barrier until the chunk ends: it
// multiplies the unit it holds by every row of x and loads its next one (4 independent
// 16-byte loads a thread). At one row each warp holds two units
// in flight (kStagesFor) and the kernel is held to 128 registers, two blocks (16 warps) a
// multiprocessor: a warp's chain of dependent loads is half as long. On an H200 that beat one
// unit at 80 registers and three blocks (the H100's best, where two units lost; ratio to fp16
// cuBLAS at M = 1, one run: 4096x4096 2.02x against 1.75x, 4096x14336 2.46x / 2.21x,
// 14336x4096 2.79x / 2.52x, 28672x8192 3.11x / 2.97x), and three units, four, or 4-warp
// blocks (bench/cuda_gemv_variants.py; docs/benchmarks.md).
// Splitting K over `splits` blocks (grid.y) keeps every multiprocessor busy for the narrow
// layers of decode; each split is a whole number of units per warp. Their float32 partial
// sums go to a workspace and the last block of a tile to finish (an atomic counter) adds them
// up and writes the output: no atomics on the output, one launch.
//
// Float16 x with 4-bit codes: two codes an instruction. One LOP3 makes two codes of a word
// float16 numbers at once: (w & 0x000F000F) | 0x64006400 is the pair (1024 + q_i, 1024 +
// q_{i+4}), and with mask 0x00F000F0 (1024 + 16 q, ...); w >> 8 gives the other 4 codes the
// same way (5 integer instructions for 8 codes, against 9 below). One HFMA2 with the column's
// zero point turns a pair into (q - z) * 2^e exactly, and one HFMA2 multiplies it by the
// matching pair of x (x is staged as float16 in that order) and adds it to the unit's sum.
// The 16 products a half accumulates over a unit are float16, then added in float32 with
// the scale. 2^e is chosen per staged chunk from the largest |x| so that |x| 2^e < 256: no
// sum of 16 products (each at most 15 * 256) can overflow float16, and small x keep their
// precision. On an H100 this took M = 2 from 2.0-2.4x to 2.4-2.7x fp16 cuBLAS on the large
// layers, and M = 1 up by 2-6%. Relative error against float64 stays near 6e-4 (float16 output
// rounding alone is 2e-4).
//
// Other dtypes and 8-bit codes: dequantization without conversions. A code q at bit offset
// b < 16 of a word, masked in place (w & (mask << b)), read as a float is the denormal
// q * 2^b * 2^-149, exactly. x is staged in
// shared memory as x * 2^(85 - b), so one FFMA adds x * q * 2^-64 to the unit's sum: one LOP3
// and one FFMA a code and row of x, no conversion. Codes in the upper 16 bits come from w >> 16
// the same way. Each unit then adds s * (2^64 * sum(x q) - z * sum(x)) for each column, the
// sum of x over the unit's rows coming from a warp reduction of the staged slice. (Denormals
// must not be flushed: the extension is built with -ftz=false.) The scaling keeps products
// normal for |x| in [2^-62, 2^43].
// Accumulation is float32 throughout.

#include "gptq_gemv.h"
#include "kernel_common.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace ferrule_gemv {
namespace {

#ifndef FERRULE_GEMV_WARPS
#define FERRULE_GEMV_WARPS 8
#endif
#ifndef FERRULE_GEMV_STAGES
#define FERRULE_GEMV_STAGES 1
#endif
#ifndef FERRULE_GEMV_FEW_ROWS
#define FERRULE_GEMV_FEW_ROWS 1  // rows of x up to which the next two apply
#endif
#ifndef FERRULE_GEMV_FEW_ROW_STAGES
#define FERRULE_GEMV_FEW_ROW_STAGES 2
#endif
#ifndef FERRULE_GEMV_MIN_BLOCKS
#define FERRULE_GEMV_MIN_BLOCKS 2
#endif
constexpr int kWarps = FERRULE_GEMV_WARPS;  // -D overrides are for tuning experiments
constexpr int kThreads = kWarps * 32;
constexpr int kTileN = 32 * 4;        // columns of one block: 32 lanes x 4 columns
constexpr int kUnitWords = 4;         // packed rows sharing one (scale, zero) load
// Units a warp holds in registers (4 loads each), by rows of x.
template <int ROWS>
constexpr int kStagesFor = ROWS <= FERRULE_GEMV_FEW_ROWS ? FERRULE_GEMV_FEW_ROW_STAGES : FERRULE_GEMV_STAGES;
constexpr int kStageOctets = 2;  // octets of x (8 rows of K) a thread stages at once
constexpr int kMaxTileRows = 8;
// Rows of K whose x is staged in shared memory at once: 32 KB of float32 whatever ROWS is.
template <int ROWS>
constexpr int kChunkRows = 8192 / ROWS;
// A code q at bit b of a word, masked in place, is the denormal float q * 2^(b - 149); x is
// staged as x * 2^(kXShift - b), so each product is x * q * 2^-64 (the 2^64 goes into the scale).
constexpr int kXShift = 85;
constexpr float kTwoTo64 = 18446744073709551616.0f;
// The half2 path's scale 2^e is at most 2^5: (1024 + 15) * 2^e must be a float16.
constexpr int kMaxExponent = 5;

using common::and_or;
using common::bits_half2;
using common::column_word;
using common::exp2i;
using common::Io;
using common::octet_value;
using common::release_dependents;
using common::wait_for_inputs;

template <int BITS>
struct Codes {
  static constexpr int kPerWord = 32 / BITS;
  static constexpr int kPerHalf = kPerWord / 2;  // codes in each 16-bit half of a word
  static constexpr uint32_t kMask = (1u << BITS) - 1u;
  static constexpr int kUnitK = kUnitWords * kPerWord;  // rows of K in one unit
};

// One row of x (decode) with two units held fits 128 registers: two blocks a multiprocessor.
// More rows keep the compiler's choice (0: no minimum; 2 rows take 127 registers, 2 blocks).
template <int ROWS>
constexpr int kMinBlocks = ROWS <= FERRULE_GEMV_FEW_ROWS ? FERRULE_GEMV_MIN_BLOCKS : 0;

// The weight words, scales and zeros of one unit, held in registers from load to use.
struct Unit {
  int4 words[kUnitWords];
  uint2 scales;  // 4 columns' scales, the activation dtype's bits
  uint32_t zeros;  // the packed zero-point word, shifted to this thread's first column
  uint32_t group;  // its quantization group (kOneRow)
};

// kOneRow: the half2 path's per-column terms of the group last multiplied.
struct GroupTerms {
  uint32_t group;
  __half2 add_low[4];
  __half2 add_high[4];
  float scale[4];  // the scale times 2^-e
};

// Act-order at one row of float16 x with 4-bit codes (decode) has its own kernel, whose
// (dynamic) shared memory also holds the whole row of x (up to kGatherRowMax values; 72 KB
// with the staged chunk, two blocks a multiprocessor still fit): the chunk gathers
// from there rather than from global memory, where 8 scattered 2-byte loads an octet
// serialize in L1 (H100, M = 1: act-order 2-7% slower than in-order, was 6-15%). The larger
// buffer would cost the in-order kernel L1 space (2-4% slower), hence the separate instance.
constexpr int kGatherRowMax = 28672;
// The GATHER_ROW instance's dynamic shared memory: the staged chunk (float16) and the row.
constexpr int kGatherBytes = (kChunkRows<1> / 2 + kGatherRowMax / 2) * 4;

inline bool gathers_row(const Problem& p) {
  return p.perm != nullptr && !p.bf16 && p.bits == 4 && p.tile_rows == 1 &&
         p.K <= kGatherRowMax && reinterpret_cast<uintptr_t>(p.perm) % 16 == 0;
}

template <typename T, int BITS, int ROWS, bool GATHER_ROW = false>
__global__ void __launch_bounds__(kThreads, kMinBlocks<ROWS>) gptq_gemv_kernel(const Problem p) {
  using C = Codes<BITS>;
  constexpr int kChunkK = kChunkRows<ROWS>;
  constexpr int kStages = kStagesFor<ROWS>;
  static_assert(kChunkK % C::kUnitK == 0, "a chunk is whole units");
  static_assert(kChunkK >= kWarps * kTileN, "the chunk buffer holds the block's reduction");
  // One buffer, used twice: a chunk of x [ROWS][kChunkK], then the per-warp partial sums
  // [kWarps][ROWS][kTileN] for the block's reduction.
  // float16 x with 4-bit codes takes the half2 path; the rest the float32 path.
  constexpr bool kHalf2 = std::is_same<T, __half>::value && BITS == 4;
  // One row of float16 x with 4-bit codes (decode), the loop cut to fewer instructions a unit
  // (~330 before, SASS; with its weights in L1 it kept 87% of its time, H200): each warp's
  // units of a chunk are a run of consecutive ones (not every 8th), so the units of one group
  // (4 at group size 128) load and prepare their zero points and scales once; and the loads
  // carry no per-lane predicates. H200, ratio to fp16 cuBLAS at one row, one run against the
  // predicated form with every 8th unit (bench/cuda_gemv_variants.py): 4096x4096 2.02x /
  // 1.96x, 4096x14336 2.49x / 2.39x, 14336x4096 2.89x / 2.72x, 28672x8192 3.09x / 3.05x. Each
  // change alone gained at most 2%; the lean loads at two rows lost up to 10%, hence one row
  // only.
  constexpr bool kOneRow = kHalf2 && ROWS == 1;
  // GATHER_ROW: the whole row of x is copied to shared memory after the staged chunk
  // (float16), and the chunk gathers from it (see kGatherRowMax).
  static_assert(!GATHER_ROW || (ROWS == 1 && kHalf2), "the row copy is for one float16 row");
  constexpr int kRawRows = GATHER_ROW ? kGatherRowMax : 0;
  constexpr int kSmemFloats =
      ROWS * kChunkK > kChunkK / 2 + kRawRows / 2 ? ROWS * kChunkK : kChunkK / 2 + kRawRows / 2;
  static_assert(!GATHER_ROW || kSmemFloats * 4 == kGatherBytes, "the launch's shared memory");
#ifdef FERRULE_GEMV_EMULATED
  __shared__ __align__(16) float smem[kSmemFloats];
#else
  // Past 48 KB shared memory must be dynamic: the GATHER_ROW instance's is (gather_bytes()).
  __shared__ __align__(16) float static_smem[GATHER_ROW ? 4 : kSmemFloats];
  extern __shared__ __align__(16) float dynamic_smem[];
  float* const smem = GATHER_ROW ? dynamic_smem : static_smem;
#endif
  __shared__ bool last_block;
  __shared__ float warp_max[kWarps];

  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ scales = static_cast<const T*>(p.scales);
  const int4* __restrict__ qweight = reinterpret_cast<const int4*>(p.qweight);
  const uint32_t* __restrict__ qzeros = reinterpret_cast<const uint32_t*>(p.qzeros);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int N = p.N;
  const int col = blockIdx.x * kTileN + lane * 4;
  const bool col_ok = col < N;  // N % 4 == 0: the 4 columns are all in or all out
  const int row0 = blockIdx.z * ROWS;
  const int rows = min(ROWS, p.M - row0);
  const int words = p.K / C::kPerWord;
  const int units = (words + kUnitWords - 1) / kUnitWords;
  const int unit_begin = blockIdx.y * p.units_per_split;
  const int unit_end = min(unit_begin + p.units_per_split, units);
  const uint32_t zero_words = N / C::kPerWord;  // qzeros row length
  const int zero_shift = BITS * (col % C::kPerWord);
  // Undoes the staging's pre-scaling of the x this lane reads for the unit sums of x.
  const float x_unscale = exp2i(BITS * (lane % C::kPerHalf) - kXShift);
  // Each thread's column base in qweight (16-byte units), scales (4 values) and qzeros.
  const uint32_t n4 = N / 4;
  // kOneRow: lanes past the last column (N % 128 != 0) read column 0's words, scales and
  // zeros; their sums are never written, and the loads need no predicate of their own.
  const int load_col = kOneRow && !col_ok ? 0 : col;
  const int4* __restrict__ wcol = qweight + load_col / 4;
  const uint2* __restrict__ scol = reinterpret_cast<const uint2*>(scales) + load_col / 4;
  const uint32_t* __restrict__ zcol = qzeros + load_col / C::kPerWord;

  // kOneRow: whether `unit`, of `group`, follows a unit of the same group in this warp's run
  // (from `warp_first`): it then takes the group's terms as its predecessor left them, and its
  // scales and zeros are not loaded.
  auto continues_group = [&](int unit, uint32_t group, int warp_first) {
    return unit > warp_first && common::group_of(p, (unit - 1) * C::kUnitK) == group;
  };

  // A unit's scales and zero points: those of `group` for this thread's 4 columns.
  auto load_group = [&](Unit& u, uint32_t group) {
    u.scales = __ldg(scol + group * n4);
    u.zeros = __ldg(zcol + group * zero_words) >> zero_shift;
  };

  // Issues the loads of `unit`. kOneRow: none past `end` (such a unit is never multiplied),
  // zeros for the words of a last unit past K's end, not the scales and zeros of a unit that
  // continues its group; the branches are the warp's, not the lane's. Otherwise zeros past
  // `end` or past the last column.
  auto fetch = [&](Unit& u, int unit, int end, int warp_first) {
    // 32-bit offsets (the binding checks the tensors are under 2^31 elements).
    if constexpr (kOneRow) {
      if (unit >= end) return;
      const int4* const w = wcol + static_cast<uint32_t>(unit) * (kUnitWords * n4);
      if ((unit + 1) * kUnitWords <= words) {
#pragma unroll
        for (int j = 0; j < kUnitWords; ++j) u.words[j] = __ldcs(w + j * n4);
      } else {
#pragma unroll
        for (int j = 0; j < kUnitWords; ++j) {
          u.words[j] = unit * kUnitWords + j < words ? __ldcs(w + j * n4) : make_int4(0, 0, 0, 0);
        }
      }
      const uint32_t group = common::group_of(p, unit * C::kUnitK);
      u.group = group;
      if (continues_group(unit, group, warp_first)) return;
      load_group(u, group);
    } else {
      const bool ok = col_ok && unit < end;
      const uint32_t first = static_cast<uint32_t>(unit) * kUnitWords * n4;
#pragma unroll
      for (int j = 0; j < kUnitWords; ++j) {
        u.words[j] = (ok && unit * kUnitWords + j < words) ? __ldcs(wcol + first + j * n4)
                                                           : make_int4(0, 0, 0, 0);
      }
      u.scales = make_uint2(0u, 0u);
      u.zeros = 0u;
      if (ok) load_group(u, common::group_of(p, unit * C::kUnitK));
    }
  };

  // x[row0 + m][k .. k + 7] (through perm), zeros past K, as 8 values of T in a uint4.
  const common::XReader<T> reader(x, p.x_stride_m, p.x_stride_k, p.perm, p.K);
  auto load_octet = [&](int m, int k) { return reader.octet(row0 + m, k); };
  constexpr bool from_raw = GATHER_ROW;  // gathers_row() checked perm, K and alignment
  const __half* raw_x = reinterpret_cast<const __half*>(smem) + kChunkK;

  float acc[ROWS][4];
#pragma unroll
  for (int m = 0; m < ROWS; ++m) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[m][c] = 0.0f;
  }

  // Adds one unit's products to acc: per column, 2^-64 * sum x * q over its rows (see the top
  // of the file) and the sum of x over the same rows for the zero point, then scaled once.
  // `xs` is the unit's first row in the staged chunk.
  auto multiply = [&](const Unit& u, const float* xs) {
    float xsum[ROWS];  // sum of x over the unit's rows, each row of x
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
      float v = lane < C::kUnitK ? xs[m * kChunkK + lane] * x_unscale : 0.0f;
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
      xsum[m] = v;
    }
    float part[ROWS][4];
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
#pragma unroll
      for (int c = 0; c < 4; ++c) part[m][c] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kUnitWords; ++j) {
      float w[4][C::kPerWord];  // q * 2^(b - 149): the code left in place, a denormal
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const uint32_t low = column_word(u.words[j], c);
        const uint32_t high = low >> 16;
#pragma unroll
        for (int i = 0; i < C::kPerWord; ++i) {
          const int h = i % C::kPerHalf;
          w[c][i] = __uint_as_float((i < C::kPerHalf ? low : high) & (C::kMask << (BITS * h)));
        }
      }
#pragma unroll
      for (int m = 0; m < ROWS; ++m) {
        float xv[C::kPerWord];
#pragma unroll
        for (int i = 0; i < C::kPerWord; i += 4) {
          const float4 four = *reinterpret_cast<const float4*>(xs + m * kChunkK + j * C::kPerWord + i);
          xv[i] = four.x;
          xv[i + 1] = four.y;
          xv[i + 2] = four.z;
          xv[i + 3] = four.w;
        }
#pragma unroll
        for (int c = 0; c < 4; ++c) {
#pragma unroll
          for (int i = 0; i < C::kPerWord; ++i) part[m][c] = fmaf(xv[i], w[c][i], part[m][c]);
        }
      }
    }
    // acc += s * (sum x q - z * sum x) = (s * 2^64) * part - (s * z) * xsum
    const T* scale_t = reinterpret_cast<const T*>(&u.scales);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const float scale = Io<T>::load(scale_t[c]);
      const float zero = static_cast<float>((u.zeros >> (BITS * c)) & C::kMask);
      const float scale_up = scale * kTwoTo64;
      const float scale_zero = scale * zero;
#pragma unroll
      for (int m = 0; m < ROWS; ++m) {
        acc[m][c] = fmaf(part[m][c], scale_up, acc[m][c]);
        acc[m][c] = fmaf(-scale_zero, xsum[m], acc[m][c]);
      }
    }
  };

  // The same for float16 x and 4-bit codes, two codes an instruction (see the top of the
  // file): `xh` is the unit's first pair of x in the staged chunk, `e` the chunk's exponent.
  // (kOneRow: `terms` keeps the per-column terms of the group last multiplied in the chunk.)
  auto multiply_half2 = [&](const Unit& u, const __half2* xh, int e, GroupTerms& terms) {
    uint4 xs4[ROWS][kUnitWords];  // the unit's x: 4 pairs a word
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
#pragma unroll
      for (int j = 0; j < kUnitWords; ++j)
        xs4[m][j] = *reinterpret_cast<const uint4*>(xh + m * (kChunkK / 2) + j * 4);
    }
    const T* scale_t = reinterpret_cast<const T*>(&u.scales);
    const float unscale = exp2i(-e);
    const __half2 mul_low = __float2half2_rn(exp2i(e));       // codes at bits 0-3
    const __half2 mul_high = __float2half2_rn(exp2i(e - 4));  // codes at bits 4-7 (16 q)
    const __half2 neg_low = __hneg2(mul_low);
    const __half2 neg_high = __hneg2(mul_high);
    // (1024 + z) and (1024 + 16 z) as float16, built like the codes; times -2^e and -2^(e - 4)
    // they make (1024 + q) * 2^e and (1024 + 16 q) * 2^(e - 4) into (q - z) * 2^e.
    auto add_terms = [&](int c, __half2& add_low, __half2& add_high) {
      const uint32_t zero = (u.zeros >> (4 * c)) & 0xFu;
      add_low = __hmul2(bits_half2(zero * 0x00010001u | 0x64006400u), neg_low);
      add_high = __hmul2(bits_half2(zero * 0x00100010u | 0x64006400u), neg_high);
    };
    if constexpr (kOneRow) {
      if (u.group != terms.group) {  // the warp's branch
        terms.group = u.group;
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          add_terms(c, terms.add_low[c], terms.add_high[c]);
          terms.scale[c] = Io<T>::load(scale_t[c]) * unscale;
        }
      }
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      __half2 add_low, add_high;
      if constexpr (kOneRow) {
        add_low = terms.add_low[c];
        add_high = terms.add_high[c];
      } else {
        add_terms(c, add_low, add_high);
      }
      __half2 sums[ROWS];
#pragma unroll
      for (int m = 0; m < ROWS; ++m) sums[m] = __float2half2_rn(0.0f);
#pragma unroll
      for (int j = 0; j < kUnitWords; ++j) {
        const uint32_t w = column_word(u.words[j], c);
        const uint32_t shifted = w >> 8;
        __half2 v[4];  // (q_i - z) * 2^e for codes (i, i + 4), i = 0..3 of the word
        v[0] = __hfma2(bits_half2(and_or<0x000F000Fu, 0x64006400u>(w)), mul_low, add_low);
        v[1] = __hfma2(bits_half2(and_or<0x00F000F0u, 0x64006400u>(w)), mul_high, add_high);
        v[2] = __hfma2(bits_half2(and_or<0x000F000Fu, 0x64006400u>(shifted)), mul_low, add_low);
        v[3] = __hfma2(bits_half2(and_or<0x00F000F0u, 0x64006400u>(shifted)), mul_high, add_high);
#pragma unroll
        for (int m = 0; m < ROWS; ++m) {
          sums[m] = __hfma2(bits_half2(xs4[m][j].x), v[0], sums[m]);
          sums[m] = __hfma2(bits_half2(xs4[m][j].y), v[1], sums[m]);
          sums[m] = __hfma2(bits_half2(xs4[m][j].z), v[2], sums[m]);
          sums[m] = __hfma2(bits_half2(xs4[m][j].w), v[3], sums[m]);
        }
      }
      const float scale = kOneRow ? terms.scale[c] : Io<T>::load(scale_t[c]) * unscale;
#pragma unroll
      for (int m = 0; m < ROWS; ++m) {
        const float2 pair = __half22float2(sums[m]);
        acc[m][c] = fmaf(pair.x + pair.y, scale, acc[m][c]);
      }
    }
  };

  // The block's units in chunks of x that fit shared memory (one chunk unless K is long).
  for (int chunk = unit_begin; chunk < unit_end; chunk += kChunkK / C::kUnitK) {
    const int chunk_end = min(chunk + kChunkK / C::kUnitK, unit_end);
    // 1. Start streaming this warp's first units before waiting on anything. Warp w takes
    //    units chunk + w, chunk + w + kWarps, ... (kOneRow: a run of consecutive units,
    //    [first, last)); each holds kStages of them in registers.
    const int per_warp = (chunk_end - chunk + kWarps - 1) / kWarps;
    const int first = kOneRow ? chunk + warp * per_warp : chunk + warp;
    const int last = kOneRow ? min(first + per_warp, chunk_end) : chunk_end;
    constexpr int kStride = kOneRow ? 1 : kWarps;  // between a warp's units
    Unit held[kStages];
#pragma unroll
    for (int s = 0; s < kStages; ++s) fetch(held[s], first + s * kStride, last, first);

    // 2. Stage x[rows][chunk] in octets (8 rows of K of one row of x: one 16-byte load where
    //    x is contiguous, or 8 gathers through `perm` after two 16-byte loads of it), as
    //    float32 pre-scaled by 2^-(bit offset in its half), or for the half2 path as float16
    //    in the order the codes are unpacked (pairs (k + i, k + i + 4) of each word's 8
    //    rows), noting the largest |x|.
    const int k0 = chunk * C::kUnitK;
    const int octets = (chunk_end - chunk) * C::kUnitK / 8;  // a unit is 16 or 32 rows
    const int total = rows * octets;
    // Act-order: the first round's perm octets load before the wait (perm is the layer's),
    // so only the gathers of x wait on the previous kernel.
    int4 early[kStageOctets][2];
    if (GATHER_ROW || reader.vector_perm) {  // GATHER_ROW: checked by gathers_row()
#pragma unroll
      for (int j = 0; j < kStageOctets; ++j) {
        const int i = j * kThreads + tid;
        const int m = i / octets;
        const int k = k0 + 8 * (i - m * octets);
        if (i < total && reader.whole_perm_octet(k)) reader.sources(k, early[j][0], early[j][1]);
      }
    }
    wait_for_inputs();  // x (and the output's memory) may be the previous kernel's
    __syncthreads();    // the previous chunk is done reading the buffer
    if constexpr (from_raw) {
      if (chunk == unit_begin) {  // the row of x, once: 16-byte loads where it can
        const __half* row = reinterpret_cast<const __half*>(x) + row0 * p.x_stride_m;
        __half* to = reinterpret_cast<__half*>(smem) + kChunkK;
        if (p.x_stride_k == 1 && reinterpret_cast<uintptr_t>(row) % 16 == 0) {
          for (int i = tid; i < p.K / 8; i += kThreads)
            reinterpret_cast<uint4*>(to)[i] = __ldg(reinterpret_cast<const uint4*>(row) + i);
        } else {
          for (int i = tid; i < p.K; i += kThreads) to[i] = row[static_cast<int64_t>(i) * p.x_stride_k];
        }
        __syncthreads();
      }
    }
    float largest = 0.0f;
    for (int base = 0; base < total; base += kThreads * kStageOctets) {
      uint4 raw[kStageOctets];  // 8 values of T
#pragma unroll
      for (int j = 0; j < kStageOctets; ++j) {
        const int i = base + j * kThreads + tid;
        const int m = i / octets;
        const int k = k0 + 8 * (i - m * octets);
        if (i >= total) {
          raw[j] = make_uint4(0u, 0u, 0u, 0u);
        } else if (from_raw) {
          int4 a = early[j][0], b = early[j][1];
          if (base != 0) reader.sources(k, a, b);
          raw[j] = common::gather8(raw_x, 1, a, b);
        } else if (base == 0 && reader.whole_perm_octet(k)) {
          raw[j] = reader.gather(row0 + m, early[j][0], early[j][1]);
        } else {
          raw[j] = load_octet(m, k);
        }
      }
#pragma unroll
      for (int j = 0; j < kStageOctets; ++j) {
        const int i = base + j * kThreads + tid;
        if (i >= total) continue;
        const int m = i / octets;
        const int o = i - m * octets;
        const uint4 v = raw[j];
        if constexpr (kHalf2) {
          *reinterpret_cast<uint4*>(reinterpret_cast<__half*>(smem) + m * kChunkK + 8 * o) =
              common::pair_order(v);
#pragma unroll
          for (int r = 0; r < 8; ++r) largest = fmaxf(largest, fabsf(Io<T>::load(octet_value<T>(v, r))));
        } else {
          float f[8];
#pragma unroll
          for (int r = 0; r < 8; ++r)
            f[r] = Io<T>::load(octet_value<T>(v, r)) * exp2i(kXShift - BITS * (r % C::kPerHalf));
          float4* dst = reinterpret_cast<float4*>(smem + m * kChunkK + 8 * o);
          dst[0] = make_float4(f[0], f[1], f[2], f[3]);
          dst[1] = make_float4(f[4], f[5], f[6], f[7]);
        }
      }
    }
    int e = 0;  // half2 path: products and sums are formed at 2^e scale (see the top)
    if constexpr (kHalf2) {
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1)
        largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
      if (lane == 0) warp_max[warp] = largest;
    }
    __syncthreads();
    if constexpr (kHalf2) {
      largest = warp_max[0];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) largest = fmaxf(largest, warp_max[w]);
      // largest * 2^e in [128, 256): 16 products of at most 15 * 256 stay under 65504.
      const int top = ((__float_as_int(largest) >> 23) & 0xff) - 127;  // floor(log2)
      e = min(7 - top, kMaxExponent);
    }

    // 3. Multiply each held unit, then refill its registers with the unit kStages further on:
    //    no barrier until the chunk ends, so each warp streams at its own pace.
    GroupTerms terms;
    terms.group = ~0u;  // none yet in this chunk (e is the chunk's)
    for (int unit = first; unit < last; unit += kStages * kStride) {
#pragma unroll
      for (int s = 0; s < kStages; ++s) {
        const int mine = unit + s * kStride;  // uniform across the warp
        if (mine < last) {
          if constexpr (kHalf2) {
            multiply_half2(held[s], reinterpret_cast<const __half2*>(smem) + (mine - chunk) * 16, e,
                           terms);
          } else {
            multiply(held[s], smem + (mine - chunk) * C::kUnitK);
          }
        }
        fetch(held[s], mine + kStages * kStride, last, first);
      }
    }
  }

  release_dependents();  // the next kernel may start loading its weights
  // Reduce the 8 warps' sums of each column in shared memory.
  __syncthreads();
#pragma unroll
  for (int m = 0; m < ROWS; ++m) {
    *reinterpret_cast<float4*>(smem + (warp * ROWS + m) * kTileN + lane * 4) =
        make_float4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
  }
  __syncthreads();
  const int splits = gridDim.y;
  T* __restrict__ out = static_cast<T*>(p.out);
  for (int i = tid; i < ROWS * kTileN; i += kThreads) {
    const int m = i / kTileN;
    const int c = i - m * kTileN;
    const int n = blockIdx.x * kTileN + c;
    if (m >= rows || n >= N) continue;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += smem[(w * ROWS + m) * kTileN + c];
    const size_t at = static_cast<size_t>(row0 + m) * N + n;
    if (splits == 1) {
      out[at] = Io<T>::store(sum);
    } else {
      p.workspace[static_cast<size_t>(blockIdx.y) * p.M * N + at] = sum;
    }
  }
  if (splits == 1) return;

  // Split-K: the last block of this tile to arrive adds the splits' partial sums.
  common::add_up_splits<T, kThreads>(p.counters, p.workspace, out, p.M, N, row0, ROWS,
                                     blockIdx.x * kTileN, kTileN, blockIdx.z * gridDim.x + blockIdx.x,
                                     splits, last_block);
}

template <typename T, int BITS, int ROWS, bool GATHER_ROW = false>
struct Kernel {
  // Dynamic shared memory: only the GATHER_ROW instance's (the others' is static).
  using Launch = common::Launcher<gptq_gemv_kernel<T, BITS, ROWS, GATHER_ROW>, kThreads,
                                  GATHER_ROW ? kGatherBytes : 0>;
  static int occupancy() { return Launch::occupancy(); }
  static cudaError_t launch(const Problem& p, cudaStream_t stream) {
    const dim3 grid((p.N + kTileN - 1) / kTileN, p.splits, (p.M + ROWS - 1) / ROWS);
    return Launch::launch_on(grid, p, stream);
  }
};

// Calls F::template run<Kernel<T, BITS, ROWS>>() for the problem's dtype, bits and tile rows
// (tile_rows set: plan() dispatches for the occupancy after choosing them).
template <typename F>
auto dispatch(const Problem& p, F&& f) {
#define FERRULE_ROWS(T, BITS)                                   \
  switch (p.tile_rows) {                                        \
    case 1: return f(Kernel<T, BITS, 1>{});                     \
    case 2: return f(Kernel<T, BITS, 2>{});                     \
    case 4: return f(Kernel<T, BITS, 4>{});                     \
    default: return f(Kernel<T, BITS, kMaxTileRows>{});         \
  }
  if (p.bf16) {
    if (p.bits == 4) { FERRULE_ROWS(__nv_bfloat16, 4) }
    FERRULE_ROWS(__nv_bfloat16, 8)
  }
  if (p.bits == 4) {
    if (gathers_row(p)) return f(Kernel<__half, 4, 1, true>{});
    FERRULE_ROWS(__half, 4)
  }
  FERRULE_ROWS(__half, 8)
#undef FERRULE_ROWS
}

}  // namespace

// Act-order float16 rows are gathered first from two rows at any K, and one row from this K
// (H100, 28672x8192: act-order / in-order time 1.08 -> 1.03 at one row, 1.19 -> 1.05 at two;
// at K = 4096-14336 gathering first was up to 3% slower at one row). H200, two rows of the
// Llama-3 layers, act-order, ratio to fp16 cuBLAS, gathering first from K = 4096 against
// 16384 (bench/cuda_gemv_variants.py --act-order, one run): 4096x4096 1.70x / 1.64x,
// 4096x6144 1.68x / 1.57x, 4096x14336 1.97x / 1.87x, 4096x28672 2.29x / 2.19x, 14336x4096
// 2.21x / 2.12x; one row lost up to 10% at K = 4096 (4096x4096 1.84x / 2.04x) and nothing at
// 14336.
constexpr int kGatherFirstFromK = 16384;

bool gemv_gathers_first(const Problem& p) {
  return p.perm != nullptr && !p.bf16 && (p.M >= 2 || p.K >= kGatherFirstFromK) && p.K % 8 == 0;
}

void plan(Problem& p, int num_sms, int64_t counter_capacity) {
  plan_groups(p);
  p.tile_rows = p.M <= 1 ? 1 : p.M <= 2 ? 2 : p.M <= 4 ? 4 : kMaxTileRows;
  const int per_word = 32 / p.bits;
  const int units = (p.K / per_word + kUnitWords - 1) / kUnitWords;
  const int64_t tiles = static_cast<int64_t>((p.N + kTileN - 1) / kTileN) *
                        ((p.M + p.tile_rows - 1) / p.tile_rows);
  const int64_t resident =
      static_cast<int64_t>(num_sms) * dispatch(p, [](auto k) { return decltype(k)::occupancy(); });
  int64_t splits = 1;
  if (tiles < resident && tiles <= counter_capacity) {
    splits = resident / tiles;  // about one wave of blocks
    const int64_t most = (units + kWarps - 1) / kWarps;  // every warp gets a unit
    splits = splits < most ? splits : most;
    splits = splits > 1 ? splits : 1;
  }
  p.units_per_split = static_cast<int>((units + splits - 1) / splits);
  // A whole number of units for each warp: a block waits for its busiest warp.
  if (splits > 1) p.units_per_split = (p.units_per_split + kWarps - 1) / kWarps * kWarps;
  p.splits = (units + p.units_per_split - 1) / p.units_per_split;
  if (p.splits < 1) p.splits = 1;
}

cudaError_t launch(const Problem& p, cudaStream_t stream) {
  return dispatch(p, [&](auto k) { return decltype(k)::launch(p, stream); });
}

}  // namespace ferrule_gemv
