// cuda-gptq-wgmma: y = x @ W for float16 x and a GPTQ 4-bit weight on Hopper's warpgroup MMA
// (wgmma, sm_90a), for batches of 9 rows and more. Experimental: correct, but slower than
// triton-gptq on an H100 at nearly every shape (docs/benchmarks.md). ncu found each step
// latency-bound (~2,200 cycles whatever the tile; the tensor pipe 41% busy at 128 rows): the
// dequantize and copy path of a warpgroup sits between its tensor-core steps. A
// warp-specialized design (producer warps that dequantize, consumers that only issue wgmma) is
// the likely next step.
//
// The product runs transposed, out^T = W^T x^T, as in cuda-gptq-mma: the weight is the A
// operand and comes from registers, where each thread dequantizes its own 16-byte loads of
// packed words, and x is the B operand, which wgmma reads from shared memory. Thread 4 g + c of
// warp w of a warpgroup loads, for each 32 rows of K, word row c of 4 adjacent columns (4 g ..
// 4 g + 3 of the warp's 32); tile j (two m64 tiles a warpgroup, 128 columns) takes its row
// 16 w + g from column 2 j of the thread's list and row 16 w + g + 8 from column 2 j + 1, and
// the 16 K positions of the thread's fragments are its word's code pairs (2 s, 2 s + 4) and
// (2 s + 1, 2 s + 5) for K step s: wgmma's A fragment layout per warp is mma.sync's, so the
// mapping, the LOP3 unpacking and the exact q - z are cuda-gptq-mma's. The scale multiplies
// the fragments (HMUL2), so the weight rounds once to float16, as a dequantize-then-matmul's.
//
// x must then sit in shared memory in that K order: within every 32 rows of K, logical
// position 16 s + 2 t + e holds row 8 t + 2 s + 4 e and position 16 s + 8 + 2 t + e row
// 8 t + 2 s + 1 + 4 e. The binding gathers x into that order once per call (gather_rows with
// the layer's `order`, which folds act-order's perm in as well, so act-order costs nothing
// more), and the kernel copies tiles of it with cp.async into a ring of kStages stages, in the
// 128-byte swizzled K-major layout wgmma's descriptors name: row r of a stage (one row of x,
// 64 rows of K, 128 bytes) holds its 16-byte chunk q at chunk q ^ (r % 8).
//
// A block is two warpgroups side by side (256 columns) over TOKENS rows of x (16 to 128: the
// wgmma's N), stepping through K 64 rows at a time (two units, four k16 wgmmas a tile). Each
// warpgroup issues a step's wgmmas and leaves them in flight; once the previous step's are done
// it dequantizes the next step's weight into the other set of fragment registers, and loads
// the step after next. Splitting K across
// blocks, when the tiles do not fill the GPU, finishes like cuda-gptq-mma's (a float32
// workspace, the last block of a tile adds).

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gptq_gemv.h"
#include "kernel_common.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FERRULE_WGMMA 1
#else
#define FERRULE_WGMMA 0
#endif

