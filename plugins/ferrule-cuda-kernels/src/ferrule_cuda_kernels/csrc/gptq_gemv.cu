// cuda-gptq-gemv: y = x @ W for a few rows of x and a GPTQ 4- or 8-bit weight, read in place.
//
// Layout. qweight is int32 [K * bits / 32, N]: word (r, n) holds the codes of rows
// k = r * c .. r * c + c - 1 (c = 32 / bits codes a word) of column n, code i in bits
// [i * bits, (i + 1) * bits). Columns are contiguous, so one thread loads 16 bytes: the words
// of 4 adjacent columns, a warp 128 columns (512 bytes, coalesced).
//
// Work split. A block is 8 warps over one tile of 128 columns; the 32 lanes of a warp take 4
// columns each. K is cut into units of 4 words (32 rows at 4 bits, 16 at 8 bits), each inside
// one group, so a unit needs one scale and one zero per column. A block walks its share of
// K in steps of 16 units: each warp takes 2 units (8 independent 16-byte loads in flight per
// thread), the block stages the step's slice of x in shared memory (through `perm` for
// act-order layers), and each warp multiplies its units by every row of x it holds.
// Splitting K over `splits` blocks (grid.y) keeps every multiprocessor busy for the narrow
// layers of decode; their float32 partial sums go to a workspace and the last block of a
// tile to finish (an atomic counter) adds them up and writes the output: no atomics on the
// output, one launch.
//
// Dequantization without conversions. A code q at bit offset b < 16 of a word, masked in place
// (w & (mask << b)), read as a float is the denormal q * 2^b * 2^-149, exactly. x is staged in
// shared memory as x * 2^(85 - b), so one FFMA adds x * q * 2^-64 to the unit's sum: one LOP3
// and one FFMA a code and row of x, no conversion. Codes in the upper 16 bits come from w >> 16
// the same way. Each unit then adds s * (2^64 * sum(x q) - z * sum(x)) for each column, the
// sum of x over the unit's rows coming from a warp reduction of the staged slice. (Denormals
// must not be flushed: the extension is built with -ftz=false.) The scaling keeps products
// normal for |x| in [2^-62, 2^43].
// Accumulation is float32 throughout.

#include "gptq_gemv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ferrule_gemv {
namespace {

#ifndef FERRULE_GEMV_WARPS
#define FERRULE_GEMV_WARPS 8
#endif
#ifndef FERRULE_GEMV_UNITS
#define FERRULE_GEMV_UNITS 2
#endif
#ifndef FERRULE_GEMV_MIN_BLOCKS
#define FERRULE_GEMV_MIN_BLOCKS 3
#endif
constexpr int kWarps = FERRULE_GEMV_WARPS;  // -D overrides are for tuning experiments
constexpr int kThreads = kWarps * 32;
constexpr int kTileN = 32 * 4;        // columns of one block: 32 lanes x 4 columns
constexpr int kUnitWords = 4;         // packed rows sharing one (scale, zero) load
constexpr int kUnitsPerWarp = FERRULE_GEMV_UNITS;  // a warp's units per step: 4 loads each
constexpr int kStepUnits = kWarps * kUnitsPerWarp;
constexpr int kMaxTileRows = 8;
// A code q at bit b of a word, masked in place, is the denormal float q * 2^(b - 149); x is
// staged as x * 2^(kXShift - b), so each product is x * q * 2^-64 (the 2^64 goes into the scale).
constexpr int kXShift = 85;
constexpr float kTwoTo64 = 18446744073709551616.0f;

template <typename T>
struct Io;

template <>
struct Io<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};

template <>
struct Io<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <int BITS>
struct Codes {
  static constexpr int kPerWord = 32 / BITS;
  static constexpr int kPerHalf = kPerWord / 2;  // codes in each 16-bit half of a word
  static constexpr uint32_t kMask = (1u << BITS) - 1u;
  static constexpr int kUnitK = kUnitWords * kPerWord;  // rows of K in one unit
  static constexpr int kStepK = kStepUnits * kUnitK;    // rows of K in one step of a block
};

__device__ __forceinline__ uint32_t column_word(const int4& v, int c) {
  return static_cast<uint32_t>(c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w);
}

