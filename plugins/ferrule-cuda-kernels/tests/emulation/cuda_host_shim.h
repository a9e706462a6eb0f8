// Runs the kernels of gptq_gemv.cu, gptq_mma.cu and gptq_wgmma.cu on the host, for tests on
// machines without a GPU.
//
// One block at a time (or one thread block cluster, its blocks at once); its threads (256 or
// 384) are std::threads, __shared__ variables are function statics (shared by the block's
// threads; a kernel run in clusters keeps one copy a rank), __syncthreads is a barrier of the
// block (named barrier 1: of its warpgroups but the first; barrier.cluster of the cluster), and
// __shfl_xor_sync and mma.sync exchange through slots per lane with a barrier of the warp
// (wgmma: of the warpgroup; a wgmma runs when wgmma.wait_group retires its group, as late as
// the device may run it). cp.async copies at once; an mbarrier is a word of shared memory
// (pending arrivals, expected arrivals, phase, pending bytes) that threads update atomically and
// spin on; a TMA box copies at once and completes its bytes.
// Loads are plain reads; atomics are the compiler's. The half and bfloat16 conversions are
// CUDA's own host implementations, and x86 floats keep denormals, as the kernels (built
// -ftz=false) do. kernel_common.cuh's launch_kernel calls emulate_launch below.
#pragma once

#define FERRULE_GEMV_PDL 0  // plain launches: no programmatic dependent launch
#define FERRULE_GEMV_EMULATED 1

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __grid_constant__
#define __grid_constant__
#undef __forceinline__
#define __forceinline__ inline

namespace emulation {
constexpr int kMaxThreads = 384;
constexpr int kWarps = kMaxThreads / 32;
constexpr int kMaxCluster = 8;
struct MmaSlot {
  uint32_t a[4];
  uint32_t b[2];
};
// What the threads of one block share besides its __shared__ variables: its barriers and the
// slots through which shuffles and (wg)mma fragments are exchanged.
struct Block {
  explicit Block(int threads)
      : all(threads),
        named(std::max(threads - 128, 1)),
        named_threads(threads - 128) {
    for (int w = 0; w < threads / 32; ++w) warp[w] = std::make_unique<std::barrier<>>(32);
    for (int w = 0; w < threads / 128; ++w) group[w] = std::make_unique<std::barrier<>>(128);
  }
  std::barrier<> all;
  std::barrier<> named;  // of all warpgroups but the first
  int named_threads;
  std::unique_ptr<std::barrier<>> warp[kWarps];
  std::unique_ptr<std::barrier<>> group[kWarps / 4];
  float warp_slots[kWarps][32];
  MmaSlot mma_slots[kWarps][32];
  uint32_t wgmma_slots[kWarps / 4][128][4];
};
inline thread_local Block* block = nullptr;              // this thread's block
inline thread_local std::barrier<>* cluster = nullptr;   // of every thread of its cluster
}  // namespace emulation

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 gridDim;

inline void __syncthreads() { emulation::block->all.arrive_and_wait(); }
// bar.sync 1, count: the device's named barrier, here only ever the threads of every warpgroup
// but the first (gptq_wgmma.cu's consumers).
inline void emulated_named_barrier(int count) {
  if (count != emulation::block->named_threads) std::abort();
  emulation::block->named.arrive_and_wait();
}
// barrier.cluster: every thread of the cluster's blocks (which run at once).
inline void emulated_cluster_barrier() { emulation::cluster->arrive_and_wait(); }
inline void __syncwarp() { emulation::block->warp[threadIdx.x >> 5]->arrive_and_wait(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline float __shfl_xor_sync(unsigned, float value, int offset) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  emulation::Block& b = *emulation::block;
  b.warp_slots[warp][lane] = value;
  b.warp[warp]->arrive_and_wait();
  const float other = b.warp_slots[warp][lane ^ offset];
  b.warp[warp]->arrive_and_wait();
  return other;
}
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}
using std::min;
// CUDA's headers have no host __hfma2: the exact a * b + c (a double holds it) rounded once.
inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) {
  const float2 fa = __half22float2(a), fb = __half22float2(b), fc = __half22float2(c);
  return __halves2half2(__double2half(static_cast<double>(fa.x) * fb.x + fc.x),
                        __double2half(static_cast<double>(fa.y) * fb.y + fc.y));
}