namespace ferrule_gemv {
namespace {

using common::and_or;
using common::bits_half2;
using common::column_word;
using common::half2_bits;

// Warpgroup 0 of a block is the producer, warpgroups 1 and 2 the consumers.
constexpr int kConsumers = 2;
constexpr int kThreads = 128 * (kConsumers + 1);
constexpr int kGroupCols = 128;  // columns a consumer multiplies: two m64 tiles
constexpr int kBlockCols = kGroupCols * kConsumers;
constexpr int kStepRows = 64;    // rows of K a step: 8 word rows, 4 k16 wgmmas a tile
constexpr int kMinStepsPerSplit = 4;
constexpr int kAlign = 1024;  // the 128-byte swizzle repeats every 8 rows of 128 bytes
// A stage: x's tile (TOKENS rows of 128 bytes, swizzled), the step's packed words (8 word rows
// of the block's 256 columns, in the consumers' thread order), and the step's group's scales
// (512 bytes) and zero-point words (128 bytes), padded so stages stay 1024-aligned.
constexpr int kWordBytes = 8 * kBlockCols * 4;
constexpr int kScaleBytes = kBlockCols * 2;
constexpr int kParamBytes = 1024;
template <int TOKENS>
constexpr int kXBytes = TOKENS * kStepRows * 2;
template <int TOKENS>
constexpr int kStageBytes = kXBytes<TOKENS> + kWordBytes + kParamBytes;
// Stages in the ring: about 180 KB of shared memory (one block a multiprocessor).
#ifndef FERRULE_WGMMA_STAGES
#define FERRULE_WGMMA_STAGES 0
#endif
template <int TOKENS>
constexpr int kStages = FERRULE_WGMMA_STAGES > 0 ? FERRULE_WGMMA_STAGES
                        : TOKENS <= 32                ? 12
                        : TOKENS == 64                ? 10
                                                      : 7;
constexpr int kMaxStages = 16;
template <int TOKENS>
constexpr int kSharedBytes = kStages<TOKENS> * kStageBytes<TOKENS> + kAlign;

// d += a b for one m64nNk16 tile: A (64 x 16 float16) from registers, B (16 x N float16,
// K-major, 128-byte swizzle) from shared memory through `desc`, float32 sums.
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc);

#if FERRULE_WGMMA
template <>
__device__ __forceinline__ void wgmma_rs<16>(float (&d)[8], const uint32_t (&a)[4], uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7"
      "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_rs<32>(float (&d)[16], const uint32_t (&a)[4], uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
      "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t desc) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
      "}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));
}

#endif  // FERRULE_WGMMA

__device__ __forceinline__ void wgmma_fence() {
#if FERRULE_WGMMA
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if FERRULE_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}

// Waits until at most kPending of this warpgroup's wgmma groups are in flight.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#if FERRULE_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
#endif
}

// Keeps the compiler from moving reads or writes of an accumulator across the asynchronous
// wgmma that owns it.
__device__ __forceinline__ void pin(float& r) {
#if FERRULE_WGMMA
  asm volatile("" : "+f"(r)::"memory");
#else
  (void)r;
#endif
}

// The shared-memory address of `p` (on the host: its offset from `base`, the emulation's
// buffer, which is aligned like the device's).
__device__ __forceinline__ uint32_t shared_address(const void* p, const void* base) {
#ifdef __CUDA_ARCH__
  (void)base;
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#else
  return static_cast<uint32_t>(static_cast<const char*>(p) - static_cast<const char*>(base));
#endif
}

// A descriptor of a K-major operand tile in the 128-byte swizzle at shared address `address`:
// rows of 128 bytes, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t descriptor(uint32_t address) {
  return static_cast<uint64_t>((address >> 4) & 0x3FFFu) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

template <int N>
__device__ __forceinline__ void mma_step(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc,
                                         const char* base) {
#if FERRULE_WGMMA
  (void)base;
  wgmma_rs<N>(d, a, desc);
#elif defined(__CUDA_ARCH__)
  (void)d; (void)a; (void)desc; (void)base;
  __trap();  // the binding refuses devices other than sm_90
#elif defined(FERRULE_GEMV_EMULATED)
  emulated_wgmma(d, N, a, desc, base);  // tests/emulation/cuda_host_shim.h
#endif
}

// `BYTES` (4, 8 or 16) from global `src` to shared `dst` (zeros when !ok), asynchronously on the
// device (cp.async; the emulation copies at once).
template <int BYTES>
__device__ __forceinline__ void copy_async(void* dst, uint32_t dst_address, const void* src,
                                           bool ok) {
#ifdef __CUDA_ARCH__
  (void)dst;
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst_address), "l"(src),
                 "r"(ok ? 16 : 0));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(dst_address), "l"(src),
                 "n"(BYTES), "r"(ok ? BYTES : 0));
  }
#else
  (void)dst_address;
  if (ok) {
    std::memcpy(dst, src, BYTES);
  } else {
    std::memset(dst, 0, BYTES);
  }
#endif
}

// mbarriers in shared memory (`bar` its address on the device, the emulation's pointer on the
// host): init with the arrivals a phase expects, arrive, and wait for the phase of `parity`.
__device__ __forceinline__ void barrier_init(uint64_t* bar, uint32_t address, uint32_t count) {
#if FERRULE_WGMMA  // sm_90a; elsewhere the binding refuses the kernel
  (void)bar;
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(address), "r"(count) : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)address;
  emulated_barrier_init(bar, count);
#else
  (void)bar; (void)address; (void)count;
#endif
}

