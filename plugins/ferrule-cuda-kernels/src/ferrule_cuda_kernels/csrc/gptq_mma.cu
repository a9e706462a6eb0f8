// cuda-gptq-mma: y = x @ W on tensor cores for a 4-bit GPTQ weight repacked once.
//
// Orientation. The product is computed transposed, y^T = W^T x^T, with mma.sync m16n8k16:
// the weight is the A operand (16 output features by 16 input rows) and the activations the
// B operand (16 input rows by 8 tokens), so a batch of 1 to 8 tokens wastes no tensor-core
// work on padding and the dequantized weight goes from registers straight into the mma.
//
// Fragments (PTX ISA, m16n8k16, 16-bit inputs; g = lane / 4, t = lane % 4). A: four 32-bit
// registers of two values each, a0 = (row g, cols 2t, 2t+1), a1 = (row g+8, same cols),
// a2 = (row g, cols 2t+8, 2t+9), a3 = (row g+8, cols 2t+8, 2t+9). B: b0 = (rows 2t, 2t+1,
// col g), b1 = (rows 2t+8, 2t+9, col g). C (float32): c0, c1 = (row g, cols 2t, 2t+1),
// c2, c3 = (row g+8, cols 2t, 2t+1). Here A's rows are output features, its cols input rows;
// B's rows input rows, its cols tokens; C's rows output features, its cols tokens.
//
// Packed layout (see gptq_mma.h). One int32 word holds the 8 codes of one lane's A fragment
// for one mma step: code i (bits 4i..4i+3) is output row g + 8 (i & 1) and input row
// 2t + 8 ((i >> 1) & 1) + (i >> 2) of the 16 x 16 tile. So the word's nibbles 0 and 4 are a0's
// two values, 1 and 5 a1's, 2 and 6 a2's, 3 and 7 a3's: shifting the word by 0, 4, 8, 12 and
// masking with 0x000f000f puts a pair in the low 4 bits of each 16-bit half. A lane's four
// consecutive words are the four mma steps of one 64-row superblock: one 16-byte load.
//
// Dequantization without conversions. A pair OR-ed into the mantissa of 1024 (float16,
// 0x6400) or 128 (bfloat16, 0x4300), whose ulp is 1, reads as (bias + q) in each half; minus
// (bias + z) is q - z exactly, times the group's scale rounds once: (q - z) * s as the
// reference dequantizes, in the activation dtype. Products accumulate in float32.
//
// Work split. A block is 4 warps; a warp owns `NT` adjacent 16-column tiles and the block's
// 8 * MT tokens, and walks its split of K one superblock at a time, loading the next
// superblock's words before computing on the current ones. K is split over blocks (grid.y)
// until the GPU is full; the splits' float32 partial sums go to a workspace and the last block
// of a tile to finish (an atomic counter) adds them up: one launch, no atomics on the output.

#include "gptq_mma.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ferrule_mma {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTokenTiles = 8;
constexpr int kMinSuperblocksPerSplit = 2;
constexpr uint32_t kPairMask = 0x000f000fu;

template <typename T>
struct Traits;

