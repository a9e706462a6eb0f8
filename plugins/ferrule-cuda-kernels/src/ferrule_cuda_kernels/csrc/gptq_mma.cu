// cuda-gptq-mma: y = x @ W for a few rows of float16 x and a GPTQ 4-bit weight, read in place,
// on the tensor cores (mma.sync m16n8k16, sm_80+). Rows go in tiles of 8, 16, 32 or 64.
//
// Why a streaming kernel. With a few rows the product is still bound by reading the weight,
// like the GEMV: every word must be read once per call with 16-byte loads and every
// multiprocessor kept streaming, and the tensor cores only have to keep up. So the work is
// split like cuda-gptq-gemv's, not like a GEMM's: each warp streams its own units of the
// weight (32 rows of K by 32 or 64 columns) with no barrier, holding the next units in
// registers while it multiplies the current one, and blocks split K when the layer is narrow.
//
// Fragments straight from the packed words. A thread (lane = 4 g + c) loads 16 bytes: the
// words of 4 adjacent columns (4 g .. 4 g + 3 of the warp's 32) at word row c of the unit, so
// it holds rows 8 c .. 8 c + 7 of K for those columns. For the MMA the weight is the A operand
// (the product runs transposed: out^T = W^T x^T), whose row g and g + 8 at K positions 2 c,
// 2 c + 1 (registers 0-1) and 2 c + 8, 2 c + 9 (registers 2-3) belong to thread 4 g + c. So
// tile t of a warp takes its row g from column 2 t of the thread's list and row g + 8 from
// column 2 t + 1, and the MMA's 16 K positions of thread c map to its own word's codes: K
// step s takes the code pairs (2 s, 2 s + 4) and (2 s + 1, 2 s + 5), which is what one LOP3
// makes: (w & 0x000F000F) | 0x64006400 is the float16 pair (1024 + q0, 1024 + q4), mask
// 0x00F000F0 gives (1024 + 16 q1, 1024 + 16 q5), and w >> 8 the other two pairs. One HSUB2
// (or HFMA2 by 1/16 for the 16 q pairs) subtracts the zero point, exactly: the fragments hold
// the integers q - z. Up to 16 rows the scale multiplies each unit's float32 sums (one FFMA a
// sum, fewer instructions than scaling the weights there, and no rounding of the weight);
// from 32 rows one HMUL2 a pair scales the weight instead, which then rounds once to float16
// as a dequantize-then-matmul does. Instructions per unit, not bandwidth, bound this kernel on
// an H100 (ncu: issue slots ~45% busy, integer pipe the busiest), so each one counts.
//
// x (the B operand, x^T, 8 rows of x a tile) is staged in shared memory by the whole block, a
// chunk of K at a time (gathered through perm under act-order), each octet of 8 rows as the
// pairs (x_p, x_{p+4}) the fragments take: thread c of row g then reads its B fragments for a
// unit with one 16-byte load. (Read from global memory by every warp instead, x cost as much
// traffic as the weight from 16 rows on.) Accumulation is float32 in the MMA.
//
// A block is 8 warps: warps_k of them split the block's K range (unit w, w + warps_k, ...),
// the others take side-by-side column strips. Warps that share columns add their sums in
// shared memory at the end; then, when K is split across blocks (splits > 1), the partial
// sums go to a float32 workspace and the last block of a tile to finish (an atomic counter)
// adds them and writes the output, as in cuda-gptq-gemv. plan_mma picks warps_k and splits.
//
// Tried on an H100 and not kept: the weight (and scales) streamed through a cp.async ring in
// shared memory, 3 to 10 units deep, instead of 2 units held in registers: 10-20% slower at
// any depth.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gptq_gemv.h"
#include "kernel_common.cuh"

