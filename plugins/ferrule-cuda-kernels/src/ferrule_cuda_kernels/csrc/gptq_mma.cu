// cuda-gptq-mma: y = x @ W for 3 to 64 rows of float16 x and a GPTQ 4-bit weight read in
// place, multiplied on the tensor cores with mma.sync m16n8k16 (sm_80 and later).
//
// Layout as in gptq_gemv.cu: qweight is int32 [K / 8, N], word (r, n) holding rows
// 8r .. 8r + 7 of column n, code i in bits [4i, 4i + 4).
//
// Fragments without shuffles. The weight is the MMA's A operand (16 output columns by 16 rows
// of K) and x its B operand (16 rows of K by 8 rows of x), so the output is computed
// transposed and a few rows of x waste no tensor-core work. Lane (g, t) = (lane / 4, lane % 4)
// loads 16 bytes: word t of a 4-word unit (32 rows of K) for 4 adjacent columns 4g .. 4g + 3.
// Its 8 codes, unpacked as pairs (i, i + 4) by one LOP3 each (half2_codes.cuh), are exactly
// what an m16n8k16 A fragment asks of a lane, if the MMA's 16 K positions 2t, 2t + 1, 2t + 8,
// 2t + 9 stand for rows (8t + i, 8t + i + 4, 8t + i + 1, 8t + i + 5) of K, i = 0 for the
// first MMA and 2 for the second: the K order inside a unit is free as long as x follows it.
// So x is staged in shared memory in that order (the pairs (i, i + 4) of each word, as in
// gptq_gemv.cu's float16 path), and one 16-byte load gives a lane the B fragments of both
// MMAs. Columns 4g + 2p and 4g + 2p + 1 are the A fragment's rows g and g + 8 (p = 0, 1).
// Each pair is dequantized to ((1024 + q) - (1024 + z)) * s in float16 (exact, then one
// rounding, as a float16 dequantized weight is), and the MMA accumulates in float32 over the
// block's whole share of K.
//
// Work split. A block is 8 warps side by side over 8 * 32 * J output columns, each warp over
// its own 32 * J columns and every unit of the block's share of K; the block stages x for a
// chunk of K once and all warps read it. Each warp holds S units of loads in registers, refilled
// as it multiplies (no barrier until the chunk ends). K is split over blocks (grid.y) until the
// GPU is full; partial sums go to a float32 workspace and the last block of a tile adds them,
// as in gptq_gemv.cu. Rows of x beyond a block's 16, 32 or 64 are more blocks (grid.z).

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "gptq_gemv.h"
#include "half2_codes.cuh"

