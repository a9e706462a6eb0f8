// Helpers shared by cuda-gptq-gemv (gptq_gemv.cu), cuda-gptq-mma (gptq_mma.cu) and
// cuda-gptq-wgmma (gptq_wgmma.cu): conversions, the LOP3 that makes two 4-bit codes float16,
// loads of 8 consecutive rows of x, the split-K finish, and launches (shared memory,
// occupancy, programmatic dependent launch).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#ifndef FERRULE_GEMV_PDL
#define FERRULE_GEMV_PDL 1
#endif

namespace ferrule_gemv {
namespace common {

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

// Word c of 4 adjacent columns' words loaded as one int4.
__device__ __forceinline__ uint32_t column_word(const int4& v, int c) {
  return static_cast<uint32_t>(c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w);
}

__device__ __forceinline__ __half2 bits_half2(uint32_t bits) {
  __half2 h;
  static_assert(sizeof h == sizeof bits, "a half2 is 32 bits");
  memcpy(&h, &bits, sizeof h);
  return h;
}

__device__ __forceinline__ uint32_t half2_bits(__half2 h) {
  uint32_t bits;
  memcpy(&bits, &h, sizeof bits);
  return bits;
}

// (a & mask) | bits in one LOP3 (the compiler splits it in two when both are immediates).
// With mask 0x000F000F and bits 0x64006400 it makes codes 0 and 4 of a 4-bit word the
// float16 pair (1024 + q0, 1024 + q4); with 0x00F000F0, (1024 + 16 q1, 1024 + 16 q5).
template <uint32_t kMask, uint32_t kBits>
__device__ __forceinline__ uint32_t and_or(uint32_t a) {
#ifdef __CUDA_ARCH__
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "n"(kMask), "n"(kBits));
  return d;
#else
  return (a & kMask) | kBits;
#endif
}

// A word's zero point as the two constants code_pairs subtracts: (1024 + z, 1024 + z) and
// (-(64 + z), -(64 + z)) (bits), which a kernel may make once for all the words sharing z.
struct ZeroPairs {
  uint32_t low;
  uint32_t high;
};
__device__ __forceinline__ ZeroPairs zero_pairs(uint32_t z) {
  return {z * 0x00010001u + 0x64006400u, z * 0x00100010u + 0xD400D400u};
}

// The code pairs (q_p - z, q_{p+4} - z), p = 0..3, of a 4-bit word w with zero point z, exact
// in float16 (the order in which one LOP3 unpacks a word): the mask 0x000F000F gives
// (1024 + q0, 1024 + q4), 0x00F000F0 gives (1024 + 16 q1, 1024 + 16 q5), which one HFMA2 by 1/16
// brings back, and w >> 8 the other two pairs. (1024 + z, 1024 + z) and (-(64 + z), -(64 + z))
// are made without carries between the halves.
__device__ __forceinline__ void code_pairs(uint32_t w, ZeroPairs zero, __half2 (&v)[4]) {
  const __half2 sixteenth = bits_half2(0x2C002C00u);
  const __half2 low_zero = bits_half2(zero.low);
  const __half2 high_zero = bits_half2(zero.high);
  const uint32_t shifted = w >> 8;
  v[0] = __hsub2(bits_half2(and_or<0x000F000Fu, 0x64006400u>(w)), low_zero);
  v[1] = __hfma2(bits_half2(and_or<0x00F000F0u, 0x64006400u>(w)), sixteenth, high_zero);
  v[2] = __hsub2(bits_half2(and_or<0x000F000Fu, 0x64006400u>(shifted)), low_zero);
  v[3] = __hfma2(bits_half2(and_or<0x00F000F0u, 0x64006400u>(shifted)), sixteenth, high_zero);
}

// The same with the zero point's constants made here.
__device__ __forceinline__ void code_pairs(uint32_t w, uint32_t z, __half2 (&v)[4]) {
  code_pairs(w, zero_pairs(z), v);
}

// Programmatic dependent launch (sm_90+, launched with p.pdl): a block may start while the
// previous kernel on the stream finishes, loads the weight (which no kernel writes), and waits
// here before it reads x or writes anything; it lets the next kernel start once its own main
// loop is done. Elsewhere both are no-ops.
__device__ __forceinline__ void wait_for_inputs() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void release_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// The barrier of a thread block cluster (sm_90), for every thread of its blocks: its release /
// acquire orders the (distributed) shared memory writes before it against the reads after it.
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::
                   : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  emulated_cluster_barrier();
#endif
}