namespace ferrule_gemv {
namespace {

using common::and_or;
using common::bits_half2;
using common::column_word;
using common::half2_bits;
using common::release_dependents;
using common::wait_for_inputs;

// Tuning knobs (-D overrides are for experiments, see bench/cuda_gemv_variants.py).
#ifndef FERRULE_MMA_STAGES
#define FERRULE_MMA_STAGES 2
#endif
#ifndef FERRULE_MMA_STAGE_OCTETS
#define FERRULE_MMA_STAGE_OCTETS 4
#endif
#ifndef FERRULE_MMA_MIN_BLOCKS_64
#define FERRULE_MMA_MIN_BLOCKS_64 1
#endif
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kUnitWords = 4;   // word rows of one unit: 32 rows of K at 4 bits
constexpr int kUnitRows = 32;
constexpr int kStages = FERRULE_MMA_STAGES;  // units a warp holds in registers
constexpr int kMinUnitsPerWarp = 4;
constexpr int kDefaultWarpsK = 4;
// 16-byte loads of x a thread has in flight while staging.
constexpr int kStageOctets = FERRULE_MMA_STAGE_OCTETS;

// x is staged in shared memory a chunk of K at a time: [TOKENS][kChunkRows + kPad] float16,
// each octet of 8 rows stored as the pairs (x_p, x_{p+4}) the B fragments take. The pad makes
// the token stride 64 bytes past a multiple of 128, so the 16-byte reads of a quarter warp
// (two tokens, 64 bytes each) fall in different banks.
template <int TOKENS>
constexpr int kChunkUnits = kStages * kWarps * (TOKENS <= 16 ? 4 : TOKENS == 32 ? 2 : 1);
template <int TOKENS>
constexpr int kChunkRows = kChunkUnits<TOKENS> * kUnitRows;
constexpr int kPad = 32;
template <int TOKENS>
constexpr int kStride = kChunkRows<TOKENS> + kPad;
template <int TOKENS>
constexpr int kSharedBytes = TOKENS * kStride<TOKENS> * 2;

// d = a b, plus d when kAdd, for one m16n8k16 tile: A row-major float16, B column-major
// float16, float32 sums.
template <bool kAdd>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const float c[4] = {kAdd ? d[0] : 0.0f, kAdd ? d[1] : 0.0f, kAdd ? d[2] : 0.0f,
                      kAdd ? d[3] : 0.0f};
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%10, %11, %12, %13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  __trap();  // plan_mma's callers refuse devices before sm_80
#elif defined(FERRULE_GEMV_EMULATED)
  if (!kAdd) d[0] = d[1] = d[2] = d[3] = 0.0f;
  emulated_mma_16816(d, a, b);  // tests/emulation/cuda_host_shim.h
#endif
}

// One unit's weight, scales and zeros for the thread's 4 * LOADS columns.
template <int LOADS>
struct Held {
  int4 words[LOADS];   // word row c of columns 32 l + 4 g .. + 3
  uint2 scales[LOADS];  // their 4 scales (float16 bits)
  uint32_t zeros[LOADS];  // the words of 8 zero points that hold theirs (from bit 4 (4 g % 8))
};

// The scale of column k of load l (float16).
template <typename H>
__device__ __forceinline__ __half scale_of(const H& h, int l, int k) {
  const uint32_t pair = k < 2 ? h.scales[l].x : h.scales[l].y;
  const uint16_t bits = static_cast<uint16_t>((k & 1) ? pair >> 16 : pair & 0xFFFFu);
  __half out;
  memcpy(&out, &bits, sizeof out);
  return out;
}

// Two blocks a multiprocessor (16 warps, at most 128 registers a thread) up to 32 rows; 64
// rows need more registers for their sums and fragments (they spill at 128).
template <int TOKENS>
constexpr int kMinBlocks = TOKENS <= 32 ? 2 : FERRULE_MMA_MIN_BLOCKS_64;

template <int TOKENS, int LOADS>
__global__ void __launch_bounds__(kThreads, kMinBlocks<TOKENS>) gptq_mma_kernel(const Problem p) {
  constexpr int kTiles = 2 * LOADS;       // 16-column MMA tiles of a warp
  constexpr int kTokenTiles = TOKENS / 8;  // 8-row MMA tiles of x
  constexpr int kWarpCols = 32 * LOADS;
  // Up to 16 rows the scale multiplies each unit's float32 sums (8 L T products a unit);
  // beyond, the dequantized weights in float16 (16 L products a unit, fewer there).
  constexpr bool kScaleAfter = TOKENS <= 16;
  static_assert(kChunkUnits<TOKENS> % (kStages * kWarps) == 0, "a chunk is whole rounds of units");
  // One buffer, used twice: the staged chunk of x, then the sums of the warps that share
  // columns, [TOKENS][columns of the block] at warps_k >= 2.
  static_assert(TOKENS * (kWarps / 2) * kWarpCols * 4 <= kSharedBytes<TOKENS>, "sums fit");
#ifdef FERRULE_GEMV_EMULATED
  __shared__ __align__(16) char smem[kSharedBytes<TOKENS>];
#else
  extern __shared__ __align__(16) char smem[];
#endif
  __half* const xs = reinterpret_cast<__half*>(smem);
  float* const shared_sums = reinterpret_cast<float*>(smem);
  __shared__ bool last_block;

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int g = lane >> 2;
  const int c = lane & 3;
  const int warps_k = p.warps_k;
  const int warps_n = kWarps / warps_k;
  const int wn = warp % warps_n;
  const int wk = warp / warps_n;
  const int block_cols = warps_n * kWarpCols;
  const int N = p.N;
  const int M = p.M;
  const int warp_col = blockIdx.x * block_cols + wn * kWarpCols;
  const int zero_shift = 4 * ((4 * g) % 8);  // of the thread's columns in their zero words
  const int row0 = blockIdx.z * TOKENS;
  const int words = p.K / 8;
  const int units = (words + kUnitWords - 1) / kUnitWords;
  const int unit_begin = blockIdx.y * p.units_per_split;
  const int unit_end = min(unit_begin + p.units_per_split, units);
  const uint32_t n4 = N / 4;
  const uint32_t zero_words = N / 8;
  const int4* __restrict__ qweight = reinterpret_cast<const int4*>(p.qweight);
  const uint2* __restrict__ scales = reinterpret_cast<const uint2*>(p.scales);
  const uint32_t* __restrict__ qzeros = reinterpret_cast<const uint32_t*>(p.qzeros);
  const common::XReader<__half> reader(static_cast<const __half*>(p.x), p.x_stride_m,
                                       p.x_stride_k, p.perm, p.K);

  // Column j (0 .. 4 LOADS - 1) of this thread's list.
  auto column = [&](int j) { return warp_col + 32 * (j / 4) + 4 * g + (j % 4); };

  // Issues the loads of `unit` (zeros past the range or the last column).
  auto fetch = [&](Held<LOADS>& h, int unit) {
    const bool ok = unit < unit_end;
    const uint32_t row = static_cast<uint32_t>(unit) * kUnitWords + c;
    const int k = unit * kUnitRows;
    const uint32_t group = ok ? common::group_of(p, k) : 0u;
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
      const int col = warp_col + 32 * l + 4 * g;
      const bool in = ok && col < N;  // N % 4 == 0: the 4 columns are all in or all out
      h.words[l] = in && static_cast<int>(row) < words ? __ldcs(qweight + row * n4 + col / 4)
                                                       : make_int4(0, 0, 0, 0);
      h.scales[l] = in ? __ldg(scales + group * n4 + col / 4) : make_uint2(0u, 0u);
      // Shifted when dequantized, not here: using a load right away would wait for it.
      h.zeros[l] = in ? __ldg(qzeros + group * zero_words + col / 8) : 0u;
    }
  };