__device__ __forceinline__ void barrier_arrive(uint64_t* bar, uint32_t address) {
#if FERRULE_WGMMA  // sm_90a; elsewhere the binding refuses the kernel
  (void)bar;
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(address) : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)address;
  emulated_barrier_arrive(bar);
#else
  (void)bar; (void)address;
#endif
}

// Arrives once this thread's cp.async copies so far have landed (counted among the expected).
__device__ __forceinline__ void barrier_arrive_copies(uint64_t* bar, uint32_t address) {
#if FERRULE_WGMMA  // sm_90a; elsewhere the binding refuses the kernel
  (void)bar;
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(address) : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)address;
  emulated_barrier_arrive(bar);  // the emulation's copies have landed
#else
  (void)bar; (void)address;
#endif
}

__device__ __forceinline__ void barrier_wait(uint64_t* bar, uint32_t address, uint32_t parity) {
#if FERRULE_WGMMA  // sm_90a; elsewhere the binding refuses the kernel
  (void)bar;
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  }
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)address;
  emulated_barrier_wait(bar, parity);
#else
  (void)bar; (void)address; (void)parity;
#endif
}

// Makes shared memory written through the generic proxy (cp.async) visible to wgmma.
__device__ __forceinline__ void proxy_fence() {
#if FERRULE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// Register budgets of the producer and the consumers (sm_90a's setmaxnreg): the consumers hold
// the sums and two steps' fragments.
template <bool kIncrease, int kRegisters>
__device__ __forceinline__ void set_registers() {
#if FERRULE_WGMMA
  if constexpr (kIncrease) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kRegisters));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kRegisters));
  }
#endif
}

// One step's weight, scales and zeros for a consumer thread's 4 columns.
struct Held {
  int4 words[2];  // word rows c and 4 + c of the step, columns col .. col + 3
  uint2 scales;   // their scales (float16 bits)
  uint32_t zeros;  // the word of 8 zero points that holds theirs (from bit 4 (col % 8))
};

// Fragments of one step: [unit][K step s][tile j][register].
using Fragments = uint32_t[2][2][2][4];

template <int TOKENS>
__global__ void __launch_bounds__(kThreads, 1) gptq_wgmma_kernel(const Problem p) {
  constexpr int kSums = TOKENS / 2;  // float32 sums a consumer thread holds per tile
  constexpr int S = kStages<TOKENS>;
  static_assert(S >= 3 && S <= kMaxStages, "stages");
#ifdef FERRULE_GEMV_EMULATED
  __shared__ __align__(1024) char raw[kSharedBytes<TOKENS>];
#else
  extern __shared__ __align__(16) char raw[];
#endif
  // full[s]: stage s has landed (the producer's 128 threads arrive as their copies land);
  // empty[s]: the consumers' 256 threads are done with it.
  __shared__ __align__(8) uint64_t full[kMaxStages];
  __shared__ __align__(8) uint64_t empty[kMaxStages];
  __shared__ bool last_block;
  const uint32_t raw_address = shared_address(raw, raw);
  char* const smem = raw + ((kAlign - raw_address % kAlign) % kAlign);
  const uint32_t smem_address = shared_address(smem, raw);
#ifdef __CUDA_ARCH__
  auto bar_address = [](const uint64_t* bar) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(bar));
  };
#else
  auto bar_address = [](const uint64_t*) { return 0u; };