namespace ferrule_gemv {
namespace {

#ifndef FERRULE_MMA_MIN_BLOCKS
#define FERRULE_MMA_MIN_BLOCKS 2
#endif
#ifndef FERRULE_MMA_S16
#define FERRULE_MMA_S16 2
#endif
#ifndef FERRULE_MMA_J16
#define FERRULE_MMA_J16 2
#endif
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMinBlocks = FERRULE_MMA_MIN_BLOCKS;  // -D overrides are for tuning experiments
constexpr int kUnitWords = 4;  // packed rows sharing one (scale, zero)
constexpr int kUnitK = 32;     // rows of K in a unit
constexpr int kStageWords = 4;  // words of x (8 rows of K) a thread stages at once

// Per rows of x in a block: J column groups of 32 a warp, S units held in registers. The
// float32 accumulators are J * 2 * ROWS / 8 * 4 registers: 32, 32 and 64; every shape fits
// 128 registers, so two blocks (16 warps) share a multiprocessor.
template <int ROWS>
struct Shape;
template <>
struct Shape<16> {
  static constexpr int J = FERRULE_MMA_J16, S = FERRULE_MMA_S16;
};
template <>
struct Shape<32> {
  static constexpr int J = 1, S = 4;
};
template <>
struct Shape<64> {
  static constexpr int J = 1, S = 2;
};

// Rows of K whose x is staged at once: 32 KB of float16. Each row of x is padded by 16 bytes
// so that the 8 rows a warp's B fragments read at once fall in different banks.
template <int ROWS>
constexpr int kChunkK = 16384 / ROWS;
constexpr int kPad = 8;

template <int ROWS>
constexpr int kTileColumns = kWarps * 32 * Shape<ROWS>::J;

__device__ __forceinline__ uint32_t word_of(const int4& v, int c) {
  return static_cast<uint32_t>(c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w);
}

__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                          uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The dequantized pairs (i, i + 4), i = 0..3, of one word: ((1024 + q) - (1024 + z)) * s.
__device__ __forceinline__ void dequantize(uint32_t w, __half2 zero, __half2 scale,
                                           uint32_t (&d)[4]) {
  d[0] = half2_bits(__hmul2(__hsub2(biased_pair(w), zero), scale));
  d[1] = half2_bits(__hmul2(__hsub2(biased_pair(w >> 4), zero), scale));
  d[2] = half2_bits(__hmul2(__hsub2(biased_pair(w >> 8), zero), scale));
  d[3] = half2_bits(__hmul2(__hsub2(biased_pair(w >> 12), zero), scale));
}

template <int ROWS>
struct Held {
  int4 words[Shape<ROWS>::J];   // word t of the unit, 4 columns per group of 32
  uint2 scales[Shape<ROWS>::J];  // the 4 columns' scales (float16 bits)
  uint32_t zeros[Shape<ROWS>::J];  // the packed zero word, shifted to the first column
};

template <int ROWS>
__global__ void __launch_bounds__(kThreads, kMinBlocks) gptq_mma_kernel(const Problem p) {
  constexpr int J = Shape<ROWS>::J;
  constexpr int S = Shape<ROWS>::S;
  constexpr int NT = ROWS / 8;  // 8-row tiles of x (the MMA's N)
  constexpr int CK = kChunkK<ROWS>;
  constexpr int kTileN = kTileColumns<ROWS>;
  constexpr int XS = CK + kPad;  // halves between rows of x in xs
  __shared__ __align__(16) __half xs[ROWS * XS];
  __shared__ bool last_block;

  const __half* __restrict__ x = static_cast<const __half*>(p.x);
  const int4* __restrict__ qweight = reinterpret_cast<const int4*>(p.qweight);
  const uint2* __restrict__ scales = reinterpret_cast<const uint2*>(p.scales);
  const uint32_t* __restrict__ qzeros = reinterpret_cast<const uint32_t*>(p.qzeros);

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int N = p.N;
  const uint32_t n4 = N / 4;
  const int warp_col = blockIdx.x * kTileN + warp * 32 * J;
  const int row0 = blockIdx.z * ROWS;
  const int rows = min(ROWS, p.M - row0);
  const int words = p.K / 8;
  const int units = (words + kUnitWords - 1) / kUnitWords;
  const int unit_begin = blockIdx.y * p.units_per_split;
  const int unit_end = min(unit_begin + p.units_per_split, units);
  const uint32_t zero_words = N / 8;

  // 16-byte loads of x: in order, contiguous along K, rows and base 16-byte aligned.
  const bool vector_x = p.perm == nullptr && p.x_stride_k == 1 && p.x_stride_m % 8 == 0 &&
                        reinterpret_cast<uintptr_t>(x) % 16 == 0;
  // Rows of the tile past the last row of x stay zero: the MMAs read them.
  for (int i = rows * XS / 8 + tid; i < ROWS * XS / 8; i += kThreads)
    reinterpret_cast<uint4*>(xs)[i] = make_uint4(0u, 0u, 0u, 0u);

  auto fetch = [&](Held<ROWS>& h, int unit, int end) {
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int col = warp_col + 32 * j + 4 * g;
      const bool ok = unit < end && col < N;
      const int row = unit * kUnitWords + t;
      h.words[j] = ok && row < words ? __ldcs(qweight + static_cast<uint32_t>(row) * n4 + col / 4)
                                     : make_int4(0, 0, 0, 0);
      h.scales[j] = make_uint2(0u, 0u);
      h.zeros[j] = 0u;
      if (ok) {
        const int k = unit * kUnitK;
        const uint32_t group = p.group_shift >= 0 ? k >> p.group_shift : k / p.group_size;
        h.scales[j] = __ldg(scales + group * n4 + col / 4);
        h.zeros[j] = __ldg(qzeros + group * zero_words + col / 8) >> (4 * (col % 8));
      }
    }
  };