  float acc[kTiles][kTokenTiles][4];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int u = 0; u < kTokenTiles; ++u) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[t][u][e] = 0.0f;
    }
  }

  // `octet` is the unit's first octet in the staged chunk.
  auto multiply = [&](const Held<LOADS>& h, int octet) {
    // B fragments: x rows 8 c .. 8 c + 7 of this unit for row g of each 8-row tile, staged as
    // the pairs (x_p, x_{p+4}), p = 0..3.
    uint4 xb[kTokenTiles];
#pragma unroll
    for (int u = 0; u < kTokenTiles; ++u)
      xb[u] = *reinterpret_cast<const uint4*>(xs + (8 * u + g) * kStride<TOKENS> + 8 * (octet + c));
    // A fragments: the pairs (q_p - z, q_{p+4} - z) of each column's word, exact in float16;
    // times the scale in float16 as well when the scale is applied before the products.
    uint32_t wp[4 * LOADS][4];
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const uint32_t w = column_word(h.words[l], k);
        const uint32_t z = (h.zeros[l] >> (zero_shift + 4 * k)) & 0xFu;
        __half2 v[4];
        common::code_pairs(w, z, v);
        if constexpr (!kScaleAfter) {
          const __half scale = scale_of(h, l, k);
#pragma unroll
          for (int i = 0; i < 4; ++i) v[i] = __hmul2(v[i], __half2(scale, scale));
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) wp[4 * l + k][i] = half2_bits(v[i]);
      }
    }
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      float part[kTokenTiles][4];  // this unit's sums for the tile (scale after) ...
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const uint32_t a[4] = {wp[2 * t][2 * s], wp[2 * t + 1][2 * s], wp[2 * t][2 * s + 1],
                               wp[2 * t + 1][2 * s + 1]};