#endif

  const int tid = threadIdx.x;
  const int role = tid >> 7;  // 0: producer; 1, 2: consumers
  const int N = p.N;
  const int M = p.M;
  const int K = p.K;
  const int row0 = blockIdx.z * TOKENS;
  const int col0 = blockIdx.x * kBlockCols;
  const int steps = K / kStepRows;
  const int step_begin = blockIdx.y * p.units_per_split;
  const int step_end = min(step_begin + p.units_per_split, steps);
  const int splits = gridDim.y;

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      barrier_init(&full[s], bar_address(&full[s]), 128);
      barrier_init(&empty[s], bar_address(&empty[s]), 128 * kConsumers);
    }
  }
  __syncthreads();

  // The consumer thread's first column (4 g of its warp's 32, 32 w of its warpgroup's 128).
  const int t = tid & 127;
  const int lane = t & 31;
  const int g = lane >> 2;
  const int c = lane & 3;
  const int local_col = (role - 1) * kGroupCols + (t >> 5) * 32 + 4 * g;
  const int col = col0 + local_col;

  if (role == 0) {
    // Producer: copies each step into its stage once the consumers have freed it. What a
    // thread copies is fixed up front, so a step is its copies and pointer increments (the
    // producer's 4 warps issue for the whole block: computing each address in the step made
    // them the bottleneck, ~290 instructions a step at 128 rows).
    set_registers<false, 40>();
    // Words: chunk i = t + 128 k (16 bytes) is lane (4 g + c) of warp w of consumer k % 2,
    // unit k / 2: word row 4 (k / 2) + c of the step, columns 128 (k % 2) + 32 w + 4 g .. + 3.
    const int lane_of = t & 31;
    const int word_col = col0 + (t >> 5) * 32 + 4 * (lane_of >> 2);
    const bool words_ok[2] = {word_col < N, word_col + kGroupCols < N};
    const int64_t n4 = N / 4;
    const int4* word_src = reinterpret_cast<const int4*>(p.qweight) +
                           (static_cast<int64_t>(step_begin) * 8 + (lane_of & 3)) * n4 +
                           (words_ok[0] ? word_col / 4 : 0);
    // x: chunk q = t % 8 of rows r = t / 8 + 16 j, j < TOKENS / 16 (zeros past M), at chunk
    // q ^ (r % 8) of its 128 bytes: the 128-byte swizzle.
    constexpr int kXCopies = TOKENS / 16;
    const int x_row = t >> 3;
    const int x_chunk = t & 7;
    uint32_t x_ok = 0;
#pragma unroll
    for (int j = 0; j < kXCopies; ++j) x_ok |= (row0 + x_row + 16 * j < M ? 1u : 0u) << j;
    const __half* x_src = static_cast<const __half*>(p.x) + static_cast<int64_t>(row0 + x_row) * K +
                          static_cast<int64_t>(step_begin) * kStepRows + 8 * x_chunk;
    const int64_t x_rows16 = static_cast<int64_t>(16) * K;
    const int x_offset = x_row * 128 + ((x_chunk ^ (x_row & 7)) << 4);
    // Parameters: threads 0-63 the scales of 4 columns, 64-95 the zero-point word of 8.
    const bool is_scale = t < kBlockCols / 4;
    const bool is_zero = !is_scale && t < kBlockCols / 4 + kBlockCols / 8;
    const int param_col = is_scale ? col0 + 4 * t : col0 + 8 * (t - kBlockCols / 4);
    const bool param_ok = (is_scale || is_zero) && param_col < N;
    const char* const param_src =
        is_scale ? static_cast<const char*>(p.scales) + 2 * static_cast<int64_t>(param_col)
                 : reinterpret_cast<const char*>(p.qzeros) + 4 * static_cast<int64_t>(param_col / 8);
    const int64_t param_row = is_scale ? 2 * static_cast<int64_t>(N) : N / 2;  // bytes a group
    const int param_offset =
        kXBytes<TOKENS> + kWordBytes + (is_scale ? 8 * t : kScaleBytes + 4 * (t - kBlockCols / 4));

    common::wait_for_inputs();  // x is the gather kernel's output
    int stage = 0;
    uint32_t phase = 0;  // of the empty barriers' use: the stage's previous round
    for (int step = step_begin; step < step_end; ++step) {
      if (step - step_begin >= S) barrier_wait(&empty[stage], bar_address(&empty[stage]), phase ^ 1u);
      char* const base = smem + stage * kStageBytes<TOKENS>;
      const uint32_t base_address = smem_address + stage * kStageBytes<TOKENS>;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int offset = kXBytes<TOKENS> + 16 * t + 2048 * k;
        // (Past N the copy reads nothing: cp.async with a source size of 0 fills zeros.)
        copy_async<16>(base + offset, base_address + offset,
                       word_src + (k / 2) * 4 * n4 + (k % 2) * (kGroupCols / 4), words_ok[k % 2]);
      }
      word_src += 8 * n4;
      if (is_scale || is_zero) {
        const int64_t group = common::group_of(p, step * kStepRows);
        const char* src = param_ok ? param_src + group * param_row : param_src;
        if (is_scale) {
          copy_async<8>(base + param_offset, base_address + param_offset, src, param_ok);
        } else {
          copy_async<4>(base + param_offset, base_address + param_offset, src, param_ok);
        }
      }
      const __half* src = x_src;
#pragma unroll
      for (int j = 0; j < kXCopies; ++j) {
        const int offset = x_offset + 2048 * j;
        copy_async<16>(base + offset, base_address + offset, src, (x_ok >> j) & 1u);
        src += x_rows16;
      }
      x_src += kStepRows;
      barrier_arrive_copies(&full[stage], bar_address(&full[stage]));
      if (++stage == S) {
        stage = 0;
        phase ^= 1u;
      }
    }
    common::release_dependents();
  } else {
    // Consumer: dequantizes a step from its stage into fragments, then issues its wgmmas
    // while dequantizing the next.
    set_registers<true, 232>();
    float acc[2][kSums];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int i = 0; i < kSums; ++i) acc[j][i] = 0.0f;
    }
    const int zero_shift = 4 * (col % 8);
    auto take = [&](Held& h, int n) {
      const int stage = n % S;
      barrier_wait(&full[stage], bar_address(&full[stage]), (n / S) & 1);
      proxy_fence();  // x of this stage, for wgmma
      const char* const base = smem + stage * kStageBytes<TOKENS>;
      const char* const words = base + kXBytes<TOKENS>;
      const char* const params = words + kWordBytes;
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        h.words[u] = *reinterpret_cast<const int4*>(words + 16 * (256 * u + t + 128 * (role - 1)));
      }
      h.scales = *reinterpret_cast<const uint2*>(params + 2 * local_col);
      h.zeros = *reinterpret_cast<const uint32_t*>(params + kScaleBytes + 4 * (local_col / 8));
    };
    // (q - z) s of each code of the held step, as the fragments of its 4 k16 wgmmas.
    auto dequantize = [&](const Held& h, Fragments& a) {
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        uint32_t wp[4][4];  // [column k of the list][code pair]
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const uint32_t w = column_word(h.words[u], k);
          const uint32_t z = (h.zeros >> (zero_shift + 4 * k)) & 0xFu;
          const uint32_t scale_pair = k < 2 ? h.scales.x : h.scales.y;
          const uint32_t scale_bits = (k & 1) ? scale_pair >> 16 : scale_pair & 0xFFFFu;
          const __half2 scale = bits_half2(scale_bits * 0x00010001u);
          __half2 v[4];
          common::code_pairs(w, z, v);
#pragma unroll
          for (int i = 0; i < 4; ++i) wp[k][i] = half2_bits(__hmul2(v[i], scale));
        }