template <>
struct Traits<__half> {
  using V2 = __half2;
  static constexpr uint32_t kMagic = 0x64006400u;  // 1024 in each half
  static constexpr float kBias = 1024.0f;
  __device__ static __half from_float(float v) { return __float2half_rn(v); }
  __device__ static __half2 pair(__half v) { return __half2half2(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};

template <>
struct Traits<__nv_bfloat16> {
  using V2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43004300u;  // 128 in each half
  static constexpr float kBias = 128.0f;
  __device__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  __device__ static __nv_bfloat162 pair(__nv_bfloat16 v) { return __bfloat162bfloat162(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

// (a & b) | c in one instruction.
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

template <typename V2>
__device__ __forceinline__ V2 as_pair(uint32_t bits) {
  return *reinterpret_cast<V2*>(&bits);
}

template <typename V2>
__device__ __forceinline__ uint32_t as_bits(V2 pair) {
  return *reinterpret_cast<uint32_t*>(&pair);
}

// One group's constants for the two output rows (g and g + 8) a lane dequantizes.
template <typename T>
struct GroupParams {
  typename Traits<T>::V2 zero[2];   // bias + z, twice
  typename Traits<T>::V2 scale[2];  // s, twice
};

// The A fragment of one mma step from one packed word (see the top of the file).
template <typename T>
__device__ __forceinline__ void dequantize(uint32_t word, const GroupParams<T>& gp,
                                           uint32_t a[4]) {
  using V2 = typename Traits<T>::V2;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const V2 biased = as_pair<V2>(and_or(word >> (4 * i), kPairMask, Traits<T>::kMagic));
    a[i] = as_bits(__hmul2(__hsub2(biased, gp.zero[i & 1]), gp.scale[i & 1]));
  }
}

template <typename T>
__device__ __forceinline__ void mma(float c[4], const uint32_t a[4], const uint32_t b[2]);

template <>
__device__ __forceinline__ void mma<__half>(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float c[4], const uint32_t a[4],
                                                   const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Two adjacent activations of one token, x[k] and x[k + 1], as one register; through `perm`
// for act-order layers.
template <typename T>
__device__ __forceinline__ uint32_t activation_pair(const T* row, const int32_t* perm, int k) {
  if (perm == nullptr) return __ldg(reinterpret_cast<const uint32_t*>(row + k));
  const uint32_t low = __ldg(reinterpret_cast<const unsigned short*>(row + __ldg(perm + k)));
  const uint32_t high = __ldg(reinterpret_cast<const unsigned short*>(row + __ldg(perm + k + 1)));
  return low | (high << 16);
}

// Superblocks of x staged in shared memory at a time: 512 rows of K for one or two token
// tiles, fewer for more tokens (17 KB at most).
template <int MT>
constexpr int kChunk = MT <= 2 ? 8 : 16 / MT;

// A group's scale and zero point for the two output rows of a lane, as loaded (converted to
// GroupParams once they arrive, so the loads overlap the previous superblock's work).
template <typename T>
struct RawParams {
  T scale[2];
  uint8_t zero[2];
};

template <typename T>
__device__ __forceinline__ RawParams<T> load_params(const Problem& p, int group, int row) {
  const T* scales = static_cast<const T*>(p.scales);
  RawParams<T> raw;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int at = group * p.N + row + 8 * h;
    raw.scale[h] = __ldg(scales + at);
    raw.zero[h] = p.zeros != nullptr ? __ldg(p.zeros + at) : uint8_t{8};
  }
  return raw;
}

template <typename T>
__device__ __forceinline__ GroupParams<T> to_params(const RawParams<T>& raw) {
  GroupParams<T> params;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const float biased = Traits<T>::kBias + static_cast<float>(raw.zero[h]);
    params.zero[h] = Traits<T>::pair(Traits<T>::from_float(biased));
    params.scale[h] = Traits<T>::pair(raw.scale[h]);
  }
  return params;
}

template <typename T>
__device__ __forceinline__ GroupParams<T> group_params(const Problem& p, int group, int row) {
  return to_params<T>(load_params<T>(p, group, row));
}

template <typename T, int MT, int NT>
__global__ void __launch_bounds__(kThreads) gptq_mma_kernel(const Problem p) {
  constexpr int kRowsX = MT * kTokens;
  constexpr int kWordsX = kChunk<MT> * kSuperK / 2 + 4;  // a row of pairs, padded: no bank conflicts
  __shared__ uint32_t xs[kRowsX][kWordsX];
  __shared__ bool last_block;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int tiles_n = p.N / kTileN;
  const int first_tile = (blockIdx.x * kWarps + warp) * NT;
  const int superblocks = p.K / kSuperK;
  const int kb_begin = blockIdx.y * p.kb_per_split;
  const int kb_end = min(kb_begin + p.kb_per_split, superblocks);
  const int m0 = blockIdx.z * kRowsX;
  const int tokens = min(kRowsX, p.M - m0);
  const int4* __restrict__ packed = reinterpret_cast<const int4*>(p.packed);
  // Groups of 64 rows or more: one group a superblock, its parameters loaded a superblock
  // ahead. Groups of 16 or 32 rows: loaded at each step that starts a group.
  const bool per_step = (p.group_size & (kSuperK - 1)) != 0;
  auto group_of = [&](int k) { return p.group_shift >= 0 ? k >> p.group_shift : k / p.group_size; };

  bool tile_ok[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) tile_ok[nt] = first_tile + nt < tiles_n;

  float acc[NT][MT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[nt][mt][c] = 0.0f;
    }
  }

  int4 words[NT];
  int4 next[NT];
  RawParams<T> raw[NT];
  RawParams<T> raw_next[NT];
  GroupParams<T> params[NT];
  auto prefetch = [&](int kb, int4 (&dst)[NT], RawParams<T> (&dst_params)[NT]) {
    if (kb >= kb_end) return;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (!tile_ok[nt]) continue;
      const int tile = first_tile + nt;
      dst[nt] = __ldcs(packed + (static_cast<int64_t>(tile) * superblocks + kb) * 32 + lane);
      if (!per_step) dst_params[nt] = load_params<T>(p, group_of(kb * kSuperK), tile * kTileN + g);
    }
  };
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) words[nt] = next[nt] = make_int4(0, 0, 0, 0);
  prefetch(kb_begin, words, raw);