  float acc[J][2][NT][4];
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[j][q][nt][r] = 0.0f;

  // One unit: per column pair, 2 MMAs per 8 rows of x.
  auto multiply = [&](const Held<ROWS>& h, const __half* xunit) {
    uint4 b[NT];  // word t's 4 pairs of x, for row 8 nt + g
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      b[nt] = *reinterpret_cast<const uint4*>(xunit + (8 * nt + g) * XS + 8 * t);
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const __half* s4 = reinterpret_cast<const __half*>(&h.scales[j]);
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        uint32_t lo[4], hi[4];  // columns 4g + 2q (A row g) and 4g + 2q + 1 (A row g + 8)
#pragma unroll
        for (int side = 0; side < 2; ++side) {
          const int c = 2 * q + side;
          const uint32_t z = (h.zeros[j] >> (4 * c)) & 0xFu;
          const __half2 zero = bits_half2(z * 0x00010001u | 0x64006400u);  // 1024 + z
          dequantize(word_of(h.words[j], c), zero, __half2half2(s4[c]), side == 0 ? lo : hi);
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          mma_16816(acc[j][q][nt], lo[0], hi[0], lo[1], hi[1], b[nt].x, b[nt].y);
          mma_16816(acc[j][q][nt], lo[2], hi[2], lo[3], hi[3], b[nt].z, b[nt].w);
        }
      }
    }
  };

  for (int chunk = unit_begin; chunk < unit_end; chunk += CK / kUnitK) {
    const int chunk_end = min(chunk + CK / kUnitK, unit_end);
    Held<ROWS> held[S];
#pragma unroll
    for (int s = 0; s < S; ++s) fetch(held[s], chunk + s, chunk_end);

    // Stage x[rows][chunk] as float16, each word's rows in the order (0, 4, 1, 5, 2, 6, 3, 7):
    // a thread takes whole words (8 rows of K of one row of x), 16-byte loads where x allows.
    __syncthreads();  // the previous chunk is done reading xs
    const int chunk_words = (chunk_end - chunk) * kUnitWords;
    const int w0 = chunk * kUnitWords;
    const int total = rows * chunk_words;
    for (int base = 0; base < total; base += kThreads * kStageWords) {
      uint4 v[kStageWords];
#pragma unroll
      for (int i = 0; i < kStageWords; ++i) {
        const int e = base + i * kThreads + tid;
        const int m = e / chunk_words;
        const int word = w0 + (e - m * chunk_words);
        v[i] = make_uint4(0u, 0u, 0u, 0u);
        if (e < total && word < words) {
          const __half* row = x + (row0 + m) * p.x_stride_m;
          if (vector_x) {
            v[i] = __ldg(reinterpret_cast<const uint4*>(row + 8 * word));
          } else {
            __half h[8];
#pragma unroll
            for (int r = 0; r < 8; ++r) {
              const int k = 8 * word + r;
              h[r] = row[static_cast<int64_t>(p.perm != nullptr ? __ldg(p.perm + k) : k) *
                         p.x_stride_k];
            }
            memcpy(&v[i], h, sizeof h);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kStageWords; ++i) {
        const int e = base + i * kThreads + tid;
        const int m = e / chunk_words;
        const int word = e - m * chunk_words;
        if (e >= total) continue;
        // (x0 x1)(x2 x3)(x4 x5)(x6 x7) -> (x0 x4)(x1 x5)(x2 x6)(x3 x7)
        const uint4 pairs = make_uint4(__byte_perm(v[i].x, v[i].z, 0x5410),
                                       __byte_perm(v[i].x, v[i].z, 0x7632),
                                       __byte_perm(v[i].y, v[i].w, 0x5410),
                                       __byte_perm(v[i].y, v[i].w, 0x7632));
        *reinterpret_cast<uint4*>(xs + m * XS + 8 * word) = pairs;
      }
    }
    __syncthreads();

    for (int unit = chunk; unit < chunk_end; unit += S) {
#pragma unroll
      for (int s = 0; s < S; ++s) {
        const int mine = unit + s;
        if (mine < chunk_end) multiply(held[s], xs + (mine - chunk) * kUnitK);
        fetch(held[s], mine + S, chunk_end);
      }
    }
  }

  // acc[j][q][nt][r]: column warp_col + 32 j + 4 g + 2 q + r / 2, row 8 nt + 2 t + r % 2.
  const int splits = gridDim.y;
  __half* __restrict__ out = static_cast<__half*>(p.out);
#pragma unroll
  for (int j = 0; j < J; ++j)
#pragma unroll
    for (int q = 0; q < 2; ++q)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int col = warp_col + 32 * j + 4 * g + 2 * q + r / 2;
          const int m = 8 * nt + 2 * t + r % 2;
          if (m >= rows || col >= N) continue;
          const size_t at = static_cast<size_t>(row0 + m) * N + col;
          if (splits == 1) {
            out[at] = __float2half_rn(acc[j][q][nt][r]);
          } else {
            p.workspace[static_cast<size_t>(blockIdx.y) * p.M * N + at] = acc[j][q][nt][r];
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
    const int n = blockIdx.x * kTileN + (i - m * kTileN);
    if (m >= rows || n >= N) continue;
    const size_t at = static_cast<size_t>(row0 + m) * N + n;
    float sum = 0.0f;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) sum += __ldcg(p.workspace + static_cast<size_t>(s) * p.M * N + at);
    out[at] = __float2half_rn(sum);
  }
  if (tid == 0) p.counters[tile] = 0;  // ready for the next launch
}