#pragma unroll
        for (int s = 0; s < 2; ++s) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            a[u][s][j][0] = wp[2 * j][2 * s];
            a[u][s][j][1] = wp[2 * j + 1][2 * s];
            a[u][s][j][2] = wp[2 * j][2 * s + 1];
            a[u][s][j][3] = wp[2 * j + 1][2 * s + 1];
          }
        }
      }
    };
    const uint64_t first_desc = descriptor(smem_address);  // stage 0, k16 step 0
    // Issues step n's wgmmas with fragments `a`, leaving them in flight; once step n - 1's are
    // done, frees its stage and dequantizes step n + 1 into `next` (step n - 1's fragments).
    auto run_step = [&](int n, const Fragments& a, Fragments& next) {
      const uint32_t stage = static_cast<uint32_t>(n % S);
      wgmma_fence();
#pragma unroll
      for (int u = 0; u < 2; ++u) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          // The start address field (address / 16) moves with the stage and the k16 step.
          const uint64_t desc =
              first_desc + ((stage * kStageBytes<TOKENS> + 32 * (2 * u + s)) >> 4);
#pragma unroll
          for (int j = 0; j < 2; ++j) mma_step<TOKENS>(acc[j], a[u][s][j], desc, raw);
        }
      }
      wgmma_commit();
      wgmma_wait<1>();  // step n - 1's wgmmas
      if (n > 0) {
        const int before = (n - 1) % S;
        barrier_arrive(&empty[before], bar_address(&empty[before]));
      }
      if (step_begin + n + 1 < step_end) {
        Held h;
        take(h, n + 1);
        dequantize(h, next);
      }
    };
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int i = 0; i < kSums; ++i) pin(acc[j][i]);
    }
    Fragments frag[2];
    if (step_begin < step_end) {
      Held h;
      take(h, 0);
      dequantize(h, frag[0]);
    }
    for (int n = 0; step_begin + n < step_end; n += 2) {
      run_step(n, frag[0], frag[1]);
      if (step_begin + n + 1 < step_end) run_step(n + 1, frag[1], frag[0]);
    }
    wgmma_wait<0>();
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int i = 0; i < kSums; ++i) pin(acc[j][i]);
    }
    common::wait_for_inputs();  // the output's memory may be the previous kernel's
    common::release_dependents();
    // Sum i of tile j is column col + 2 j + (i % 4) / 2 of the list, row 8 (i / 4) + 2 c + i % 2.
    __half* __restrict__ out = static_cast<__half*>(p.out);
    if (col < N) {
#pragma unroll
    for (int i = 0; i < kSums / 4; ++i) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int token = row0 + 8 * i + 2 * c + e;
        if (token >= M) continue;
        const float v[4] = {acc[0][4 * i + e], acc[0][4 * i + 2 + e], acc[1][4 * i + e],
                            acc[1][4 * i + 2 + e]};
        const size_t at = static_cast<size_t>(token) * N + col;
        if (splits == 1) {
          const __half2 lo = __floats2half2_rn(v[0], v[1]);
          const __half2 hi = __floats2half2_rn(v[2], v[3]);
          *reinterpret_cast<uint2*>(out + at) = make_uint2(half2_bits(lo), half2_bits(hi));
        } else {
          *reinterpret_cast<float4*>(p.workspace + static_cast<size_t>(blockIdx.y) * M * N + at) =
              make_float4(v[0], v[1], v[2], v[3]);
        }
      }
    }
    }
  }
  if (splits == 1) return;
  common::add_up_splits<__half, kThreads>(p.counters, p.workspace, static_cast<__half*>(p.out), M, N, row0, TOKENS,
                                          col0, kBlockCols, blockIdx.z * gridDim.x + blockIdx.x,
                                          splits, last_block);
}
template <int TOKENS>
struct Kernel {
  using Launch = common::Launcher<gptq_wgmma_kernel<TOKENS>, kThreads, kSharedBytes<TOKENS>>;
  static int occupancy() { return Launch::occupancy(); }
  static cudaError_t launch(const Problem& p, cudaStream_t stream) {
    const dim3 grid((p.N + kBlockCols - 1) / kBlockCols, p.splits, (p.M + TOKENS - 1) / TOKENS);
    return Launch::launch_on(grid, p, stream);
  }
};