// The quantization group of row k (plan_groups() set group_shift).
template <typename P>
__device__ __forceinline__ uint32_t group_of(const P& p, int k) {
  return p.group_shift >= 0 ? k >> p.group_shift : k / p.group_size;
}

// 8 float16 (or bfloat16) values as the pairs (x_p, x_{p+4}), p = 0..3: the order in which
// one LOP3 unpacks a 4-bit word's codes (codes i and i + 4 share an instruction).
__device__ __forceinline__ uint4 pair_order(const uint4& v) {
  // (x0 x1)(x2 x3)(x4 x5)(x6 x7) -> (x0 x4)(x1 x5)(x2 x6)(x3 x7)
  return make_uint4((v.x & 0xFFFFu) | (v.z << 16), (v.x >> 16) | (v.z & 0xFFFF0000u),
                    (v.y & 0xFFFFu) | (v.w << 16), (v.y >> 16) | (v.w & 0xFFFF0000u));
}

// base[src[r] * stride] for the 8 sources in (a, b), as 8 values of T in a uint4.
template <typename T>
__device__ __forceinline__ uint4 gather8(const T* base, int64_t stride, const int4& a,
                                         const int4& b) {
  const int src[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
  T h[8];
#pragma unroll
  for (int r = 0; r < 8; ++r) h[r] = base[static_cast<int64_t>(src[r]) * stride];
  uint4 v;
  memcpy(&v, h, sizeof v);
  return v;
}

// Value r of 8 consecutive T packed in a uint4.
template <typename T>
__device__ __forceinline__ T octet_value(const uint4& v, int r) {
  T out;
  memcpy(&out, reinterpret_cast<const char*>(&v) + sizeof(T) * r, sizeof out);
  return out;
}

// 2^e as a float, e in [-126, 127].
__device__ __forceinline__ float exp2i(int e) { return __int_as_float((127 + e) << 23); }

// How x is read: rows of K (through perm under act-order) of one row of x.
template <typename T>
struct XReader {
  const T* x;
  int64_t stride_m;
  int64_t stride_k;
  const int32_t* perm;  // nullptr: identity
  int K;
  bool vector_x;     // 16-byte loads of 8 consecutive elements
  bool vector_perm;  // 16-byte loads of perm

  __device__ XReader(const T* x_, int64_t stride_m_, int64_t stride_k_, const int32_t* perm_, int K_)
      : x(x_), stride_m(stride_m_), stride_k(stride_k_), perm(perm_), K(K_) {
    vector_x = perm == nullptr && stride_k == 1 && stride_m % 8 == 0 &&
               reinterpret_cast<uintptr_t>(x) % 16 == 0;
    vector_perm = perm != nullptr && reinterpret_cast<uintptr_t>(perm) % 16 == 0;
  }

  // Whether octet() at k reads perm with two 16-byte loads, which sources() can issue early.
  __device__ __forceinline__ bool whole_perm_octet(int k) const { return vector_perm && k + 8 <= K; }

  // perm[k .. k + 7] (a whole_perm_octet): x's columns for stored rows k .. k + 7. perm belongs
  // to the layer, so this may run before the previous kernel has finished (PDL).
  __device__ __forceinline__ void sources(int k, int4& a, int4& b) const {
    a = __ldg(reinterpret_cast<const int4*>(perm + k));
    b = __ldg(reinterpret_cast<const int4*>(perm + k + 4));
  }

  // x[row][src], 8 of them, as 8 values of T in a uint4.
  __device__ __forceinline__ uint4 gather(int row, const int4& a, const int4& b) const {
    return gather8(x + row * stride_m, stride_k, a, b);
  }

  // x[row][k .. k + 7] (through perm), zeros past K, as 8 values of T in a uint4: one 16-byte
  // load where x is contiguous, or two 16-byte loads of perm and 8 gathers.
  __device__ __forceinline__ uint4 octet(int row, int k) const {
    const T* at = x + row * stride_m;
    if (vector_x && k + 8 <= K) return __ldg(reinterpret_cast<const uint4*>(at + k));
    if (whole_perm_octet(k)) {
      int4 a, b;
      sources(k, a, b);
      return gather(row, a, b);
    }
    T h[8];
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int src = k + r < K ? (perm != nullptr ? __ldg(perm + k + r) : k + r) : -1;
      h[r] = src >= 0 ? at[static_cast<int64_t>(src) * stride_k] : Io<T>::store(0.0f);
    }
    uint4 v;
    memcpy(&v, h, sizeof v);
    return v;
  }
};

