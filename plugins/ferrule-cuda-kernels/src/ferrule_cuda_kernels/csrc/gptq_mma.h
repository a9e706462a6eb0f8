// The interface between the torch binding (gptq_mma.cpp) and the kernels (gptq_mma.cu) of
// cuda-gptq-mma. Like gptq_gemv.h: raw pointers only, no torch header.
//
// The weight is a 4-bit GPTQ layer repacked once (by ferrule_cuda_kernels.mma_pack) so that
// each lane of a warp loads, with one 16-byte load, the A-operand fragments of four
// m16n8k16 tensor-core steps: `packed` is int32 [N / 16, K / 64, 32, 4], word (t, b, l, j)
// holding the 8 codes lane l needs for output rows 16t..16t+15 and input rows
// 64b + 16j .. 64b + 16j + 15 (see the top of gptq_mma.cu for which code sits where).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ferrule_mma {

constexpr int kTileN = 16;   // output features of one mma tile (its A operand's rows)
constexpr int kSuperK = 64;  // input rows of one packed superblock: 4 mma steps of 16
constexpr int kTokens = 8;   // tokens of one mma tile (its B operand's columns)

// y[M, N] = x[M, K] @ W[K, N] for a layer whose rows are sorted by group (g = k / group_size).
struct Problem {
  const void* x;  // [M, K] float16 or bfloat16, unit stride along K, rows 4-byte aligned
  int64_t x_stride_m;
  const int32_t* perm;    // [K]: row k of the weight reads x[:, perm[k]]; nullptr: identity
  const int32_t* packed;  // [N / 16, K / 64, 32, 4]
  const void* scales;     // [G, N], the activation dtype
  const uint8_t* zeros;   // [G, N] zero points; nullptr: every zero point is 8
  void* out;              // [M, N] contiguous, the activation dtype
  float* workspace;       // [splits, M, N] float32 partial sums, when splits > 1
  int32_t* counters;      // one per output tile, zero between launches (the kernel resets them)
  int M;
  int K;  // a multiple of 64
  int N;  // a multiple of 16
  int group_size;   // rows per group, a multiple of 16, or K for one group
  int group_shift;  // filled by plan(): log2(group_size) for a power of two, else -1
  bool bf16;
  // Filled by plan() (a nonzero n_tiles or splits given on entry is kept, for tuning):
  int token_tiles;   // 8-token mma tiles one block serves: 1, 2, 4 or 8
  int n_tiles;       // 16-column mma tiles one warp serves: 4 or 2 at one token tile, else 2
  int splits;        // blocks sharing one output tile along K (split-K)
  int kb_per_split;  // superblocks of 64 rows each split reads
};

// Output tiles (blocks along N times blocks along M) that `counters` must cover.
int64_t output_tiles(const Problem& p);

void plan(Problem& p, int num_sms, int64_t counter_capacity);

cudaError_t launch(const Problem& p, cudaStream_t stream);

// out[N, K] = W^T in the activation dtype, from the packed layer: the dense weight that large
// batches hand to cuBLAS.
struct Dequant {
  const int32_t* packed;
  const void* scales;
  const uint8_t* zeros;
  void* out;
  int K;
  int N;
  int group_size;
  bool bf16;
};

cudaError_t launch_dequant(const Dequant& d, cudaStream_t stream);

}  // namespace ferrule_mma