  for (int chunk = kb_begin; chunk < kb_end; chunk += kChunk<MT>) {
    const int chunk_end = min(chunk + kChunk<MT>, kb_end);
    // Stage x[tokens][chunk's rows of K] as pairs (gathered through perm for act-order).
    __syncthreads();  // the previous chunk is consumed
    const int pairs = (chunk_end - chunk) * kSuperK / 2;
    for (int i = threadIdx.x; i < tokens * pairs; i += kThreads) {
      const int m = i / pairs;
      const int pair = i - m * pairs;
      const T* row = static_cast<const T*>(p.x) + static_cast<int64_t>(m0 + m) * p.x_stride_m;
      xs[m][pair] = activation_pair<T>(row, p.perm, chunk * kSuperK + 2 * pair);
    }
    __syncthreads();

    for (int kb = chunk; kb < chunk_end; ++kb) {
      prefetch(kb + 1, next, raw_next);
      if (!per_step) {
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) params[nt] = to_params<T>(raw[nt]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int k = kb * kSuperK + j * 16;
        if (per_step && (j == 0 || (k & (p.group_size - 1)) == 0 || p.group_shift < 0)) {
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            if (tile_ok[nt]) params[nt] = group_params<T>(p, group_of(k), (first_tile + nt) * kTileN + g);
          }
        }
        // B fragments: tokens mt * 8 + g, rows 2t, 2t + 1 and 2t + 8, 2t + 9 of the step.
        const int pair = (kb - chunk) * (kSuperK / 2) + j * 8 + t;
        uint32_t b[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const bool ok = mt * kTokens + g < tokens;
          b[mt][0] = ok ? xs[mt * kTokens + g][pair] : 0u;
          b[mt][1] = ok ? xs[mt * kTokens + g][pair + 4] : 0u;
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          if (!tile_ok[nt]) continue;  // uniform across the warp
          const int w = j == 0 ? words[nt].x : j == 1 ? words[nt].y : j == 2 ? words[nt].z : words[nt].w;
          uint32_t a[4];
          dequantize<T>(static_cast<uint32_t>(w), params[nt], a);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            if (mt * kTokens < tokens) mma<T>(acc[nt][mt], a, b[mt]);  // uniform: skip empty tiles
          }
        }
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        words[nt] = next[nt];
        raw[nt] = raw_next[nt];
      }
    }
  }

  // c0, c1: feature g, tokens 2t, 2t + 1; c2, c3: feature g + 8, the same tokens.
  const int splits = gridDim.y;
  T* __restrict__ out = static_cast<T*>(p.out);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    if (!tile_ok[nt]) continue;
    const int n = (first_tile + nt) * kTileN + g;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int m = m0 + mt * kTokens + 2 * t + (c & 1);
        if (m >= p.M) continue;
        const int64_t at = static_cast<int64_t>(m) * p.N + n + 8 * (c >> 1);
        if (splits == 1) {
          out[at] = Traits<T>::store(acc[nt][mt][c]);
        } else {
          p.workspace[static_cast<int64_t>(blockIdx.y) * p.M * p.N + at] = acc[nt][mt][c];
        }
      }
    }
  }
  if (splits == 1) return;

  // Split-K: the last block of this tile to arrive adds the splits' partial sums.
  __threadfence();
  __syncthreads();
  const int tile = blockIdx.z * gridDim.x + blockIdx.x;
  if (threadIdx.x == 0) last_block = atomicAdd(p.counters + tile, 1) == splits - 1;
  __syncthreads();
  if (!last_block) return;
  constexpr int kCols = kWarps * NT * kTileN;
  constexpr int kRows = MT * kTokens;
  const int n0 = blockIdx.x * kCols;
  for (int i = threadIdx.x; i < kRows * kCols; i += kThreads) {
    const int m = m0 + i / kCols;
    const int n = n0 + i % kCols;
    if (m >= p.M || n >= p.N) continue;
    const int64_t at = static_cast<int64_t>(m) * p.N + n;
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) sum += __ldcg(p.workspace + static_cast<int64_t>(s) * p.M * p.N + at);
    out[at] = Traits<T>::store(sum);
  }
  if (threadIdx.x == 0) p.counters[tile] = 0;  // ready for the next launch
}