// Split-K across blocks: each block of a tile has written its float32 partial sums to
// `workspace` ([splits][M][N]); the last block to arrive (an atomic ticket per tile) adds them
// up, writes rows row0 .. row0 + rows - 1 and columns col0 .. col0 + cols - 1 of `out`, and
// resets the ticket for the next launch.
//
// is_last_split: whether this block is the tile's last, for the `workers` that wrote its
// partials (worker 0 takes the ticket, and the last block's resets it: every split has
// arrived; `sync` is a barrier of exactly those threads; `last_block` a __shared__ flag).
// add_up: the sums, by those workers.
template <typename Sync>
__device__ __forceinline__ bool is_last_split(int32_t* counters, int tile, int splits, int worker,
                                              bool& last_block, Sync&& sync) {
  __threadfence();
  sync();
  if (worker == 0) {
    last_block = atomicAdd(counters + tile, 1) == splits - 1;
    if (last_block) counters[tile] = 0;
  }
  sync();
  return last_block;
}

template <typename T, int kWorkers>
__device__ __forceinline__ void add_up(const float* workspace, T* out, int M, int N, int row0,
                                       int rows, int col0, int cols, int splits, int worker) {
  // Four columns a thread, with 16-byte loads (N, col0 and cols are multiples of 4: GPTQ packs
  // the zero points of 32 / bits >= 4 columns a word), kBatch quads at a time, every split's
  // loads of a batch issued before its additions. At the end of a launch only the tiles' last
  // blocks run, each reading every split from L2, so the loads in flight set the time (one
  // quad at a time, 256 rows of a 4,096-wide layer in 4 splits spent ~40% of the kernel here:
  // ncu).
  constexpr int kBatch = 4;
  const size_t plane = static_cast<size_t>(M) * N;
  const int quads = cols / 4;
  const int total = rows * quads;
  for (int first = worker; first < total; first += kWorkers * kBatch) {
    size_t at[kBatch];
    bool in[kBatch];
    float4 sum[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * kWorkers;
      const int m = i / quads;
      const int n = col0 + 4 * (i - m * quads);
      in[b] = i < total && row0 + m < M && n < N;
      at[b] = in[b] ? static_cast<size_t>(row0 + m) * N + n : 0;
      sum[b] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
#pragma unroll 4
    for (int s = 0; s < splits; ++s) {
      float4 v[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        v[b] = in[b] ? __ldcg(reinterpret_cast<const float4*>(workspace + s * plane + at[b]))
                     : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        sum[b].x += v[b].x;
        sum[b].y += v[b].y;
        sum[b].z += v[b].z;
        sum[b].w += v[b].w;
      }
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (!in[b]) continue;
      T h[4] = {Io<T>::store(sum[b].x), Io<T>::store(sum[b].y), Io<T>::store(sum[b].z),
                Io<T>::store(sum[b].w)};
      uint2 packed;
      static_assert(sizeof h == sizeof packed, "four 16-bit values");
      memcpy(&packed, h, sizeof packed);
      *reinterpret_cast<uint2*>(out + at[b]) = packed;  // 8-byte aligned: N, n multiples of 4
    }
  }
}

// Both, for kernels whose every thread wrote partials (`tid`: threadIdx.x).
template <typename T, int kThreads>
__device__ __forceinline__ void add_up_splits(int32_t* counters, const float* workspace, T* out, int M,
                                              int N, int row0, int rows, int col0, int cols,
                                              int tile, int splits, bool& last_block) {
  const int tid = threadIdx.x;
  if (is_last_split(counters, tile, splits, tid, last_block, [] { __syncthreads(); })) {
    add_up<T, kThreads>(workspace, out, M, N, row0, rows, col0, cols, splits, tid);
  }
}

// Host side. Dynamic shared memory past 48 KB must be allowed once per kernel; returns the
// status of doing so (success when no more is needed, and in the CPU emulation).
template <typename Kernel>
cudaError_t allow_shared(Kernel kernel, int shared_bytes) {
#ifdef FERRULE_GEMV_EMULATED
  (void)kernel; (void)shared_bytes;
  return cudaSuccess;
#else
  if (shared_bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes);
#endif
}

// Blocks of `kernel` one multiprocessor holds at once (1 if the query fails). Callers cache it.
template <typename Kernel>
int resident_blocks(Kernel kernel, int threads, int shared_bytes) {
  int n = 0;
  if (allow_shared(kernel, shared_bytes) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, shared_bytes) !=
          cudaSuccess) {
    cudaGetLastError();  // clear it; assume one block
    n = 1;
  }
  return n > 0 ? n : 1;
}