// mma.sync.m16n8k16.row.col.f32.f16.f16.f32 for one lane: every lane posts its A and B
// fragments, then computes its own 4 sums from the warp's (PTX ISA fragment layouts: lane
// 4 g + c holds A rows g and g + 8 at columns 2 c, 2 c + 1 and 2 c + 8, 2 c + 9, B column g at
// rows 2 c, 2 c + 1, 2 c + 8, 2 c + 9, and D rows g, g + 8 at columns 2 c, 2 c + 1).
inline void emulated_mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  emulation::Block& block = *emulation::block;
  auto& mine = block.mma_slots[warp][lane];
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  block.warp[warp]->arrive_and_wait();
  auto half_of = [](uint32_t word, int which) {
    __half h;
    const uint16_t bits = static_cast<uint16_t>(which ? word >> 16 : word & 0xFFFFu);
    std::memcpy(&h, &bits, sizeof h);
    return __half2float(h);
  };
  auto a_at = [&](int row, int k) {
    const auto& slot = block.mma_slots[warp][(row % 8) * 4 + (k % 8) / 2];
    return half_of(slot.a[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
  };
  auto b_at = [&](int k, int col) {
    const auto& slot = block.mma_slots[warp][col * 4 + (k % 8) / 2];
    return half_of(slot.b[k >= 8 ? 1 : 0], k % 2);
  };
  const int g = lane >> 2, c = lane & 3;
  for (int e = 0; e < 4; ++e) {
    const int row = g + (e >= 2 ? 8 : 0);
    const int col = 2 * c + (e % 2);
    float sum = d[e];
    for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
    d[e] = sum;
  }
  block.warp[warp]->arrive_and_wait();
}

// wgmma.mma_async m64nNk16, f32 += f16 x f16 (or = with scale-d 0), A from registers, B K-major in shared memory with
// the 128-byte swizzle, for one thread of a warpgroup. Asynchronous as on the device: a wgmma
// is queued when issued, its group when committed, and it runs when wgmma.wait_group retires
// its group, reading its A registers, its B tile and its sums then; a kernel that reuses a
// fragment, frees a stage or reads a sum before waiting for the wgmma gets a wrong result.
namespace emulation {
struct Wgmma {
  float* d;
  int n;
  const uint32_t* a;
  uint64_t desc;
  const char* base;
  bool accumulate;  // scale-d: 0 starts the sums from zero
};
inline thread_local std::vector<Wgmma> wgmma_open;                 // issued, not committed
inline thread_local std::vector<std::vector<Wgmma>> wgmma_groups;  // committed, oldest first
}  // namespace emulation

// Runs one queued wgmma for this thread: every thread posts its A fragment, then computes its
// own N / 2 sums (PTX ISA: warp w of the warpgroup holds A rows 16 w .. 16 w + 15
// as mma.sync's m16n8k16 A, and D rows 16 w + g, 16 w + g + 8 at columns 8 i + 2 c, + 1).
// B element (k, n) is at byte start + (n / 8) * stride + (n % 8) * 128 + 2 k of the descriptor's
// start address and stride, whose bits 4-6 are then XOR-ed with bits 7-9; addresses are offsets
// in the block's shared buffer `base` (aligned to 1024 bytes like the device's).
inline void emulated_wgmma_run(float* d, int n, const uint32_t* a, uint64_t desc,
                               const char* base, bool accumulate) {
  const int t = threadIdx.x & 127;
  const int group = threadIdx.x >> 7;
  emulation::Block& block = *emulation::block;
  std::memcpy(block.wgmma_slots[group][t], a, 4 * sizeof(uint32_t));
  block.group[group]->arrive_and_wait();
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFFu) << 4;
  const uint32_t stride = static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4;
  if ((desc >> 62) != 1) std::abort();  // only the 128-byte swizzle is emulated
  auto half_at = [](uint32_t word, int which) {
    __half h;
    const uint16_t bits = static_cast<uint16_t>(which ? word >> 16 : word & 0xFFFFu);
    std::memcpy(&h, &bits, sizeof h);
    return __half2float(h);
  };
  auto a_at = [&](int row, int k) {
    const int lane = (row % 8) * 4 + (k % 8) / 2;
    const uint32_t* slot = block.wgmma_slots[group][32 * (row / 16) + lane];
    return half_at(slot[(row % 16 >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k % 2);
  };
  auto b_at = [&](int k, int col) {
    uint32_t byte = start + (col / 8) * stride + (col % 8) * 128 + 2 * k;
    byte ^= ((byte >> 7) & 7u) << 4;
    __half h;
    std::memcpy(&h, base + byte, sizeof h);
    return __half2float(h);
  };
  const int warp = t >> 5, lane = t & 31, g = lane >> 2, c = lane & 3;
  for (int i = 0; i < n / 8; ++i) {
    for (int e = 0; e < 4; ++e) {
      const int row = 16 * warp + g + (e >= 2 ? 8 : 0);
      const int col = 8 * i + 2 * c + (e % 2);
      float sum = 0.0f;
      for (int k = 0; k < 16; ++k) sum += a_at(row, k) * b_at(k, col);
      d[4 * i + e] = (accumulate ? d[4 * i + e] : 0.0f) + sum;
    }
  }
  block.group[group]->arrive_and_wait();
}

// mbarrier: bits 0-11 the arrivals still pending in this phase, 12-23 the arrivals a phase
// expects, bit 24 the phase's parity, 32-63 the transaction bytes still pending (TMA). A phase
// completes when both pending counts reach zero.
inline void emulated_barrier_update(uint64_t* bar, int arrivals, int64_t bytes) {
  uint64_t old = __atomic_load_n(bar, __ATOMIC_SEQ_CST);
  uint64_t next;
  do {
    const int64_t pending = static_cast<int64_t>(old & 0xFFFu) - arrivals;
    const uint64_t count = (old >> 12) & 0xFFFu;
    const int64_t tx = static_cast<int64_t>(static_cast<int32_t>(old >> 32)) + bytes;
    uint64_t phase = (old >> 24) & 1u;
    if (pending < 0) std::abort();  // more arrivals than the phase expects
    uint64_t left = static_cast<uint64_t>(pending);
    if (pending == 0 && tx == 0) {
      phase ^= 1u;
      left = count;
    }
    next = left | (count << 12) | (phase << 24) |
           (static_cast<uint64_t>(static_cast<uint32_t>(static_cast<int32_t>(tx))) << 32);
  } while (!__atomic_compare_exchange_n(bar, &old, next, false, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST));
}
inline void emulated_barrier_init(uint64_t* bar, uint32_t count) {
  __atomic_store_n(bar, (uint64_t{count} << 12) | count, __ATOMIC_SEQ_CST);
}
inline void emulated_barrier_arrive(uint64_t* bar, uint32_t expect_bytes = 0) {
  emulated_barrier_update(bar, 1, expect_bytes);
}
// Returns once the phase of `parity` has completed (the current phase has the other parity).
inline void emulated_barrier_wait(uint64_t* bar, uint32_t parity) {
  while (((__atomic_load_n(bar, __ATOMIC_SEQ_CST) >> 24) & 1u) == parity) std::this_thread::yield();
}

// A tensor map (TMA) of 2 or 3 dimensions: dim0 elements of `element` bytes a row, dim1 rows
// `row_bytes` apart, dim2 planes `plane_bytes` apart (any order of strides); a box of box0 x
// box1 x box2 elements lands row after row (plane after plane), each row's 16-byte chunk q at
// chunk q ^ (row % 8) of its 128-byte line when `swizzle` (the 128-byte swizzle; rows of 128
// bytes), with zeros outside the tensor.
struct EmulatedTensorMap {
  const char* base;
  uint64_t dim0, dim1, row_bytes;
  uint32_t box0, box1, element;
  bool swizzle;
  uint64_t dim2 = 1, plane_bytes = 0;
  uint32_t box2 = 1;
};
inline void emulated_tma_load(char* dst, const EmulatedTensorMap& m, int c0, int c1, int c2,
                              uint64_t* bar) {
  const uint32_t row = m.box0 * m.element;
  for (uint32_t z = 0; z < m.box2; ++z) {
    for (uint32_t r = 0; r < m.box1; ++r) {
      const uint32_t line = z * m.box1 + r;
      for (uint32_t e = 0; e < m.box0; ++e) {
        uint32_t at = line * row + e * m.element;
        if (m.swizzle) at ^= (line % 8) << 4;
        const uint64_t i0 = static_cast<uint64_t>(c0) + e, i1 = static_cast<uint64_t>(c1) + r;
        const uint64_t i2 = static_cast<uint64_t>(c2) + z;
        if (i0 < m.dim0 && i1 < m.dim1 && i2 < m.dim2) {
          std::memcpy(dst + at, m.base + i2 * m.plane_bytes + i1 * m.row_bytes + i0 * m.element,
                      m.element);
        } else {
          std::memset(dst + at, 0, m.element);
        }
      }
    }
  }
  emulated_barrier_update(bar, 0, -static_cast<int64_t>(row) * m.box1 * m.box2);
}

inline void emulated_wgmma(float* d, int n, const uint32_t (&a)[4], uint64_t desc,
                           const char* base, bool accumulate) {
  emulation::wgmma_open.push_back({d, n, a, desc, base, accumulate});
}
inline void emulated_wgmma_commit() {
  emulation::wgmma_groups.push_back(std::move(emulation::wgmma_open));
  emulation::wgmma_open.clear();
}
// wgmma.wait_group: runs the oldest groups until at most `pending` are left.
inline void emulated_wgmma_wait(int pending) {
  auto& groups = emulation::wgmma_groups;
  while (static_cast<int>(groups.size()) > pending) {
    for (const auto& w : groups.front()) emulated_wgmma_run(w.d, w.n, w.a, w.desc, w.base, w.accumulate);
    groups.erase(groups.begin());
  }
}

// Replaces `kernel<<<grid, threads, shared, stream>>>(args...)`. One block at a time, or with
// clusters of `cluster_y` blocks along y (above 1), one cluster at a time, its blocks at once
// (each rank's shared memory apart: see cluster_rank). Each block's threads are threads.
template <class Kernel, class... Args>
void emulate_launch(Kernel kernel, dim3 grid, int threads_per_block, int cluster_y,
                    const Args&... args) {
  if (threads_per_block % 128 || threads_per_block > emulation::kMaxThreads) std::abort();
  if (cluster_y < 1 || cluster_y > emulation::kMaxCluster || grid.y % cluster_y) std::abort();
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y0 = 0; y0 < grid.y; y0 += cluster_y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        std::vector<std::unique_ptr<emulation::Block>> blocks;
        for (int r = 0; r < cluster_y; ++r) {
          blocks.push_back(std::make_unique<emulation::Block>(threads_per_block));
        }
        std::barrier<> cluster(threads_per_block * cluster_y);
        std::vector<std::thread> threads;
        for (int r = 0; r < cluster_y; ++r) {
          for (int t = 0; t < threads_per_block; ++t) {
            threads.emplace_back([&, r, t] {
              emulation::block = blocks[r].get();
              emulation::cluster = &cluster;
              threadIdx = dim3(static_cast<unsigned>(t), 0, 0);
              blockIdx = dim3(x, y0 + r, z);
              kernel(args...);
              // A kernel must wait for its wgmmas before it ends.
              if (!emulation::wgmma_open.empty() || !emulation::wgmma_groups.empty()) std::abort();
            });
          }
        }
        for (auto& thread : threads) thread.join();
      }
    }
  }
}

// Clusters of `size` blocks resident at once, where `fallback` is the GPU's blocks over `size`:
// for 132 blocks (66 emulated multiprocessors of two), what an H200 reports for the wgmma
// kernel (one block a multiprocessor; a cluster's blocks share a GPC, so 117 blocks in clusters
// of 3, 120 of 4, 102 of 6), else the fallback.
inline int emulated_resident_clusters(int size, int fallback) {
  constexpr int kH200[9] = {0, 132, 66, 39, 30, 22, 17, 15, 15};
  return fallback * size <= 132 && fallback * size > 132 - size && size <= 8 ? kH200[size] : fallback;
}

// The occupancy query: two resident blocks a multiprocessor.
inline cudaError_t emulated_occupancy(int* blocks, ...) {
  *blocks = 2;
  return cudaSuccess;
}
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor emulated_occupancy
#define cudaGetLastError() cudaSuccess