template <int ROWS>
int resident_blocks_per_sm() {
  static const int blocks = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gptq_mma_kernel<ROWS>, kThreads, 0) !=
        cudaSuccess) {
      cudaGetLastError();
      n = 1;
    }
    return n > 0 ? n : 1;
  }();
  return blocks;
}

template <typename F>
auto dispatch_rows(int tile_rows, F&& f) {
  switch (tile_rows) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    default: return f(std::integral_constant<int, 64>{});
  }
}

}  // namespace

void plan_mma(Problem& p, int num_sms, int64_t counter_capacity) {
  if (p.group_size > p.K) p.group_size = p.K;
  p.group_shift = -1;
  for (int shift = 0; shift < 31; ++shift) {
    if ((1 << shift) == p.group_size) p.group_shift = shift;
  }
  p.tile_rows = p.M <= 16 ? 16 : p.M <= 32 ? 32 : 64;
  const int units = (p.K / 8 + kUnitWords - 1) / kUnitWords;
  const int tile_n = dispatch_rows(p.tile_rows, [](auto rows) { return kTileColumns<rows()>; });
  const int64_t tiles =
      static_cast<int64_t>((p.N + tile_n - 1) / tile_n) * ((p.M + p.tile_rows - 1) / p.tile_rows);
  const int64_t resident = static_cast<int64_t>(num_sms) *
                           dispatch_rows(p.tile_rows, [](auto rows) {
                             return resident_blocks_per_sm<rows()>();
                           });
  int64_t splits = 1;
  if (tiles < resident && tiles <= counter_capacity) {
    splits = resident / tiles;
    const int64_t most = (units + 3) / 4;  // at least 4 units a split
    splits = splits < most ? splits : most;
    splits = splits > 1 ? splits : 1;
  }
  p.units_per_split = static_cast<int>((units + splits - 1) / splits);
  p.splits = (units + p.units_per_split - 1) / p.units_per_split;
  if (p.splits < 1) p.splits = 1;
}

cudaError_t launch_mma(const Problem& p, cudaStream_t stream) {
  return dispatch_rows(p.tile_rows, [&](auto rows) {
    constexpr int R = rows();
    const int tile_n = kTileColumns<R>;
    const dim3 grid((p.N + tile_n - 1) / tile_n, p.splits, (p.M + R - 1) / R);
    gptq_mma_kernel<R><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace ferrule_gemv