// The launch configuration of kernel<<<grid, threads, shared_bytes, stream>>>, with
// programmatic stream serialization when `pdl` (sm_90+: the kernel's blocks may start before the
// previous kernel ends) and in clusters of `cluster_y` blocks along grid.y when above 1 (sm_90+).
struct LaunchConfig {
  cudaLaunchConfig_t config{};
  cudaLaunchAttribute attribute[2];
  LaunchConfig(dim3 grid, int cluster_y, int threads, int shared_bytes, cudaStream_t stream,
               bool pdl) {
    config.gridDim = grid;
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = shared_bytes;
    config.stream = stream;
    int count = 0;
    if (pdl && FERRULE_GEMV_PDL) {
      attribute[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attribute[count++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster_y > 1) {
      attribute[count].id = cudaLaunchAttributeClusterDimension;
      attribute[count].val.clusterDim.x = 1;
      attribute[count].val.clusterDim.y = static_cast<unsigned>(cluster_y);
      attribute[count++].val.clusterDim.z = 1;
    }
    config.attrs = attribute;
    config.numAttrs = count;
  }
};

template <typename Kernel, typename... Args>
cudaError_t launch_in_clusters(Kernel kernel, dim3 grid, int cluster_y, int threads,
                               int shared_bytes, cudaStream_t stream, bool pdl,
                               const Args&... args) {
#ifdef FERRULE_GEMV_EMULATED
  (void)shared_bytes; (void)stream; (void)pdl;
  // tests/emulation/cuda_host_shim.h: host threads, a cluster's blocks at once
  emulate_launch(kernel, grid, threads, cluster_y, args...);
  return cudaSuccess;
#else
  LaunchConfig launch(grid, cluster_y, threads, shared_bytes, stream, pdl);
  if (launch.config.numAttrs == 0) {
    kernel<<<grid, threads, shared_bytes, stream>>>(args...);
    return cudaGetLastError();
  }
  return cudaLaunchKernelEx(&launch.config, kernel, args...);
#endif
}

template <typename Kernel, typename... Args>
cudaError_t launch_kernel(Kernel kernel, dim3 grid, int threads, int shared_bytes,
                          cudaStream_t stream, bool pdl, const Args&... args) {
  return launch_in_clusters(kernel, grid, 1, threads, shared_bytes, stream, pdl, args...);
}

// Clusters of `cluster_y` blocks of `kernel` the GPU holds at once (0 if the query fails; in the
// emulation, `fallback`). Callers cache it.
template <typename Kernel>
int resident_clusters(Kernel kernel, int cluster_y, int threads, int shared_bytes, int fallback) {
#ifdef FERRULE_GEMV_EMULATED
  (void)kernel; (void)threads; (void)shared_bytes;
  return emulated_resident_clusters(cluster_y, fallback);  // tests/emulation/cuda_host_shim.h
#else
  (void)fallback;
  int n = 0;
  LaunchConfig launch(dim3(1, cluster_y, 1), cluster_y, threads, shared_bytes, nullptr, false);
  if (allow_shared(kernel, shared_bytes) != cudaSuccess ||
      cudaOccupancyMaxActiveClusters(&n, kernel, &launch.config) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  return n;
#endif
}

// A kernel of kThreads threads and kShared bytes of dynamic shared memory: its resident blocks
// a multiprocessor (asked once) and a launch on a grid with p.pdl.
template <auto kKernel, int kThreads, int kShared>
struct Launcher {
  static int occupancy() {
    static const int blocks = resident_blocks(kKernel, kThreads, kShared);
    return blocks;
  }
  template <typename P>
  static cudaError_t launch_on(dim3 grid, const P& p, cudaStream_t stream) {
    static const cudaError_t allowed = allow_shared(kKernel, kShared);
    if (allowed != cudaSuccess) return allowed;
    return launch_kernel(kKernel, grid, kThreads, kShared, stream, p.pdl, p);
  }
};

}  // namespace common
}  // namespace ferrule_gemv