// W^T [N, K] from the packed layer: a warp dequantizes one 16 x 64 superblock into shared
// memory through the same fragments, then writes its 16 rows of 128 bytes with 16-byte stores.
template <typename T>
__global__ void __launch_bounds__(kThreads) gptq_mma_dequant_kernel(const Dequant d) {
  constexpr int kPad = 8;  // elements: rows start on different banks
  __shared__ __align__(16) T tile[kWarps][kTileN][kSuperK + kPad];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int superblocks = d.K / kSuperK;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (index >= static_cast<int64_t>(d.N / kTileN) * superblocks) return;  // no barrier below
  const int tile_n = static_cast<int>(index / superblocks);
  const int kb = static_cast<int>(index % superblocks);
  const int4 four = __ldcs(reinterpret_cast<const int4*>(d.packed) + index * 32 + lane);
  Problem p{};
  p.scales = d.scales;
  p.zeros = d.zeros;
  p.N = d.N;
  T(*rows)[kSuperK + kPad] = tile[warp];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int k = kb * kSuperK + j * 16;
    const GroupParams<T> params = group_params<T>(p, k / d.group_size, tile_n * kTileN + g);
    const int w = j == 0 ? four.x : j == 1 ? four.y : j == 2 ? four.z : four.w;
    uint32_t a[4];
    dequantize<T>(static_cast<uint32_t>(w), params, a);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i & 1);
      const int col = j * 16 + 2 * t + 8 * (i >> 1);
      *reinterpret_cast<uint32_t*>(&rows[row][col]) = a[i];
    }
  }
  __syncwarp();
  T* out = static_cast<T*>(d.out);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int chunk = i * 32 + lane;  // 16 rows x 8 chunks of 8 elements
    const int row = chunk >> 3;
    const int col = (chunk & 7) * 8;
    const int64_t at = static_cast<int64_t>(tile_n * kTileN + row) * d.K + kb * kSuperK + col;
    *reinterpret_cast<int4*>(out + at) = *reinterpret_cast<const int4*>(&rows[row][col]);
  }
}