// 2^e as a float, e in [-126, 127].
__device__ __forceinline__ float exp2i(int e) { return __int_as_float((127 + e) << 23); }

// One row of x (decode) fits 80 registers, so three blocks share a multiprocessor: 24 warps
// and 96 KB of loads in flight. More rows keep the compiler's choice (0: no minimum).
template <int ROWS>
constexpr int kMinBlocks = ROWS == 1 ? FERRULE_GEMV_MIN_BLOCKS : 0;

template <typename T, int BITS, int ROWS>
__global__ void __launch_bounds__(kThreads, kMinBlocks<ROWS>) gptq_gemv_kernel(const Problem p) {
  using C = Codes<BITS>;
  static_assert(C::kStepK <= kWarps * kTileN, "the x slice fits the reduction buffer");
  // One buffer, used twice: the step's slice of x [ROWS][kStepK], then the per-warp partial
  // sums [kWarps][ROWS][kTileN] for the block's reduction.
  __shared__ __align__(16) float smem[ROWS * kWarps * kTileN];
  __shared__ bool last_block;

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
  const int k_end = min(unit_end * C::kUnitK, p.K);
  const uint32_t zero_words = N / C::kPerWord;  // qzeros row length
  const int zero_shift = BITS * (col % C::kPerWord);
  // Undoes the staging's pre-scaling of the x this lane reads for the unit sums of x.
  const float x_unscale = exp2i(BITS * (lane % C::kPerHalf) - kXShift);
  // Each thread's column base in qweight (16-byte units), scales (4 values) and qzeros.
  const uint32_t n4 = N / 4;
  const int4* __restrict__ wcol = qweight + col / 4;
  const uint2* __restrict__ scol = reinterpret_cast<const uint2*>(scales) + col / 4;
  const uint32_t* __restrict__ zcol = qzeros + col / C::kPerWord;

  float acc[ROWS][4];
#pragma unroll
  for (int m = 0; m < ROWS; ++m) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[m][c] = 0.0f;
  }

  for (int step = unit_begin; step < unit_end; step += kStepUnits) {
    // 1. Issue this step's weight, scale and zero loads before waiting on anything.
    int4 wq[kUnitsPerWarp][kUnitWords];
    uint2 scale_bits[kUnitsPerWarp];
    uint32_t zero_bits[kUnitsPerWarp];
#pragma unroll
    for (int s = 0; s < kUnitsPerWarp; ++s) {
      const int unit = step + warp * kUnitsPerWarp + s;
      const bool unit_ok = col_ok && unit < unit_end;
      // 32-bit offsets (the binding checks the tensors are under 2^31 elements).
      const uint32_t first = static_cast<uint32_t>(unit) * kUnitWords * n4;
#pragma unroll
      for (int j = 0; j < kUnitWords; ++j) {
        wq[s][j] = (unit_ok && unit * kUnitWords + j < words) ? __ldcs(wcol + first + j * n4)
                                                                : make_int4(0, 0, 0, 0);
      }
      scale_bits[s] = make_uint2(0u, 0u);
      zero_bits[s] = 0u;
      if (unit_ok) {
        const int k = unit * C::kUnitK;
        const uint32_t group = p.group_shift >= 0 ? k >> p.group_shift : k / p.group_size;
        scale_bits[s] = __ldg(scol + group * n4);
        zero_bits[s] = __ldg(zcol + group * zero_words) >> zero_shift;
      }
    }

    // 2. Stage x[rows][step's K slice] as float32, pre-scaled by 2^-(bit offset in its half).
    __syncthreads();  // the previous step is done reading the slice
    const int k0 = step * C::kUnitK;
    for (int i = tid; i < ROWS * C::kStepK; i += kThreads) {
      const int m = i / C::kStepK;
      const int kk = i - m * C::kStepK;
      const int k = k0 + kk;
      float v = 0.0f;
      if (m < rows && k < k_end) {
        const int src = p.perm != nullptr ? __ldg(p.perm + k) : k;
        const T value = x[(row0 + m) * p.x_stride_m + static_cast<int64_t>(src) * p.x_stride_k];
        v = Io<T>::load(value) * exp2i(kXShift - BITS * (kk % C::kPerHalf));
      }
      smem[i] = v;
    }
    __syncthreads();

    // 3. Multiply: per unit, 2^-64 * sum x * q over its rows (see the top of the file), the
    // sum of x over the same rows for the zero point, then scale once.
#pragma unroll
    for (int s = 0; s < kUnitsPerWarp; ++s) {
      const int slot = warp * kUnitsPerWarp + s;
      if (step + slot >= unit_end) continue;  // uniform across the warp
      const float* xs = smem + slot * C::kUnitK;
      float xsum[ROWS];  // sum of x over the unit's rows, each row of x
#pragma unroll
      for (int m = 0; m < ROWS; ++m) {
        float v = lane < C::kUnitK ? xs[m * C::kStepK + lane] * x_unscale : 0.0f;
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
          const uint32_t low = column_word(wq[s][j], c);
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
            const float4 four =
                *reinterpret_cast<const float4*>(xs + m * C::kStepK + j * C::kPerWord + i);
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
      const T* scale_t = reinterpret_cast<const T*>(&scale_bits[s]);
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const float scale = Io<T>::load(scale_t[c]);
        const float zero = static_cast<float>((zero_bits[s] >> (BITS * c)) & C::kMask);
        const float scale_up = scale * kTwoTo64;
        const float scale_zero = scale * zero;
#pragma unroll
        for (int m = 0; m < ROWS; ++m) {
          acc[m][c] = fmaf(part[m][c], scale_up, acc[m][c]);
          acc[m][c] = fmaf(-scale_zero, xsum[m], acc[m][c]);
        }
      }
    }
  }

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
  __threadfence();
  __syncthreads();
  const int tile = blockIdx.z * gridDim.x + blockIdx.x;
  if (tid == 0) last_block = atomicAdd(p.counters + tile, 1) == splits - 1;
  __syncthreads();
  if (!last_block) return;
  for (int i = tid; i < ROWS * kTileN; i += kThreads) {
    const int m = i / kTileN;
    const int c = i - m * kTileN;
    const int n = blockIdx.x * kTileN + c;
    if (m >= rows || n >= N) continue;
    const size_t at = static_cast<size_t>(row0 + m) * N + n;
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) sum += __ldcg(p.workspace + static_cast<size_t>(s) * p.M * N + at);
    out[at] = Io<T>::store(sum);
  }
  if (tid == 0) p.counters[tile] = 0;  // ready for the next launch
}