template <typename F>
auto dispatch(const Problem& p, F&& f) {
  switch (p.tokens) {
    case 16: return f(Kernel<16>{});
    case 32: return f(Kernel<32>{});
    case 64: return f(Kernel<64>{});
    default: return f(Kernel<128>{});
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void plan_wgmma(Problem& p, int num_sms, int64_t counter_capacity) {
  plan_groups(p);
  if (p.tokens != 16 && p.tokens != 32 && p.tokens != 64 && p.tokens != 128) {
    p.tokens = p.M <= 16 ? 16 : p.M <= 32 ? 32 : p.M <= 64 ? 64 : 128;
  }
  p.loads = 2;
  const int64_t steps = p.K / kStepRows;
  const int64_t tiles = ceil_div(p.N, kBlockCols) * ceil_div(p.M, p.tokens);
  int64_t splits = p.splits;
  if (splits <= 0) {
    const int64_t resident =
        static_cast<int64_t>(num_sms) * dispatch(p, [](auto k) { return decltype(k)::occupancy(); });
    splits = std::min(resident / tiles, steps / kMinStepsPerSplit);
  }
  if (tiles > counter_capacity) splits = 1;
  splits = std::max<int64_t>(1, std::min(splits, steps));
  const int64_t per_split = ceil_div(steps, splits);
  p.units_per_split = static_cast<int>(per_split);  // steps of 64 rows here
  p.splits = static_cast<int>(ceil_div(steps, per_split));
}

cudaError_t launch_wgmma(const Problem& p, cudaStream_t stream) {
  return dispatch(p, [&](auto k) { return decltype(k)::launch(p, stream); });
}

}  // namespace ferrule_gemv