#pragma unroll
        for (int u = 0; u < kTokenTiles; ++u) {
          const uint32_t b[2] = {s == 0 ? xb[u].x : xb[u].z, s == 0 ? xb[u].y : xb[u].w};
          if constexpr (kScaleAfter) {
            if (s == 0) {
              mma_16816<false>(part[u], a, b);
            } else {
              mma_16816<true>(part[u], a, b);
            }
          } else {
            mma_16816<true>(acc[t][u], a, b);  // ... or straight into the sums
          }
        }
      }
      if constexpr (kScaleAfter) {
        // Rows g and g + 8 of tile t are columns 2 t and 2 t + 1 of the thread's list.
        const float low = __half2float(scale_of(h, (2 * t) / 4, (2 * t) % 4));
        const float high = __half2float(scale_of(h, (2 * t + 1) / 4, (2 * t + 1) % 4));
#pragma unroll
        for (int u = 0; u < kTokenTiles; ++u) {
          acc[t][u][0] = fmaf(part[u][0], low, acc[t][u][0]);
          acc[t][u][1] = fmaf(part[u][1], low, acc[t][u][1]);
          acc[t][u][2] = fmaf(part[u][2], high, acc[t][u][2]);
          acc[t][u][3] = fmaf(part[u][3], high, acc[t][u][3]);
        }
      }
    }
  };

  // Start streaming this warp's first units before waiting on anything (PDL).
  Held<LOADS> held[kStages];
#pragma unroll
  for (int s = 0; s < kStages; ++s) fetch(held[s], unit_begin + wk + s * warps_k);
  for (int chunk = unit_begin; chunk < unit_end; chunk += kChunkUnits<TOKENS>) {
    const int chunk_end = min(chunk + kChunkUnits<TOKENS>, unit_end);
    // Stage x[row0 .. row0 + TOKENS][chunk's rows] (through perm under act-order; zeros past
    // M and K) in pair order.
    wait_for_inputs();  // x (and the output's memory) may be the previous kernel's
    __syncthreads();    // the previous chunk is done reading the buffer
    const int octets = (chunk_end - chunk) * (kUnitRows / 8);
    const int total = TOKENS * octets;
    const int k0 = chunk * kUnitRows;
    for (int base = 0; base < total; base += kThreads * kStageOctets) {
      uint4 raw[kStageOctets];
#pragma unroll
      for (int j = 0; j < kStageOctets; ++j) {
        const int i = base + j * kThreads + tid;
        const int m = i / octets;
        raw[j] = i < total && row0 + m < M ? reader.octet(row0 + m, k0 + 8 * (i - m * octets))
                                           : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int j = 0; j < kStageOctets; ++j) {
        const int i = base + j * kThreads + tid;
        if (i >= total) continue;
        const int m = i / octets;
        *reinterpret_cast<uint4*>(xs + m * kStride<TOKENS> + 8 * (i - m * octets)) =
            common::pair_order(raw[j]);
      }
    }
    __syncthreads();
    // Multiply each held unit and refill its registers with the unit kStages rounds on: no
    // barrier until the chunk ends.
    for (int unit = chunk + wk; unit < chunk_end; unit += kStages * warps_k) {
#pragma unroll
      for (int s = 0; s < kStages; ++s) {
        const int mine = unit + s * warps_k;  // uniform across the warp
        if (mine < chunk_end) multiply(held[s], (mine - chunk) * (kUnitRows / 8));
        fetch(held[s], mine + kStages * warps_k);
      }
    }
  }
  release_dependents();  // the next kernel may start loading its weights
  __syncthreads();  // the buffer is free for the sums

  // Element e of acc[t][u]: column 2 t + e / 2 of the list, row 8 u + 2 c + e % 2 of the tile.
  auto local = [&](int t, int u, int e) {
    const int col = wn * kWarpCols + 32 * ((2 * t + e / 2) / 4) + 4 * g + (2 * t + e / 2) % 4;
    return (8 * u + 2 * c + e % 2) * block_cols + col;
  };
  auto each_sum = [&](auto&& f) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