template <typename T, int BITS, int ROWS>
int resident_blocks_per_sm() {
  static const int blocks = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gptq_gemv_kernel<T, BITS, ROWS>,
                                                      kThreads, 0) != cudaSuccess) {
      cudaGetLastError();  // clear it; assume one block
      n = 1;
    }
    return n > 0 ? n : 1;
  }();
  return blocks;
}

template <typename T, int BITS, int ROWS>
struct Kernel {
  static int occupancy() { return resident_blocks_per_sm<T, BITS, ROWS>(); }
  static cudaError_t launch(const Problem& p, cudaStream_t stream) {
    const dim3 grid((p.N + kTileN - 1) / kTileN, p.splits, (p.M + ROWS - 1) / ROWS);
    gptq_gemv_kernel<T, BITS, ROWS><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
};

// Calls F::template run<Kernel<T, BITS, ROWS>>() for the problem's dtype, bits and tile rows.
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
  if (p.bits == 4) { FERRULE_ROWS(__half, 4) }
  FERRULE_ROWS(__half, 8)
#undef FERRULE_ROWS
}

}  // namespace

void plan(Problem& p, int num_sms, int64_t counter_capacity) {
  if (p.group_size > p.K) p.group_size = p.K;
  p.group_shift = -1;  // a shift finds a unit's group unless the size is no power of two
  for (int shift = 0; shift < 31; ++shift) {
    if ((1 << shift) == p.group_size) p.group_shift = shift;
  }
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
  p.splits = (units + p.units_per_split - 1) / p.units_per_split;
  if (p.splits < 1) p.splits = 1;
}

cudaError_t launch(const Problem& p, cudaStream_t stream) {
  return dispatch(p, [&](auto k) { return decltype(k)::launch(p, stream); });
}

}  // namespace ferrule_gemv
