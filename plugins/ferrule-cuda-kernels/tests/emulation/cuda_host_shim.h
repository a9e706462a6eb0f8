// Runs gptq_gemv.cu's kernel on the host, for tests on machines without a GPU.
//
// One block at a time; its 256 threads are std::threads, __shared__ variables are function
// statics (shared by the block's threads), __syncthreads is a barrier of the block and
// __shfl_xor_sync exchanges through one slot per lane with a barrier of the warp. Loads are
// plain reads; atomics are the compiler's. The half and bfloat16 conversions are CUDA's own
// host implementations, and x86 floats keep denormals, as the kernel (built -ftz=false) does.
#pragma once

#define FERRULE_GEMV_PDL 0  // plain launches: no programmatic dependent launch

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
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
#undef __forceinline__
#define __forceinline__ inline

namespace emulation {
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
inline std::barrier<>* block_barrier = nullptr;
inline std::barrier<>* warp_barrier[kWarps];
inline float warp_slots[kWarps][32];
}  // namespace emulation

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 gridDim;

inline void __syncthreads() { emulation::block_barrier->arrive_and_wait(); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline float __shfl_xor_sync(unsigned, float value, int offset) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  emulation::warp_slots[warp][lane] = value;
  emulation::warp_barrier[warp]->arrive_and_wait();
  const float other = emulation::warp_slots[warp][lane ^ offset];
  emulation::warp_barrier[warp]->arrive_and_wait();
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

// Replaces `kernel<<<grid, 256, 0, stream>>>(p)`.
template <class Kernel, class Problem>
void emulate_launch(Kernel kernel, dim3 grid, const Problem& p) {
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        std::barrier<> block(emulation::kThreads);
        std::vector<std::unique_ptr<std::barrier<>>> warps;
        for (int w = 0; w < emulation::kWarps; ++w) {
          warps.push_back(std::make_unique<std::barrier<>>(32));
          emulation::warp_barrier[w] = warps.back().get();
        }
        emulation::block_barrier = &block;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < emulation::kThreads; ++t) {
          threads.emplace_back([&, t] {
            threadIdx = dim3(t, 0, 0);
            blockIdx = dim3(x, y, z);
            kernel(p);
          });
        }
        for (auto& thread : threads) thread.join();
      }
    }
  }
}

// The occupancy query: two resident blocks a multiprocessor.
inline cudaError_t emulated_occupancy(int* blocks, ...) {
  *blocks = 2;
  return cudaSuccess;
}
#define cudaOccupancyMaxActiveBlocksPerMultiprocessor emulated_occupancy
#define cudaGetLastError() cudaSuccess

// What the torch binding does before a launch, for ctypes.
extern "C" int emulated_gemv(const void* x, int64_t stride_m, int64_t stride_k,
                             const int32_t* perm, const int32_t* qweight, const int32_t* qzeros,
                             const void* scales, void* out, float* workspace, int32_t* counters,
                             int M, int K, int N, int group_size, int bits, int bf16,
                             int num_sms, int64_t capacity, int* plan);