#pragma unroll
      for (int u = 0; u < kTokenTiles; ++u) {
#pragma unroll
        for (int e = 0; e < 4; ++e) f(t, u, e);
      }
    }
  };
  // Warps that share columns add up in shared memory: warp wk = 1, 2, ... in turn, then 0.
  for (int r = 1; r < warps_k; ++r) {
    if (wk == r) {
      each_sum([&](int t, int u, int e) {
        float& slot = shared_sums[local(t, u, e)];
        slot = r == 1 ? acc[t][u][e] : slot + acc[t][u][e];
      });
    }
    __syncthreads();
  }
  const int splits = gridDim.y;
  __half* __restrict__ out = static_cast<__half*>(p.out);
  if (wk == 0) {
    each_sum([&](int t, int u, int e) {
      const int n = column(2 * t + e / 2);
      const int token = row0 + 8 * u + 2 * c + e % 2;
      float sum = acc[t][u][e];
      if (warps_k > 1) sum += shared_sums[local(t, u, e)];
      if (token >= M || n >= N) return;
      const size_t at = static_cast<size_t>(token) * N + n;
      if (splits == 1) {
        out[at] = __float2half_rn(sum);
      } else {
        p.workspace[static_cast<size_t>(blockIdx.y) * M * N + at] = sum;
      }
    });
  }
  if (splits == 1) return;

  // Split-K: the last block of this tile to arrive adds the splits' partial sums.
  common::add_up_splits<__half, kThreads>(p.counters, p.workspace, out, M, N, row0, TOKENS,
                                          blockIdx.x * block_cols, block_cols,
                                          blockIdx.z * gridDim.x + blockIdx.x, splits, last_block);
}

// out[m][k] = x[m][perm[k]] for act-order layers, before the product (gather_rows). Each
// block of the product would otherwise gather its own copy of x through perm, one 2-byte load
// at a time, for every column block: on an H100 that made act-order 15-30% slower at 4 rows.
__global__ void __launch_bounds__(kThreads) gather_rows_kernel(const Problem p, __half* out) {
  release_dependents();  // the product may start loading its weights; it waits for this grid
  const common::XReader<__half> reader(static_cast<const __half*>(p.x), p.x_stride_m,
                                       p.x_stride_k, p.perm, p.K);
  const int octets = p.K / 8;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= static_cast<int64_t>(p.M) * octets) return;
  const int m = static_cast<int>(i / octets);
  const int o = static_cast<int>(i - static_cast<int64_t>(m) * octets);
  int4 a, b;
  if (reader.whole_perm_octet(8 * o)) reader.sources(8 * o, a, b);  // the layer's: before the wait
  wait_for_inputs();  // x may be the previous kernel's
  const uint4 v = reader.whole_perm_octet(8 * o) ? reader.gather(m, a, b) : reader.octet(m, 8 * o);
  *reinterpret_cast<uint4*>(out + static_cast<int64_t>(m) * p.K + 8 * o) = v;
}