template <typename T, int MT, int NT>
struct Kernel {
  static int occupancy() {
    static const int blocks = [] {
      int n = 0;
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gptq_mma_kernel<T, MT, NT>, kThreads,
                                                        0) != cudaSuccess) {
        cudaGetLastError();
        n = 1;
      }
      return n > 0 ? n : 1;
    }();
    return blocks;
  }
  static cudaError_t launch(const Problem& p, cudaStream_t stream) {
    const int cols = kWarps * NT * kTileN;
    const dim3 grid((p.N + cols - 1) / cols, p.splits, (p.M + MT * kTokens - 1) / (MT * kTokens));
    gptq_mma_kernel<T, MT, NT><<<grid, kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
};

// Instantiated: (MT, NT) = (1, 4), (1, 2), (2, 2), (4, 2), (8, 2). More tokens hold more
// accumulators, so fewer columns a warp (ptxas: 109 registers at (1, 4), 200 at (8, 2)).
template <typename T, typename F>
auto dispatch_mt(const Problem& p, F&& f) {
  switch (p.token_tiles) {
    case 1: return p.n_tiles == 4 ? f(Kernel<T, 1, 4>{}) : f(Kernel<T, 1, 2>{});
    case 2: return f(Kernel<T, 2, 2>{});
    case 4: return f(Kernel<T, 4, 2>{});
    default: return f(Kernel<T, kMaxTokenTiles, 2>{});
  }
}

template <typename F>
auto dispatch(const Problem& p, F&& f) {
  if (p.bf16) return dispatch_mt<__nv_bfloat16>(p, f);
  return dispatch_mt<__half>(p, f);
}

}  // namespace

int64_t output_tiles(const Problem& p) {
  const int cols = kWarps * p.n_tiles * kTileN;
  const int tokens = p.token_tiles * kTokens;
  return static_cast<int64_t>((p.N + cols - 1) / cols) * ((p.M + tokens - 1) / tokens);
}

void plan(Problem& p, int num_sms, int64_t counter_capacity) {
  if (p.group_size > p.K) p.group_size = p.K;
  p.group_shift = -1;
  for (int shift = 0; shift < 31; ++shift) {
    if ((1 << shift) == p.group_size) p.group_shift = shift;
  }
  p.token_tiles = p.M <= 8 ? 1 : p.M <= 16 ? 2 : p.M <= 32 ? 4 : kMaxTokenTiles;
  if (p.token_tiles > 1 || (p.n_tiles != 2 && p.n_tiles != 4)) p.n_tiles = p.token_tiles == 1 ? 4 : 2;
  const int superblocks = p.K / kSuperK;
  const int64_t tiles = output_tiles(p);
  int64_t splits = p.splits;
  if (splits < 1) {
    const int64_t resident =
        static_cast<int64_t>(num_sms) * dispatch(p, [](auto k) { return decltype(k)::occupancy(); });
    splits = tiles < resident ? resident / tiles : 1;  // about one wave of blocks
    const int64_t most = superblocks / kMinSuperblocksPerSplit;
    splits = splits < most ? splits : most;
  }
  if (tiles > counter_capacity) splits = 1;
  splits = splits > 1 ? splits : 1;
  p.kb_per_split = static_cast<int>((superblocks + splits - 1) / splits);
  p.splits = (superblocks + p.kb_per_split - 1) / p.kb_per_split;
  if (p.splits < 1) p.splits = 1;
}

cudaError_t launch(const Problem& p, cudaStream_t stream) {
  return dispatch(p, [&](auto k) { return decltype(k)::launch(p, stream); });
}

cudaError_t launch_dequant(const Dequant& d, cudaStream_t stream) {
  const int64_t superblocks = static_cast<int64_t>(d.N / kTileN) * (d.K / kSuperK);
  const dim3 grid(static_cast<unsigned>((superblocks + kWarps - 1) / kWarps));
  if (d.bf16) {
    gptq_mma_dequant_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(d);
  } else {
    gptq_mma_dequant_kernel<__half><<<grid, kThreads, 0, stream>>>(d);
  }
  return cudaGetLastError();
}

}  // namespace ferrule_mma
