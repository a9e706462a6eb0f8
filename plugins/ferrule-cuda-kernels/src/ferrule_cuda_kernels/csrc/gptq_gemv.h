// The interface between the torch binding (gptq_gemv.cpp) and the kernels (gptq_gemv.cu).
//
// The .cu file includes no torch header: it takes raw pointers, so nvcc compiles it quickly
// and it can be checked without torch. The binding validates the tensors, allocates the
// output and the split-K workspace, and passes the current CUDA stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ferrule_gemv {

// y[M, N] = x[M, K] @ W[K, N] for a GPTQ layer whose rows are sorted by group (g = k / group).
struct Problem {
  const void* x;         // [M, K] float16 or bfloat16, any strides (elements)
  int64_t x_stride_m;
  int64_t x_stride_k;
  const int32_t* perm;   // [K]: row k of the weight reads x[:, perm[k]]; nullptr: identity
  const int32_t* qweight;  // [K * bits / 32, N], packed along K (GPTQ)
  const int32_t* qzeros;   // [G, N * bits / 32], packed along N (gptq_v2: the true zero)
  const void* scales;      // [G, N], the activation dtype
  void* out;               // [M, N] contiguous, the activation dtype
  float* workspace;        // [splits, M, N] float32 partial sums, when splits > 1 (and not
                           // in_clusters)
  int32_t* counters;       // one per output tile, zero between launches (the kernel resets them)
  int M;
  int K;
  int N;
  int group_size;  // rows per group; K (or more) for one group (per-channel)
  int group_shift;  // filled by plan(): log2(group_size) for a power of two, else -1
  int bits;        // 4 or 8
  bool bf16;       // activations (and scales) are bfloat16, else float16
  bool pdl;        // launch with programmatic dependent launch (sm_90 and later)
  bool has_clusters;  // the device runs thread block clusters (sm_90 and later)
  // Filled by plan():
  int tile_rows;        // rows of x one block serves: 1, 2, 4 or 8
  int splits;           // blocks sharing one output tile along K (split-K)
  int units_per_split;  // 4-word units of K each split reads
  // cuda-gptq-mma only (plan_mma; set warps_k and splits beforehand to force them, 0: choose):
  int tokens;   // rows of x one block serves: 8, 16, 32 or 64 (cuda-gptq-wgmma: 16 to 256)
  int loads;    // 16-byte weight loads a thread makes per unit: 1 or 2 (32 columns each a warp)
  int warps_k;  // warps of a block that split its K range (1, 2, 4, 8); the rest split columns
  // cuda-gptq-wgmma only: split-K finished in thread block clusters (sm_90): 0 never, 1 where
  // the plan estimates it faster, 2 wherever it can (benchmarks); set by the caller. The
  // plan's choice: in_clusters (no workspace, no counters).
  int clusters;
  bool in_clusters;
  // cuda-gptq-wgmma only: m64 tiles a consumer multiplies, 1 or 2 (128 or 256 columns a
  // block); set with tokens to force it (0: the plan chooses).
  int tiles;
};

// Rows of K one unit covers: 4 packed words, so 32 at 4 bits and 16 at 8 bits. A group must
// be a whole number of units (scales and zeros are loaded once per unit).
inline int unit_rows(int bits) { return 4 * (32 / bits); }

// Both plans start here: group_size clipped to K, group_shift = log2(group_size) for a power
// of two (the kernels find a row's group with a shift) or -1 (a division).
inline void plan_groups(Problem& p) {
  if (p.group_size > p.K) p.group_size = p.K;
  p.group_shift = -1;
  for (int shift = 0; shift < 31; ++shift) {
    if ((1 << shift) == p.group_size) p.group_shift = shift;
  }
}

// Choose group_shift, tile_rows, splits and units_per_split for a device of `num_sms`
// multiprocessors; splits stays 1 unless `counter_capacity` counters cover every output tile.
void plan(Problem& p, int num_sms, int64_t counter_capacity);

// Launch on `stream`; returns the launch's error (cudaSuccess when it was queued).
cudaError_t launch(const Problem& p, cudaStream_t stream);

// Whether cuda-gptq-gemv's caller should gather x[:, perm] first (gather_rows, then launch
// without perm): act-order float16 rows, from two rows at any K (the kernel's own gather
// reads x through perm from global memory there) and one row of long K (where it would have
// every block copy the whole row to shared memory for its share of K).
bool gemv_gathers_first(const Problem& p);

// cuda-gptq-mma (gptq_mma.cu): float16 x, 4-bit codes, tensor cores (sm_80+). Chooses
// group_shift, tokens, loads, warps_k (unless set), splits (unless set) and units_per_split.
void plan_mma(Problem& p, int num_sms, int64_t counter_capacity);
cudaError_t launch_mma(const Problem& p, cudaStream_t stream);
// out [M, K] = x[:, perm] (float16; without perm, a contiguous copy of x): act-order layers
// gather x once before launch_mma, which then reads `out` without perm. num_sms sizes the grid.
cudaError_t gather_rows(const Problem& p, void* out, int num_sms, cudaStream_t stream);

// cuda-gptq-wgmma (gptq_wgmma.cu): float16 x without perm, its rows contiguous in K, 16-byte
// aligned and a multiple of 16 bytes apart; or, with gather_in_kernel for up to 4 rows, with a
// 16-byte aligned perm, which the kernel's producer warps gather through themselves (x of any
// strides); 4-bit codes, K a multiple of 64, N of 32 and groups of a multiple of 64 rows,
// 16-byte aligned tensors (TMA), Hopper's wgmma (sm_90a). Chooses group_shift, tokens (unless
// set: 16, 32, 64, 128 or 256), tiles (unless set with tokens: 1 or 2 at 64 and 128 rows, 2
// below, 1 at 256), splits (unless set) and units_per_split (steps of 64 rows of K a split).
void plan_wgmma(Problem& p, int num_sms, int64_t counter_capacity);
cudaError_t launch_wgmma(const Problem& p, cudaStream_t stream);
// Blocks of `tokens`-row tiles of `tiles` m64 tiles a consumer the device holds at once, in
// clusters of `splits` when above 1 (0 where they cannot finish in clusters).
int64_t wgmma_resident(int tokens, int tiles, int splits, int num_sms);
// Whether cuda-gptq-wgmma's caller should run gather_rows first (x[:, perm], or without perm a
// contiguous copy) and launch without perm: act-order rows unless the kernel gathers them
// (gather_in_kernel, up to 4 rows, perm 16-byte aligned), and x that TMA cannot read as it is.
bool wgmma_gathers_first(const Problem& p, bool gather_in_kernel);

}  // namespace ferrule_gemv