// gather_rows a whole row a block, for many rows: the row is copied to shared memory with
// 16-byte loads, then gathered from there. (Through perm straight from global memory, 8
// scattered 2-byte loads an octet, act-order made cuda-gptq-wgmma 27% slower at 1024 rows of
// 28,672 on an H100.) Each row is cut into `slices` blocks, which each copy the whole row and
// write their slice of it, so that a few rows still fill the GPU: one block a row at 16 rows
// of 28,672 took ~17 us, a third of the product after it (H100).
constexpr int kWholeRowMaxK = 32768;  // a float16 row in 64 KB of shared memory
constexpr int kWholeRowFrom = 16;     // rows; fewer gather octet by octet (gather_rows_kernel)
__global__ void __launch_bounds__(kThreads) gather_whole_rows_kernel(const Problem p, __half* out,
                                                                     int slices) {
#ifdef FERRULE_GEMV_EMULATED
  __shared__ __align__(16) __half row[kWholeRowMaxK];
#else
  extern __shared__ __align__(16) __half row[];
#endif
  release_dependents();  // the product may start loading its weights; it waits for this grid
  const int m = blockIdx.x / slices;
  const int slice = blockIdx.x - m * slices;
  const int K = p.K;
  const int octets = K / 8;
  const int begin = static_cast<int>(static_cast<int64_t>(octets) * slice / slices);
  const int end = static_cast<int>(static_cast<int64_t>(octets) * (slice + 1) / slices);
  // x in stored order: 16-byte loads where it is contiguous
  const common::XReader<__half> reader(static_cast<const __half*>(p.x), p.x_stride_m,
                                       p.x_stride_k, nullptr, K);
  wait_for_inputs();  // x may be the previous kernel's
  // In batches of independent loads a thread, so a row costs a few round trips to memory
  // rather than one a pass.
  constexpr int kCopyBatch = 8;    // 16-byte octets of x
  constexpr int kGatherBatch = 4;  // octets of perm (32 bytes each)
  for (int first = threadIdx.x; first < octets; first += kThreads * kCopyBatch) {
    uint4 v[kCopyBatch];
#pragma unroll
    for (int j = 0; j < kCopyBatch; ++j) {
      const int o = first + j * kThreads;
      if (o < octets) v[j] = reader.octet(m, 8 * o);
    }
#pragma unroll
    for (int j = 0; j < kCopyBatch; ++j) {
      const int o = first + j * kThreads;
      if (o < octets) reinterpret_cast<uint4*>(row)[o] = v[j];
    }
  }
  __syncthreads();
  const int4* __restrict__ perm = reinterpret_cast<const int4*>(p.perm);
  for (int first = begin + threadIdx.x; first < end; first += kThreads * kGatherBatch) {
    int4 a[kGatherBatch], b[kGatherBatch];
#pragma unroll
    for (int j = 0; j < kGatherBatch; ++j) {
      const int o = first + j * kThreads;
      if (o < end) {
        a[j] = __ldg(perm + 2 * o);
        b[j] = __ldg(perm + 2 * o + 1);
      }
    }
#pragma unroll
    for (int j = 0; j < kGatherBatch; ++j) {
      const int o = first + j * kThreads;
      if (o < end) {
        *reinterpret_cast<uint4*>(out + static_cast<int64_t>(m) * K + 8 * o) =
            common::gather8(row, 1, a[j], b[j]);
      }
    }
  }
}

template <int TOKENS, int LOADS>
struct Kernel {
  using Launch = common::Launcher<gptq_mma_kernel<TOKENS, LOADS>, kThreads, kSharedBytes<TOKENS>>;
  static int occupancy() { return Launch::occupancy(); }
  static cudaError_t launch(const Problem& p, cudaStream_t stream) {
    const int block_cols = kWarps / p.warps_k * 32 * LOADS;
    const dim3 grid((p.N + block_cols - 1) / block_cols, p.splits, (p.M + TOKENS - 1) / TOKENS);
    return Launch::launch_on(grid, p, stream);
  }
};

template <typename F>
auto dispatch(const Problem& p, F&& f) {
  switch (p.tokens) {
    case 8: return f(Kernel<8, 2>{});
    case 16: return f(Kernel<16, 2>{});
    case 32: return f(Kernel<32, 1>{});
    default: return f(Kernel<64, 1>{});
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void plan_mma(Problem& p, int num_sms, int64_t counter_capacity) {
  plan_groups(p);
  p.tokens = p.M <= 8 ? 8 : p.M <= 16 ? 16 : p.M <= 32 ? 32 : 64;
  p.loads = p.tokens <= 16 ? 2 : 1;
  const int64_t units = ceil_div(p.K / 8, kUnitWords);
  const int64_t strips = ceil_div(p.N, 32 * p.loads);
  const int64_t token_blocks = ceil_div(p.M, p.tokens);
  const int64_t resident =
      static_cast<int64_t>(num_sms) * dispatch(p, [](auto k) { return decltype(k)::occupancy(); });
  // Splits that fill the GPU with about one wave for warps_k = wk, at least
  // kMinUnitsPerWarp units a warp; 1 when the tiles' counters would not fit.
  auto splits_for = [&](int wk) {
    const int64_t tiles = ceil_div(strips, kWarps / wk) * token_blocks;
    if (tiles > counter_capacity) return int64_t{1};
    const int64_t fill = resident / tiles;
    const int64_t most = units / (static_cast<int64_t>(wk) * kMinUnitsPerWarp);
    return std::max<int64_t>(1, std::min(fill, most));
  };
  if (p.warps_k != 1 && p.warps_k != 2 && p.warps_k != 4 && p.warps_k != 8) {
    // Measured on an H100 (Llama-3-8B and -70B layers, 4 to 16 rows): 4 warps on K and 2 on
    // columns, with the split that fills the GPU, was within 4% of the best of every
    // (warps_k, splits) tried on each layer.
    p.warps_k = kDefaultWarpsK;
  }
  const int64_t tiles = ceil_div(strips, kWarps / p.warps_k) * token_blocks;
  int64_t splits = p.splits > 0 && tiles <= counter_capacity ? p.splits : splits_for(p.warps_k);
  splits = std::max<int64_t>(1, std::min(splits, units));
  // A whole number of units for each of the warps_k warps on K.
  int64_t per_split = ceil_div(ceil_div(units, splits), p.warps_k) * p.warps_k;
  p.units_per_split = static_cast<int>(per_split);
  p.splits = static_cast<int>(ceil_div(units, per_split));
}

cudaError_t gather_rows(const Problem& p, void* out, int num_sms, cudaStream_t stream) {
  if (p.perm != nullptr && p.M >= kWholeRowFrom && p.K <= kWholeRowMaxK && p.K % 8 == 0 &&
      reinterpret_cast<uintptr_t>(p.perm) % 16 == 0) {
    const int shared = p.K * 2;
    static const cudaError_t allowed =
        common::allow_shared(gather_whole_rows_kernel, kWholeRowMaxK * 2);
    if (allowed != cudaSuccess) return allowed;
    // Two blocks a multiprocessor, in slices of a pass of the block's threads or more.
    const int64_t most = std::max<int64_t>(1, p.K / 8 / kThreads);
    const int64_t slices = std::min(most, std::max<int64_t>(1, ceil_div(2 * num_sms, p.M)));
    const dim3 grid(static_cast<unsigned>(p.M * slices));
    return common::launch_kernel(gather_whole_rows_kernel, grid, kThreads, shared, stream, p.pdl,
                                 p, static_cast<__half*>(out), static_cast<int>(slices));
  }
  const int64_t octets = static_cast<int64_t>(p.M) * (p.K / 8);
  const dim3 grid(static_cast<unsigned>((octets + kThreads - 1) / kThreads));
  return common::launch_kernel(gather_rows_kernel, grid, kThreads, 0, stream, p.pdl, p,
                               static_cast<__half*>(out));
}

cudaError_t launch_mma(const Problem& p, cudaStream_t stream) {
  return dispatch(p, [&](auto k) { return decltype(k)::launch(p, stream); });
}

}  // namespace ferrule_gemv
