// cuda-gptq-wgmma: y = x @ W for float16 x and a GPTQ 4-bit weight on Hopper's warpgroup MMA
// (wgmma, sm_90a). Selected from 3 rows, where it matched or beat cuda-gptq-mma and
// triton-gptq on every Llama-3 layer measured on an H100 (docs/benchmarks.md).
//
// The product runs transposed, out^T = W^T x^T, as in cuda-gptq-mma: the weight is the A
// operand and comes from registers, where each thread dequantizes packed words, and x is the B
// operand, which wgmma reads from shared memory in its own order (x needs no shuffle). Thread
// 4 g + c of warp w of a warpgroup takes 2 TILES adjacent columns; tile j (an m64 tile: two a
// warpgroup, 128 columns, or one, 64 columns: at 256 rows, and at 64 and 128 rows where the
// plan chooses it) takes its row 16 w + g from column 2 j of the thread's list and row
// 16 w + g + 8 from column 2 j + 1. wgmma's A fragment layout
// per warp is mma.sync's: for K step s (16 rows) the thread holds rows 16 s + 2 c, + 1 and
// 16 s + 8 + 2 c, + 1, byte c of word rows 2 s and 2 s + 1 of the unit (32 rows: 4 word rows).
// A PRMT copies that byte to bytes 0 and 2, one LOP3 and one HFMA2 make the exact q - z pair
// of it (byte_codes). Up to 32 rows the fragments stay q - z and the scale multiplies each
// step's float32 sums, as in cuda-gptq-mma; from 64 rows it multiplies the fragments (HMUL2),
// so the weight rounds once to float16, as a dequantize-then-matmul's. Act-order layers gather
// x[:, perm] first (gather_rows); in-order ones read x as it is. Opt-in (gather_in_kernel, up
// to 4 rows, not yet measured on a GPU): the producer's warps 1-3 gather x's tiles through perm
// themselves (gather_tiles), so no kernel runs before the product.
//
// (Until the tenth session each thread took a whole word, 8 rows, as cuda-gptq-mma does, and x
// went first through a shuffle within each 32 rows into the order that gave: one more kernel,
// ~2 us at 16 rows and ~10% of the product at 1,024 rows of 4096x4096, H100.)
//
// Warp-specialized. A block is three warpgroups over TOKENS rows of x (16 to 256: the wgmma's
// N) and 2 x 64 TILES columns, stepping through K 64 rows at a time. One thread of warpgroup 0,
// the producer, copies each step by TMA into a ring of kStages shared-memory stages: x's tile
// (TOKENS rows of 128 bytes in the 128-byte swizzle that the wgmma descriptors name; rows past
// M read as zeros), the packed words (one 3-D box: 32 columns by 8 word rows by the block's
// column chunks, swizzled the same way, which spreads the consumers' 16-byte reads over the
// banks) and the group's scales and zero points; an mbarrier per stage counts the bytes in
// ("full") and another the consumers done with it ("empty"). Warpgroups 1 and 2, the
// consumers (setmaxnreg gives them the registers the producer does not need), each take half
// the columns: per unit of 32 rows they read their words from the stage, dequantize them into
// fragments and issue the unit's wgmmas, keeping two to four units (kPending) queued on the
// tensor cores while the next is dequantized (up to 32 rows, a step's two units, then one
// wait a step). Splitting K across blocks, when the tiles do not fill the GPU, finishes like
// cuda-gptq-mma's (a float32 workspace, the last block of a tile adds), the adding done by
// the consumers alone; or, where the plan estimates it faster (Problem::in_clusters), in a
// thread block cluster of the tile's splits, each block adding up a share of the tile from
// what the others store into its shared memory (distributed shared memory), without the
// workspace.
//
// How it got here (H100, ratio to fp16 cuBLAS at 1024 rows on 28672x8192): every warpgroup
// loading its own weight and cp.async-copying x behind block barriers, 0.62x (latency-bound,
// ~2,200 cycles a step); a producer warpgroup copying by cp.async, 0.72x (its address
// arithmetic, ~110-290 instructions a step, held the consumers up: ncu); TMA, 0.85x (tensor
// pipe 76% busy); one m64 tile a consumer at 256 rows (n256 wgmma, half the dequantizing per
// product), 0.92-0.97x. At 16 rows the producer thread then held the consumers up (11 copies a
// step, ~1,000 cycles of dependent instructions: ncu), until the words came in one 3-D box:
// 28672x8192 at 16 rows from 1.67x to 2.1x, with the scale moved to the sums up to 32 rows
// and the consumers' shared-memory addresses and next step's reads set up ahead, 2.24x.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gptq_gemv.h"
#include "kernel_common.cuh"

#ifndef FERRULE_GEMV_EMULATED
#include <cuda.h>  // CUtensorMap; encoded through the runtime's driver entry point
#include <cudaTypedefs.h>
#endif

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FERRULE_WGMMA 1
#else
#define FERRULE_WGMMA 0
#endif

namespace ferrule_gemv {
namespace {

#ifdef FERRULE_GEMV_EMULATED
using TensorMap = EmulatedTensorMap;  // tests/emulation/cuda_host_shim.h
#else
using TensorMap = CUtensorMap;
#endif

// The TMA tensor maps of a launch: x (gathered, [M][K]) in tiles of TOKENS rows by one step,
// the packed words viewed as [K / 8][N / 32][32] in boxes of 8 word rows by the block's column
// chunks (both in the 128-byte swizzle), and one group's row of scales and of zero-point words
// for the block's columns.
struct Maps {
  TensorMap x;
  TensorMap words;
  TensorMap scales;
  TensorMap zeros;
};

using common::bits_half2;
using common::column_word;
using common::half2_bits;

// Warpgroup 0 of a block is the producer, warpgroups 1 and 2 the consumers.
constexpr int kConsumers = 2;
constexpr int kThreads = 128 * (kConsumers + 1);
// m64 tiles a consumer multiplies, TILES: two (128 columns, 256 a block) or one (64 columns,
// 128 a block). One at 256 rows (wgmma's widest N halves the dequantizing a product takes) and,
// where the plan estimates it faster, at 64 and 128 rows: twice the blocks of a narrow layer's
// columns fill the GPU with fewer splits of K (H200: 4096x4096 at 64 rows 0.97x of fp16
// against 0.88x, 14336x4096 at 128 rows 1.06x against 0.95x).
template <int TILES>
constexpr int kGroupCols = 64 * TILES;
template <int TILES>
constexpr int kBlockCols = kGroupCols<TILES> * kConsumers;
constexpr int block_cols_for(int tiles) { return 64 * tiles * kConsumers; }
constexpr int kStepRows = 64;    // rows of K a step: 8 word rows, 4 k16 wgmmas a tile
constexpr int kMinStepsPerSplit = 4;
// Split-K in a thread block cluster (Problem::in_clusters): up to the portable cluster size.
constexpr int kMaxClusterSplits = 8;
constexpr int kAlign = 1024;  // the 128-byte swizzle repeats every 8 rows of 128 bytes
// A stage: x's tile (TOKENS rows of 128 bytes, swizzled), the step's packed words (8 word rows
// of each 32 columns of the block, swizzled, chunk after chunk), and the step's group's scales
// and zero-point words, padded so stages stay 1024-aligned.
template <int TILES>
constexpr int kWordBytes = 8 * kBlockCols<TILES> * 4;
template <int TILES>
constexpr int kScaleBytes = kBlockCols<TILES> * 2;
constexpr int kParamBytes = 1024;
template <int TOKENS>
constexpr int kXBytes = TOKENS * kStepRows * 2;
template <int TOKENS, int TILES>
constexpr int kStageBytes = kXBytes<TOKENS> + kWordBytes<TILES> + kParamBytes;
// Stages in the ring: up to about 180 KB of shared memory (one block a multiprocessor). Up to
// 32 rows, 6: faster than 4, 8, 10, 12 or 16 on the Llama-3 layers at 3-32 rows (H100, one
// run: 4096x14336 at 16 rows 2.65x of fp16 against 2.49x with 12; 28672x8192 3.14x / 3.06x).
#ifndef FERRULE_WGMMA_STAGES
#define FERRULE_WGMMA_STAGES 0
#endif
template <int TOKENS>
constexpr int kStages = FERRULE_WGMMA_STAGES > 0 ? FERRULE_WGMMA_STAGES
                        : TOKENS <= 32                ? 6
                        : TOKENS == 64                ? 10
                        : TOKENS == 128               ? 7
                                                      : 5;
constexpr int kMaxStages = 16;
constexpr int kBarrierBytes = 2 * kMaxStages * 8;  // the full and empty mbarriers, after the stages
template <int TOKENS, int TILES>
constexpr int kSharedBytes = kStages<TOKENS> * kStageBytes<TOKENS, TILES> + kBarrierBytes + kAlign;
// Bytes the TMA copies of a step bring (boxes past the tensor's edges count whole).
template <int TOKENS, int TILES>
constexpr uint32_t kStageTx =
    kXBytes<TOKENS> + kWordBytes<TILES> + kScaleBytes<TILES> + kBlockCols<TILES> / 8 * 4;
constexpr int kWordBox = 32;  // columns of a chunk of the words box: 128 bytes

// d += a b (d = a b where `accumulate` is 0) for one m64nNk16 tile: A (64 x 16 float16) from
// registers, B (16 x N float16, K-major, 128-byte swizzle) from shared memory through `desc`,
// float32 sums.
template <int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc,
                                         int accumulate);

#if FERRULE_WGMMA
template <>
__device__ __forceinline__ void wgmma_rs<16>(float (&d)[8], const uint32_t (&a)[4], uint64_t desc,
                                               int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7"
      "}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs<32>(float (&d)[16], const uint32_t (&a)[4], uint64_t desc,
                                               int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
      "}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t desc,
                                               int accumulate) {
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
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t desc,
                                               int accumulate) {
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
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
}

template <>
__device__ __forceinline__ void wgmma_rs<256>(float (&d)[128], const uint32_t (&a)[4], uint64_t desc,
                                               int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, {%128, %129, %130, %131}, %132, p, 1, 1, 0;\n}\n"
      :
        "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),
        "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),
        "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),
        "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),
        "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),
        "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),
        "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]),
        "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]),
        "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
        "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]),
        "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]),
        "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]),
        "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]),
        "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]),
        "+f"(d[126]), "+f"(d[127])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(accumulate));
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
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  emulated_wgmma_commit();
#endif
}

// Waits until at most kPending of this warpgroup's wgmma groups are in flight.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
#if FERRULE_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  emulated_wgmma_wait(kPending);
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
__device__ __forceinline__ uint32_t shared_address(const void* p, const void* base = nullptr) {
#ifdef __CUDA_ARCH__
  (void)base;
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#else
  return static_cast<uint32_t>(static_cast<const char*>(p) - static_cast<const char*>(base));
#endif
}

// The block's dynamic shared memory, as a pointer and as a shared-space address: the helpers
// below take byte offsets into it, which give the address with one addition. (Converting a
// pointer (cvta) took an S2UR and dependent uniform instructions on sm_90 each time, on the
// consumers' critical path: ncu.)
struct Shared {
  char* base;
  uint32_t address;
#if FERRULE_WGMMA
  __device__ __forceinline__ uint32_t at(int offset) const {
    return address + static_cast<uint32_t>(offset);
  }
#endif
#ifdef FERRULE_GEMV_EMULATED
  uint64_t* barrier(int offset) const { return reinterpret_cast<uint64_t*>(base + offset); }
#endif
};

// A descriptor of a K-major operand tile in the 128-byte swizzle at shared address `address`:
// rows of 128 bytes, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t descriptor(uint32_t address) {
  return static_cast<uint64_t>((address >> 4) & 0x3FFFu) | (uint64_t{1} << 16) |
         (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

template <int N>
__device__ __forceinline__ void mma_step(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc,
                                         const char* base, int accumulate) {
#if FERRULE_WGMMA
  (void)base;
  wgmma_rs<N>(d, a, desc, accumulate);
#elif defined(__CUDA_ARCH__)
  (void)d; (void)a; (void)desc; (void)base; (void)accumulate;
  __trap();  // the binding refuses devices other than sm_90
#elif defined(FERRULE_GEMV_EMULATED)
  emulated_wgmma(d, N, a, desc, base, accumulate != 0);  // tests/emulation/cuda_host_shim.h
#endif
}

// mbarriers at byte `bar` of the block's shared memory `sh`: init with the arrivals a phase
// expects, arrive, and wait for the phase of `parity` (the emulation's are words it updates
// atomically).
__device__ __forceinline__ void barrier_init(const Shared& sh, int bar, uint32_t count) {
#if FERRULE_WGMMA  // sm_90a; elsewhere the binding refuses the kernel
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(sh.at(bar)), "r"(count) : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)sh;
  emulated_barrier_init(sh.barrier(bar), count);
#else
  (void)sh; (void)bar; (void)count;
#endif
}

__device__ __forceinline__ void barrier_arrive(const Shared& sh, int bar) {
#if FERRULE_WGMMA  // sm_90a; elsewhere the binding refuses the kernel
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(sh.at(bar)) : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)sh;
  emulated_barrier_arrive(sh.barrier(bar));
#else
  (void)sh; (void)bar;
#endif
}

// Arrives and expects `bytes` more of TMA copies before the phase completes.
__device__ __forceinline__ void barrier_expect(const Shared& sh, int bar, uint32_t bytes) {
#if FERRULE_WGMMA  // sm_90a; elsewhere the binding refuses the kernel
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sh.at(bar)),
               "r"(bytes)
               : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)sh;
  emulated_barrier_arrive(sh.barrier(bar), bytes);
#else
  (void)sh; (void)bar; (void)bytes;
#endif
}

// The box of a 2-D `map` at element (c0, c1) into byte `dst` of the block's shared memory `sh`
// by TMA; its bytes complete the mbarrier at byte `bar`.
__device__ __forceinline__ void tma_load(const Shared& sh, int dst, const TensorMap& map, int c0,
                                         int c1, int bar) {
#if FERRULE_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3}], [%4];" ::"r"(sh.at(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(sh.at(bar))
      : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)sh;
  emulated_tma_load(sh.base + dst, map, c0, c1, 0, sh.barrier(bar));
#else
  (void)sh; (void)dst; (void)map; (void)c0; (void)c1; (void)bar;
#endif
}

// The same for a 3-D `map` at element (c0, c1, c2).
__device__ __forceinline__ void tma_load(const Shared& sh, int dst, const TensorMap& map, int c0,
                                         int c1, int c2, int bar) {
#if FERRULE_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4}], [%5];" ::"r"(sh.at(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(c0), "r"(c1), "r"(c2), "r"(sh.at(bar))
      : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)sh;
  emulated_tma_load(sh.base + dst, map, c0, c1, c2, sh.barrier(bar));
#else
  (void)sh; (void)dst; (void)map; (void)c0; (void)c1; (void)c2; (void)bar;
#endif
}

__device__ __forceinline__ void barrier_wait(const Shared& sh, int bar, uint32_t parity) {
#if FERRULE_WGMMA  // sm_90a; elsewhere the binding refuses the kernel
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(sh.at(bar)), "r"(parity)
        : "memory");
  }
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  (void)sh;
  emulated_barrier_wait(sh.barrier(bar), parity);
#else
  (void)sh; (void)bar; (void)parity;
#endif
}

// A barrier of the consumers' 256 threads (named barrier 1; __syncthreads is 0).
__device__ __forceinline__ void consumers_sync() {
#if FERRULE_WGMMA
  asm volatile("bar.sync 1, %0;" ::"n"(128 * kConsumers) : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  emulated_named_barrier(128 * kConsumers);
#endif
}

// Orders this thread's shared-memory stores before the async proxy's reads (wgmma's), once
// an mbarrier arrival publishes them.
__device__ __forceinline__ void fence_async_shared() {
#if FERRULE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
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

// One step's group parameters for a consumer thread's 2 TILES columns (up to 4) and, up to 32
// rows, where the consumer reads them ahead, the step's packed words (a unit, 32 rows of K, is
// word rows 4 u .. 4 u + 3).
struct Held {
  int4 words[2][4];  // [unit][word row]: columns col .. (x, y only at TILES 1)
  uint32_t zero[4];  // each column's (-(1024 + z), -(64 + z)) (float16 bits), for byte_codes
  uint32_t scale[4];  // each column's scale twice (float16 bits), where fragments are scaled
  uint2 scales;  // the columns' scales (float16 bits), where the sums are scaled
  int stage;     // the step's stage in the ring
};

// The codes of rows (2 c, 2 c + 1) of a word's 8 (byte c) less the zero point, as a float16
// pair, exact: PRMT puts byte c at bytes 0 and 2, one LOP3 makes (1024 + lo, 1024 + 16 hi) of
// it, one HFMA2 by (1, 1/16) adds `zero`, (-(1024 + z), -(64 + z)). `select` is PRMT's
// selector for byte c: 0x4040 + 0x0101 c (byte 4, the zero register's, elsewhere).
__device__ __forceinline__ uint32_t byte_codes(uint32_t w, uint32_t select, uint32_t zero) {
#ifdef __CUDA_ARCH__
  uint32_t twice;
  asm("prmt.b32 %0, %1, 0, %2;" : "=r"(twice) : "r"(w), "r"(select));
#else
  const uint32_t b = (w >> (8 * (select & 3u))) & 0xFFu;
  const uint32_t twice = b | (b << 16);
#endif
  const __half2 unit_sixteenth = bits_half2(0x2C003C00u);  // (1, 1/16)
  return half2_bits(__hfma2(bits_half2(common::and_or<0x00F0000Fu, 0x64006400u>(twice)),
                            unit_sixteenth, bits_half2(zero)));
}

// Fragments of one unit (32 rows of K): [K step s][tile j][register].
template <int kT>
using UnitFragments = uint32_t[2][kT][4];

// Units (32 rows of K) of wgmmas a consumer keeps in flight from 64 rows: 3 at 64 rows (H200,
// against 2: 2-9% faster at 64 rows of every Llama-3 layer, e.g. 28672x8192 1.51x of fp16
// against 1.38x, 14336x4096 1.28x / 1.22x; 4 was slower), 4 for the one-tile 128-row block
// (3-4% faster than 2 where the plan takes it: 4096x4096 at 256 rows 0.84x / 0.81x,
// 14336x4096 at 128 1.10x / 1.07x), 2 for the rest (3 and 4 were even or slower with 256-row
// tiles, and the two-tile 128-row block spills at 3: up to 35% slower).
// -DFERRULE_WGMMA_PENDING=N sets every tile's.
#ifndef FERRULE_WGMMA_PENDING
#define FERRULE_WGMMA_PENDING 0
#endif
template <int TOKENS, int TILES>
constexpr int kPending = FERRULE_WGMMA_PENDING > 0       ? FERRULE_WGMMA_PENDING
                         : TOKENS == 64                  ? 3
                         : TOKENS == 128 && TILES == 1 ? 4
                                                         : 2;

// Up to 32 rows the fragments hold the exact q - z and the scale multiplies each step's float32
// sums (kept apart from the total until its wgmmas are done); from 64 rows, where that would
// take more registers and more multiplications than it saves, the scale multiplies the
// fragments. (-DFERRULE_WGMMA_SCALE_SUMS_ROWS=0 scales the fragments at every tile, so the
// few-row loop no longer waits on each step's wgmmas: slower, on an H100 by 6-12% at 4-16
// rows, on an H200 by 2-11% at 4-32 rows: bench/cuda_gemv_variants.py.)
#ifndef FERRULE_WGMMA_SCALE_SUMS_ROWS
#define FERRULE_WGMMA_SCALE_SUMS_ROWS 32
#endif
template <int TOKENS>
constexpr bool kScaleSums = TOKENS <= FERRULE_WGMMA_SCALE_SUMS_ROWS;

// gather_in_kernel: producer thread t (warps 1-3) gathers x[:, perm] into the x tiles of the
// steps (step - step_begin) % 3 == t / 32 - 1 of [step_begin, step_end): lane l the 16-byte
// chunk l % 8 (8 rows of K) of row l / 8, in the 128-byte swizzle the TMA box would have.
// Each lane loads its 8 perm entries, waits for the stage to be
// free, reads its 8 values of x (L2-resident: one round trip), stores, fences for the async
// proxy and arrives; in a stage's first round it also zeroes the tile's rows past M (TMA's box
// would). Three warps keep three steps in flight. For up to 4 rows (wgmma_gathers_first's
// kWgmmaGatherRows, one chunk a lane); each column block repeats the gather.
template <int TOKENS, int TILES, typename Empty, typename Full>
__device__ __forceinline__ void gather_tiles(const Problem& p, const Shared& sh, int t, int row0,
                                             int step_begin, int step_end, Empty empty,
                                             Full full) {
  constexpr int S = kStages<TOKENS>;
  const int lane = t & 31;
  const int row = lane >> 3;
  const int chunk = lane & 7;
  const int valid = min(TOKENS, p.M - row0);  // rows of the tile that exist
  const int swizzled = row * 128 + ((chunk ^ (row & 7)) << 4);
  const __half* const x = static_cast<const __half*>(p.x) +
                          static_cast<int64_t>(row0 + min(row, valid - 1)) * p.x_stride_m;
  const int4* const perm = reinterpret_cast<const int4*>(p.perm);
  common::wait_for_inputs();  // x may be the previous kernel's output
  for (int step = step_begin + (t >> 5) - 1; step < step_end; step += 3) {
    const int n = step - step_begin;
    const int stage = n % S;
    const int round = n / S;
    int4 a = make_int4(0, 0, 0, 0), b = a;
    if (row < valid) {
      a = __ldg(perm + 16 * step + 2 * chunk);  // perm[64 step + 8 chunk ..]
      b = __ldg(perm + 16 * step + 2 * chunk + 1);
    }
    if (round > 0) barrier_wait(sh, empty(stage), static_cast<uint32_t>(round - 1) & 1u);
    char* const tile = sh.base + stage * kStageBytes<TOKENS, TILES>;
    if (round == 0) {  // rows past M: zeros, as TMA's box would have (never written again)
      for (int i = lane; i < (TOKENS - valid) * 8; i += 32) {
        *reinterpret_cast<uint4*>(tile + (valid + i / 8) * 128 + ((i % 8) << 4)) =
            make_uint4(0u, 0u, 0u, 0u);
      }
    }
    if (row < valid) {
      *reinterpret_cast<uint4*>(tile + swizzled) = common::gather8(x, p.x_stride_k, a, b);
    }
    fence_async_shared();
    barrier_arrive(sh, full(stage));
  }
}

template <int TOKENS, int TILES>
__global__ void __launch_bounds__(kThreads, 1)
    gptq_wgmma_kernel(const __grid_constant__ Problem p, const __grid_constant__ Maps maps) {
  constexpr int kSums = TOKENS / 2;  // float32 sums a consumer thread holds per tile
  constexpr int kT = TILES;
  constexpr int kCols = 2 * kT;  // columns a consumer thread holds
  constexpr int kBlock = kBlockCols<TILES>;
  constexpr int S = kStages<TOKENS>;
  static_assert(S >= 3 && S <= kMaxStages, "stages");
#ifdef FERRULE_GEMV_EMULATED
  // A cluster's blocks run at once in the emulation: a copy a rank.
  struct alignas(1024) RankShared {
    char bytes[kSharedBytes<TOKENS, TILES>];
  };
  __shared__ RankShared ranks[kMaxClusterSplits];
  char* const raw = ranks[p.in_clusters ? blockIdx.y : 0].bytes;
#else
  extern __shared__ __align__(16) char raw[];
#endif
  __shared__ bool last_block;
  const uint32_t raw_address = shared_address(raw, raw);
  char* const smem = raw + ((kAlign - raw_address % kAlign) % kAlign);
  const uint32_t smem_address = shared_address(smem, raw);
  const Shared sh{smem, smem_address};
  // The mbarriers after the stages (byte offsets): full(s), stage s has landed (the producer's
  // expected bytes); empty(s), the consumers' 256 threads are done with it.
  auto full = [](int stage) { return S * kStageBytes<TOKENS, TILES> + 8 * stage; };
  auto empty = [](int stage) { return S * kStageBytes<TOKENS, TILES> + 8 * (kMaxStages + stage); };

  const int tid = threadIdx.x;
  const int role = tid >> 7;  // 0: producer; 1, 2: consumers
  const int N = p.N;
  const int M = p.M;
  const int K = p.K;
  const int row0 = blockIdx.z * TOKENS;
  const int col0 = blockIdx.x * kBlock;
  const int steps = K / kStepRows;
  const int step_begin = blockIdx.y * p.units_per_split;
  const int step_end = min(step_begin + p.units_per_split, steps);
  const int splits = gridDim.y;

  // With p.perm (gather_in_kernel: a few act-order rows) producer warps 1-3 gather x's tiles
  // themselves, a warp a step, and its 32 lanes arrive on the full barrier besides the thread
  // that expects the TMA bytes.
  const bool gathers = p.perm != nullptr;
  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      barrier_init(sh, full(s), gathers ? 1 + 32 : 1);
      barrier_init(sh, empty(s), 128 * kConsumers);
    }
  }
  __syncthreads();

  // The consumer thread's first column (4 g of its warp's 32, 32 w of its warpgroup's 128).
  const int t = tid & 127;
  const int lane = t & 31;
  const int warp = t >> 5;
  const int g = lane >> 2;
  const int c = lane & 3;
  const int local_col = (role - 1) * kGroupCols<TILES> + warp * 16 * kT + kCols * g;
  const int col = col0 + local_col;

  if (role == 0) {
    // Producer: one thread issues each step's TMA copies into its stage once the consumers
    // have freed it: four copies (x, the words in one 3-D box, scales, zero points). (Eleven,
    // the words in 32-column boxes, held the consumers up at up to 64 rows: ~150 dependent
    // instructions a step, ~1,000 cycles, ncu; four threads each issuing every fourth step
    // gained nothing once the copies were four. Copied with cp.async by the whole warpgroup,
    // the address arithmetic, ~110-290 instructions a step, did too.)
    set_registers<false, 40>();
    if (t == 0) {
      constexpr int kScales = kXBytes<TOKENS> + kWordBytes<TILES>;
      // The step's weight copies (words, scales, zero points) into `stage`, whose full barrier
      // then expects the x tile's bytes as well.
      auto load_weight = [&](int step, int stage) {
        const int base = stage * kStageBytes<TOKENS, TILES>;
        const int bar = full(stage);
        barrier_expect(sh, bar, kStageTx<TOKENS, TILES> - (gathers ? kXBytes<TOKENS> : 0));
        tma_load(sh, base + kXBytes<TOKENS>, maps.words, 0, step * 8, col0 / kWordBox, bar);
        const int group = static_cast<int>(common::group_of(p, step * kStepRows));
        tma_load(sh, base + kScales, maps.scales, col0, group, bar);
        tma_load(sh, base + kScales + kScaleBytes<TILES>, maps.zeros, col0 / 8, group, bar);
      };
      auto load_x = [&](int step, int stage) {
        if (!gathers) tma_load(sh, stage * kStageBytes<TOKENS, TILES>, maps.x, step * kStepRows, row0, full(stage));
      };
      // The first round of the ring's weights goes out before x is ready (no kernel writes
      // the weight), while the previous kernel on the stream finishes.
      const int first = min(step_end, step_begin + S);
      for (int step = step_begin; step < first; ++step) load_weight(step, step - step_begin);
      common::wait_for_inputs();  // x may be the previous kernel's output
      for (int step = step_begin; step < first; ++step) load_x(step, step - step_begin);
      int stage = 0;
      uint32_t phase = 1;  // of the empty barriers' use: the stage's previous round
      for (int step = first; step < step_end; ++step) {
        barrier_wait(sh, empty(stage), phase ^ 1u);
        load_weight(step, stage);
        load_x(step, stage);
        if (++stage == S) {
          stage = 0;
          phase ^= 1u;
        }
      }
    } else if (gathers && t >= 32) {
      gather_tiles<TOKENS, TILES>(p, sh, t, row0, step_begin, step_end, empty, full);
    }
    common::release_dependents();
    if (p.in_clusters) {  // the consumers' two cluster barriers (finish_in_cluster) count it
      __syncwarp();
      common::cluster_sync();
      common::cluster_sync();
    }
  } else {
    // Consumer: reads a step's words from its stage, dequantizes them a 32-row unit at a time
    // into fragments and issues each unit's wgmmas while dequantizing the ones after.
    set_registers<true, 232>();
    float acc[kT][kSums];
#pragma unroll
    for (int j = 0; j < kT; ++j) {
#pragma unroll
      for (int i = 0; i < kSums; ++i) acc[j][i] = 0.0f;
    }
    const int zero_shift = 4 * (col % 8);
    // The thread's bytes in a stage: its words in box local_col / 32 (1 KB: 8 word rows of 32
    // columns), word row r at 16-byte chunk (local_col % 32) / 4 ^ r (the 128-byte swizzle), 8
    // bytes into it at TILES 1 for odd local_col / 2; its scales and zero points.
    const int words_at = kXBytes<TOKENS> + 1024 * (local_col / kWordBox) + 4 * (local_col % 4);
    const int chunk_at = ((local_col % kWordBox) / 4) << 4;
    const int scale_at = kXBytes<TOKENS> + kWordBytes<TILES> + 2 * local_col;
    const int zero_at = kXBytes<TOKENS> + kWordBytes<TILES> + kScaleBytes<TILES> + 4 * (local_col / 8);
    const uint32_t select = 0x4040u + 0x0101u * static_cast<uint32_t>(c);  // byte c: rows 2 c, 2 c + 1
    // Word rows 4 u .. 4 u + 3 of the step in `stage` (unit u), the thread's columns.
    auto read_unit = [&](int stage, int u, int4 (&w)[4]) {
      const char* const base = smem + stage * kStageBytes<TOKENS, TILES> + words_at;
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = 4 * u + r;
        const char* const at = base + 128 * row + (chunk_at ^ (row << 4));
        if constexpr (kT == 2) {
          w[r] = *reinterpret_cast<const int4*>(at);
        } else {
          const uint2 two = *reinterpret_cast<const uint2*>(at);
          w[r] = make_int4(static_cast<int>(two.x), static_cast<int>(two.y), 0, 0);
        }
      }
    };
    // Steps are taken in order: the next one's stage and the parity of its round in the ring.
    int next_stage = 0;
    uint32_t next_round = 0;
    // Waits for the next step's stage, then reads the thread's scales and zero points (and, up
    // to 32 rows, where the loop waits on them, its words).
    auto take = [&](Held& h) {
      h.stage = next_stage;
      barrier_wait(sh, full(next_stage), next_round);
      if (++next_stage == S) {
        next_stage = 0;
        next_round ^= 1u;
      }
      if constexpr (kScaleSums<TOKENS>) {
        read_unit(h.stage, 0, h.words[0]);
        read_unit(h.stage, 1, h.words[1]);
      }
      const char* const base = smem + h.stage * kStageBytes<TOKENS, TILES>;
      const uint32_t zeros = *reinterpret_cast<const uint32_t*>(base + zero_at);
#pragma unroll
      for (int k = 0; k < kCols; ++k) {
        h.zero[k] = 0xD400E400u + ((zeros >> (zero_shift + 4 * k)) & 0xFu) * 0x00100001u;
      }
      h.scales = kT == 2 ? *reinterpret_cast<const uint2*>(base + scale_at)
                         : make_uint2(*reinterpret_cast<const uint32_t*>(base + scale_at), 0u);
      if constexpr (!kScaleSums<TOKENS>) {
#pragma unroll
        for (int k = 0; k < kCols; ++k) {
          const uint32_t pair = k < 2 ? h.scales.x : h.scales.y;
          h.scale[k] = ((k & 1) ? pair >> 16 : pair & 0xFFFFu) * 0x00010001u;
        }
      }
    };
    // (q - z) (times s from 64 rows) of each code of unit u (32 rows of K) of the held step, as
    // the fragments of its 2 k16 wgmmas a tile: register pair i of a column is byte c of its
    // word row 4 u + i, rows 16 s + 8 h + 2 c and the next for i = 2 s + h, so x stays in order.
    auto dequantize = [&](const Held& h, int u, UnitFragments<kT>& a) {
      int4 read[4];
      if constexpr (!kScaleSums<TOKENS>) read_unit(h.stage, u, read);
      const int4* const words = kScaleSums<TOKENS> ? h.words[u] : read;
      uint32_t wp[kCols][4];  // [column k of the list][word row 4 u + i]
#pragma unroll
      for (int k = 0; k < kCols; ++k) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const uint32_t v = byte_codes(column_word(words[i], k), select, h.zero[k]);
          wp[k][i] = kScaleSums<TOKENS> ? v : half2_bits(__hmul2(bits_half2(v), bits_half2(h.scale[k])));
        }
      }
#pragma unroll
      for (int s = 0; s < 2; ++s) {
#pragma unroll
        for (int j = 0; j < kT; ++j) {
          a[s][j][0] = wp[2 * j][2 * s];
          a[s][j][1] = wp[2 * j + 1][2 * s];
          a[s][j][2] = wp[2 * j][2 * s + 1];
          a[s][j][3] = wp[2 * j + 1][2 * s + 1];
        }
      }
    };
    const uint64_t first_desc = descriptor(smem_address);  // stage 0, k16 step 0
    const int units = 2 * (step_end - step_begin);  // of 32 rows: two a step
    // Issues the wgmmas of unit u (0 or 1) of the step in `stage`, fragments `a`, into `sums`
    // (from zero at the step's first where `restart`).
    auto issue = [&](int stage, int u, const UnitFragments<kT>& a, float (&sums)[kT][kSums],
                     bool restart) {
      wgmma_fence();
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        // The start address field (address / 16) moves with the stage and the k16 step.
        const uint64_t desc = first_desc + ((stage * kStageBytes<TOKENS, TILES> + 32 * (2 * u + s)) >> 4);
#pragma unroll
        for (int j = 0; j < kT; ++j) {
          mma_step<TOKENS>(sums[j], a[s][j], desc, raw, restart && u == 0 && s == 0 ? 0 : 1);
        }
      }
      wgmma_commit();
    };
#pragma unroll
    for (int j = 0; j < kT; ++j) {
#pragma unroll
      for (int i = 0; i < kSums; ++i) pin(acc[j][i]);
    }
    if constexpr (kScaleSums<TOKENS>) {
      // Up to 32 rows: each step's sums go to `part` (its first wgmmas start from zero) and,
      // once its wgmmas are done, into acc times the step's scales. (ptxas serializes every
      // wgmma of a kernel that reads sums while any wgmma is in flight, so each step is waited
      // for before its sums are read; its units' wgmmas run while the second unit and the
      // next step's first are dequantized, and the next step is taken (its words read from
      // shared memory) a unit before it is dequantized.)
      float part[kT][kSums];
#pragma unroll
      for (int j = 0; j < kT; ++j) {
#pragma unroll
        for (int i = 0; i < kSums; ++i) part[j][i] = 0.0f;
      }
      // acc += the step's sums times its columns' scales; frees its stage.
      auto fold = [&](const Held& h) {
        const float scale[4] = {__low2float(bits_half2(h.scales.x)), __high2float(bits_half2(h.scales.x)),
                                __low2float(bits_half2(h.scales.y)), __high2float(bits_half2(h.scales.y))};
#pragma unroll
        for (int j = 0; j < kT; ++j) {
#pragma unroll
          for (int i = 0; i < kSums; ++i) {
            pin(part[j][i]);  // after the wait that finished them
            acc[j][i] = fmaf(part[j][i], scale[2 * j + (i % 4) / 2], acc[j][i]);
          }
        }
        barrier_arrive(sh, empty(h.stage));
      };
      // One step held in `h`, the next (if any) taken into `next` meanwhile; on return the
      // next step's first unit is dequantized into frag[0].
      Held held[2];
      UnitFragments<kT> frag[3];
      // Both units' wgmmas queue on the same sums while the second unit and then the next
      // step's first are dequantized (into fragments no queued wgmma reads); one wait a step.
      auto run_step = [&](Held& h, Held& next, bool more, const UnitFragments<kT>& first,
                          UnitFragments<kT>& second, UnitFragments<kT>& following) {
        issue(h.stage, 0, first, part, true);
        if (more) take(next);
        dequantize(h, 1, second);
        issue(h.stage, 1, second, part, true);
        if (more) dequantize(next, 0, following);
        wgmma_wait<0>();
        fold(h);
      };
      if (units > 0) {
        take(held[0]);
        dequantize(held[0], 0, frag[0]);
      }
      for (int v = 0; v < units; v += 4) {  // two steps
        run_step(held[0], held[1], v + 2 < units, frag[0], frag[1], frag[2]);
        if (v + 2 < units) run_step(held[1], held[0], v + 4 < units, frag[2], frag[1], frag[0]);
      }
    } else {
      // From 64 rows: issues unit v's wgmmas with fragments `a`, leaving them in flight; once
      // unit v - D's are done (and with them, at a step's second unit, the step's stage),
      // dequantizes unit v + D into `next` (unit v - D's fragments). D units stay queued on
      // the tensor cores while another is dequantized.
      constexpr int D = kPending<TOKENS, TILES>;
      static_assert(S >= D + 1 && D >= 2, "the ring holds the steps of 2 D units at once");
      Held held;  // the step of the next unit to dequantize
      int done_stage = 0;  // the stage of the step whose wgmmas finish next
      auto run_unit = [&](int v, int stage, const UnitFragments<kT>& a, UnitFragments<kT>& next) {
        issue(stage, v & 1, a, acc, false);
        wgmma_wait<D>();  // unit v - D's wgmmas
        if (v >= D && ((v - D) & 1)) {
          barrier_arrive(sh, empty(done_stage));
          if (++done_stage == S) done_stage = 0;
        }
        const int ahead = v + D;
        if (ahead < units) {
          if ((ahead & 1) == 0) take(held);
          dequantize(held, ahead & 1, next);
        }
      };
      UnitFragments<kT> frag[2 * D];
      if (units > 0) {  // a step, two units, at least
#pragma unroll
        for (int v = 0; v < D; ++v) {
          if (v >= 2 && v >= units) break;
          if ((v & 1) == 0) take(held);
          dequantize(held, v & 1, frag[v]);
        }
      }
      int stage = 0;  // of the units issued next
      // Unit v (a step's first) and v + 1 from fragments a0 and a1, dequantizing units v + D
      // and v + 1 + D into n0 and n1 (of the ring of 2 D).
      auto run_step = [&](int v, const UnitFragments<kT>& a0, UnitFragments<kT>& n0,
                          const UnitFragments<kT>& a1, UnitFragments<kT>& n1) {
        run_unit(v, stage, a0, n0);
        run_unit(v + 1, stage, a1, n1);
        if (++stage == S) stage = 0;
      };
      constexpr int R = 2 * D;
      for (int first = 0; first < units; first += R) {  // units come in pairs
#pragma unroll
        for (int i = 0; i < R; i += 2) {
          if (i == 0 || first + i < units) {
            run_step(first + i, frag[i], frag[(i + D) % R], frag[i + 1], frag[(i + 1 + D) % R]);
          }
        }
      }
      wgmma_wait<0>();
    }
#pragma unroll
    for (int j = 0; j < kT; ++j) {
#pragma unroll
      for (int i = 0; i < kSums; ++i) pin(acc[j][i]);
    }
    common::wait_for_inputs();  // the output's memory may be the previous kernel's
    common::release_dependents();
    // Sum i of tile j is column col + 2 j + (i % 4) / 2 of the list, row 8 (i / 4) + 2 c + i % 2.
    // each_row(f) calls f(at, v) for each of the thread's rows of x below M: at = token * N +
    // col, v its kCols sums (columns col, col + 1, ...).
    __half* __restrict__ out = static_cast<__half*>(p.out);
    auto each_row = [&](auto&& f) {
      if (col >= N) return;  // N % 32 == 0: the thread's columns are all in or all out
#pragma unroll
      for (int i = 0; i < kSums / 4; ++i) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int token = row0 + 8 * i + 2 * c + e;
          if (token >= M) continue;
          float v[kCols];
#pragma unroll
          for (int j = 0; j < kT; ++j) {
            v[2 * j] = acc[j][4 * i + e];
            v[2 * j + 1] = acc[j][4 * i + 2 + e];
          }
          f(static_cast<size_t>(token) * N + col, v);
        }
      }
    };
    auto store_out = [&](size_t at, const float (&v)[kCols]) {
      const uint32_t lo = half2_bits(__floats2half2_rn(v[0], v[1]));
      if constexpr (kT == 2) {
        const uint32_t hi = half2_bits(__floats2half2_rn(v[2], v[3]));
        *reinterpret_cast<uint2*>(out + at) = make_uint2(lo, hi);
      } else {
        *reinterpret_cast<uint32_t*>(out + at) = lo;
      }
    };
    const int worker = t + 128 * (role - 1);
    const int tile = blockIdx.z * gridDim.x + blockIdx.x;
    if (splits == 1) {
      each_row(store_out);
    } else if (p.in_clusters) {
      // Split-K in a thread block cluster (the tile's splits; rank = blockIdx.y): the sums of
      // 8-token group g (acc[j][4 g .. 4 g + 3]) belong to rank g % splits. Once every block
      // of the cluster is done with its ring (the first barrier), each stores the groups it
      // does not own into their owners' rings (distributed shared memory), slot [source rank
      // among the others][g / splits][tile j][worker] of float4s; after the second, each adds
      // what it was sent to its own groups and writes them. No global workspace or counter.
      constexpr int kGroups = kSums / 4;
      const int rank = static_cast<int>(blockIdx.y);
      const int per_rank = (kGroups + splits - 1) / splits;
      auto slot_at = [&](int slot, int g, int j) {
        return 16 * (((slot * per_rank + g / splits) * kT + j) * 128 * kConsumers + worker);
      };
      common::cluster_sync();
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        const int owner = g % splits;
        if (owner == rank) continue;
        const int slot = rank < owner ? rank : rank - 1;
#pragma unroll
        for (int j = 0; j < kT; ++j) {
          const float4 v = make_float4(acc[j][4 * g], acc[j][4 * g + 1], acc[j][4 * g + 2], acc[j][4 * g + 3]);
#if FERRULE_WGMMA
          uint32_t remote;
          asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(sh.at(slot_at(slot, g, j))), "r"(owner));
          asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(remote), "f"(v.x), "f"(v.y), "f"(v.z),
                       "f"(v.w)
                       : "memory");
#elif defined(FERRULE_GEMV_EMULATED) && !defined(__CUDA_ARCH__)
          *reinterpret_cast<float4*>(ranks[owner].bytes + slot_at(slot, g, j)) = v;
#else
          (void)v, (void)slot;  // no wgmma, no launch (the binding refuses other devices)
#endif
        }
      }
      common::cluster_sync();
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        if (g % splits != rank) continue;
        float sum[kT][4];
#pragma unroll
        for (int j = 0; j < kT; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) sum[j][e] = acc[j][4 * g + e];
        }
        for (int slot = 0; slot < splits - 1; ++slot) {
#pragma unroll
          for (int j = 0; j < kT; ++j) {
            const float4 v = *reinterpret_cast<const float4*>(smem + slot_at(slot, g, j));
            sum[j][0] += v.x;
            sum[j][1] += v.y;
            sum[j][2] += v.z;
            sum[j][3] += v.w;
          }
        }
        if (col >= N) continue;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int token = row0 + 8 * g + 2 * c + e;
          if (token >= M) continue;
          float v[kCols];
#pragma unroll
          for (int j = 0; j < kT; ++j) {
            v[2 * j] = sum[j][e];
            v[2 * j + 1] = sum[j][2 + e];
          }
          store_out(static_cast<size_t>(token) * N + col, v);
        }
      }
    } else {
      // Split-K: every block writes its plane of partial sums; the consumers of the tile's last
      // block add the planes up (the producer has left: at its 40 registers ptxas would spill
      // this code).
      each_row([&](size_t at, const float (&v)[kCols]) {
        float* const partial = p.workspace + static_cast<size_t>(blockIdx.y) * M * N + at;
        if constexpr (kT == 2) {
          *reinterpret_cast<float4*>(partial) = make_float4(v[0], v[1], v[2], v[3]);
        } else {
          *reinterpret_cast<float2*>(partial) = make_float2(v[0], v[1]);
        }
      });
      if (common::is_last_split(p.counters, tile, splits, worker, last_block, consumers_sync)) {
        common::add_up<__half, 128 * kConsumers>(p.workspace, out, M, N, row0, TOKENS, col0,
                                                 kBlock, splits, worker);
      }
    }
  }
}

// One 2-D map: `dim0` elements of `element` bytes a row (a multiple of 16 bytes apart), `dim1`
// rows, boxes of box0 x box1; zeros outside the tensor. With `dim2` > 1, a 3-D map whose planes
// are `plane_bytes` apart (strides in any order) and boxes box0 x box1 x box2.
cudaError_t make_map(TensorMap& map, const void* base, bool is_f16, uint64_t dim0, uint64_t dim1,
                     uint64_t row_bytes, uint32_t box0, uint32_t box1, bool swizzle,
                     uint64_t dim2 = 1, uint64_t plane_bytes = 0, uint32_t box2 = 1) {
#ifdef FERRULE_GEMV_EMULATED
  map = TensorMap{static_cast<const char*>(base), dim0, dim1, row_bytes, box0, box1, 2u + 2u * !is_f16,
                  swizzle, dim2, plane_bytes, box2};
  return cudaSuccess;
#else
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
#if CUDART_VERSION >= 12050
    const cudaError_t status =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t status =
        cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &fn, cudaEnableDefault, &found);
#endif
    return status == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)
               : nullptr;
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[3] = {dim0, dim1, dim2};
  const cuuint64_t strides[2] = {row_bytes, plane_bytes};
  const cuuint32_t box[3] = {box0, box1, box2};
  const cuuint32_t unit[3] = {1, 1, 1};
  const CUresult r = encode(&map, is_f16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_INT32,
                            dim2 > 1 ? 3 : 2, const_cast<void*>(base), dims, strides, box, unit,
                            CU_TENSOR_MAP_INTERLEAVE_NONE,
                            swizzle ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
#endif
}

cudaError_t make_maps(const Problem& p, int tokens, int tiles, Maps& maps) {
  const int block_cols = block_cols_for(tiles);
  const uint64_t groups = (static_cast<uint64_t>(p.K) + p.group_size - 1) / p.group_size;
  // With perm the producer gathers x itself (gather_tiles): no map, and x may have any strides.
  cudaError_t e = p.perm != nullptr ? cudaSuccess
                                    : make_map(maps.x, p.x, true, p.K, p.M, 2ull * p.x_stride_m,
                                               kStepRows, tokens, true);
  if (e == cudaSuccess) {
    // The step's words in one box: 32 columns (128 bytes) by 8 word rows by the block's
    // block_cols / 32 column chunks (128 bytes apart), landing chunk after chunk.
    e = make_map(maps.words, p.qweight, false, kWordBox, p.K / 8, 4ull * p.N, kWordBox, 8, true,
                 p.N / kWordBox, 4ull * kWordBox, block_cols / kWordBox);
  }
  if (e == cudaSuccess) {
    e = make_map(maps.scales, p.scales, true, p.N, groups, 2ull * p.N, block_cols, 1, false);
  }
  if (e == cudaSuccess) {
    e = make_map(maps.zeros, p.qzeros, false, p.N / 8, groups, p.N / 2, block_cols / 8, 1, false);
  }
  return e;
}

template <int TOKENS, int TILES>
struct Kernel {
  static constexpr auto kKernel = gptq_wgmma_kernel<TOKENS, TILES>;
  static int occupancy() {
    static const int blocks = common::resident_blocks(kKernel, kThreads, kSharedBytes<TOKENS, TILES>);
    return blocks;
  }
  // Clusters of `splits` blocks the GPU holds at once (2 to kMaxClusterSplits), asked once; the
  // emulation answers from `fallback` (the emulated GPU's blocks over `splits`) each time. 0
  // where what a block of such a cluster receives (finish in cluster: the other ranks' float4s
  // of its 8-token groups, for its 256 consumer threads and TILES tiles) would not fit its ring.
  static int64_t clusters(int splits, int64_t fallback) {
    constexpr int kGroups = TOKENS / 8;
    const int64_t received = int64_t{16} * 128 * kConsumers * TILES * (splits - 1) *
                             ((kGroups + splits - 1) / splits);
    if (received > int64_t{kStages<TOKENS>} * kStageBytes<TOKENS, TILES>) return 0;
    const int blocks = static_cast<int>(std::min<int64_t>(fallback, 1 << 20));
#ifdef FERRULE_GEMV_EMULATED
    return common::resident_clusters(kKernel, splits, kThreads, kSharedBytes<TOKENS, TILES>, blocks);
#else
    static int cached[kMaxClusterSplits + 1] = {};
    if (cached[splits] == 0) {
      cached[splits] = 1 + common::resident_clusters(kKernel, splits, kThreads, kSharedBytes<TOKENS, TILES>, blocks);
    }
    return cached[splits] - 1;
#endif
  }
  static cudaError_t launch(const Problem& p, cudaStream_t stream) {
    static const cudaError_t allowed = common::allow_shared(kKernel, kSharedBytes<TOKENS, TILES>);
    if (allowed != cudaSuccess) return allowed;
    Maps maps{};
    const cudaError_t made = make_maps(p, TOKENS, TILES, maps);
    if (made != cudaSuccess) return made;
    const dim3 grid((p.N + kBlockCols<TILES> - 1) / kBlockCols<TILES>, p.splits,
                    (p.M + TOKENS - 1) / TOKENS);
    return common::launch_in_clusters(kKernel, grid, p.in_clusters ? p.splits : 1, kThreads,
                                      kSharedBytes<TOKENS, TILES>, stream, p.pdl, p, maps);
  }
};

template <typename F>
auto dispatch(const Problem& p, F&& f) {
  switch (p.tokens) {
    case 16: return f(Kernel<16, 2>{});
    case 32: return f(Kernel<32, 2>{});
    case 64: return p.tiles == 1 ? f(Kernel<64, 1>{}) : f(Kernel<64, 2>{});
    case 128: return p.tiles == 1 ? f(Kernel<128, 1>{}) : f(Kernel<128, 2>{});
    default: return f(Kernel<256, 1>{});
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The tiles a block may take: `tokens` rows of x by `tiles` m64 tiles a consumer (128 tiles
// columns a block), as dispatch instantiates them.
struct Shape {
  int tokens;
  int tiles;
};
constexpr Shape kShapes[] = {{16, 2}, {32, 2}, {64, 2}, {64, 1}, {128, 2}, {128, 1}, {256, 1}};
bool is_shape(int tokens, int tiles) {
  for (const Shape& shape : kShapes) {
    if (shape.tokens == tokens && shape.tiles == tiles) return true;
  }
  return false;
}

// Blocks of `shape` the GPU holds at once.
int64_t resident_for(const Problem& p, Shape shape, int num_sms) {
  Problem q = p;
  q.tokens = shape.tokens;
  q.tiles = shape.tiles;
  return static_cast<int64_t>(num_sms) * dispatch(q, [](auto k) { return decltype(k)::occupancy(); });
}

// Whether `splits` blocks of `shape` may finish in a thread block cluster (the device has them,
// 2 to kMaxClusterSplits splits, what a block receives fits its ring), and then the blocks the
// GPU holds at once in such clusters (else 0).
int64_t cluster_resident(const Problem& p, Shape shape, int64_t splits, int num_sms) {
  if (!p.has_clusters || splits < 2 || splits > kMaxClusterSplits) return 0;
  Problem q = p;
  q.tokens = shape.tokens;
  q.tiles = shape.tiles;
  const int64_t blocks = resident_for(p, shape, num_sms);
  return splits * dispatch(q, [&](auto k) {
           return decltype(k)::clusters(static_cast<int>(splits), blocks / splits);
         });
}

// p's output tiles in blocks of `shape`.
int64_t tiles_for(const Problem& p, Shape shape) {
  return ceil_div(p.N, block_cols_for(shape.tiles)) * ceil_div(p.M, shape.tokens);
}

// Act-order rows up to this many may be gathered by the kernel's producer warps (gather_tiles:
// one 16-byte chunk of a tile a lane).
constexpr int kWgmmaGatherRows = 4;

// From 33 rows the plan takes the (tile of rows, splits of K) with the least estimated time:
// waves of blocks x steps a split x a step's cost for the tile, plus, when K is split, what
// adding up the float32 partial sums costs (a fixed part, a part for each split, whose
// partials the tile's last block reads in turn, and one for the bytes written and read).
// The constants were fitted on an H200 to a sweep of every forced (tile, splits) on the
// Llama-3 layers at 64-1,024 rows (bench/wgmma_plan_sweep.py, 2026-11-28); the model then picked the
// fastest measured configuration in all 25 cells (4096x6144 at 512 rows: 0.85x of fp16 in one
// wave of 256-row tiles against 0.47x in two waves of 64-row tiles, the rule it replaced).
// Microseconds on that card; only their ratios matter.
// The one-tile 64- and 128-row blocks (128 columns) were fitted later, to the same script's
// forced pairs on 4096x4096 and 14336x4096 at 64-256 rows (H200, 2026-11-28).
double wgmma_step_cost(Shape shape) {
  switch (shape.tokens) {
    case 16: return 0.50;  // not measured: it only ranks the splits of a forced 16-row tile
    case 32: return 0.50;
    case 64: return shape.tiles == 1 ? 0.41 : 0.62;
    case 128: return shape.tiles == 1 ? 0.51 : 0.80;  // two tiles: 256 columns a block
    default: return 0.72;  // 256 rows, 128 columns a block
  }
}
constexpr double kSplitFixed = 0.4;
constexpr double kSplitEach = 0.75;
constexpr double kSplitPerMegabyte = 0.6;
// Split-K in a thread block cluster: two cluster barriers, a part for each block of the
// cluster (each waits for the slowest), and the float32 sums a block sends the others (per
// kilobyte). Fitted on an H200 to the sweep's pairs of the same tile and splits in one wave
// with and without clusters (5-9 us for 64-96 KB a block), and to the plan's choices measured
// in `bench kernels` (6 splits in clusters lost 4-6% to 4 or 8 through the workspace at 64
// rows of 4096x4096 and 14336x4096 with no per-split part).
constexpr double kClusterFixed = 1.0;
constexpr double kClusterEach = 0.5;
constexpr double kClusterPerKilobyte = 0.06;

// `splits` of K normalized as the plan does (every split a whole number of steps, none empty).
int64_t whole_splits(const Problem& p, int64_t splits) {
  const int64_t steps = p.K / kStepRows;
  return ceil_div(steps, ceil_div(steps, std::max<int64_t>(1, std::min(splits, steps))));
}

double wgmma_estimate(const Problem& p, Shape shape, int64_t splits, int64_t resident,
                      bool cluster) {
  splits = whole_splits(p, splits);
  const int64_t per_split = ceil_div(p.K / kStepRows, splits);
  const int64_t waves = ceil_div(tiles_for(p, shape) * splits, resident);
  double cost = static_cast<double>(waves * per_split) * wgmma_step_cost(shape);
  if (splits > 1 && cluster) {
    const double kilobytes =
        4.0 / 1024 * shape.tokens * block_cols_for(shape.tiles) * (splits - 1) / splits;
    cost += kClusterFixed + kClusterEach * splits + kClusterPerKilobyte * kilobytes;
  } else if (splits > 1) {
    const double megabytes = 4e-6 * static_cast<double>(splits) * p.M * p.N;
    cost += kSplitFixed + kSplitEach * splits + kSplitPerMegabyte * megabytes;
  }
  return cost;
}

// The estimate of (shape, splits), finishing in a cluster where p.clusters allows it (2:
// wherever it can, 1: where that is estimated faster), and whether it does.
struct Estimate {
  double cost;
  bool in_clusters;
};
// Where clusters hold fewer blocks than the GPU does (the cluster's blocks share a GPC: 117 in
// clusters of 3, 120 of 4, 102 of 6 on an H200's 132) and that adds a wave, the plan keeps the
// workspace: a second wave cost more than the estimate says (4096x4096 at 16 rows, 8 splits,
// 128 blocks: 1.02x of fp16 in clusters against 1.61x).
Estimate wgmma_choice(const Problem& p, Shape shape, int64_t splits, int num_sms) {
  const int64_t resident = resident_for(p, shape, num_sms);
  const Estimate plain{wgmma_estimate(p, shape, splits, resident, false), false};
  const int64_t whole = whole_splits(p, splits);
  const int64_t clustered = p.clusters > 0 ? cluster_resident(p, shape, whole, num_sms) : 0;
  if (clustered == 0) return plain;
  const Estimate in_clusters{wgmma_estimate(p, shape, splits, clustered, true), true};
  if (p.clusters == 2) return in_clusters;
  const int64_t blocks = tiles_for(p, shape) * whole;
  if (ceil_div(blocks, clustered) > ceil_div(blocks, resident)) return plain;
  return in_clusters.cost < plain.cost ? in_clusters : plain;
}

}  // namespace

void plan_wgmma(Problem& p, int num_sms, int64_t counter_capacity) {
  plan_groups(p);
  const int64_t steps = p.K / kStepRows;
  // A forced tile: its rows, and its tiles a consumer too where both are forced.
  const bool forced_tokens = is_shape(p.tokens, 2) || is_shape(p.tokens, 1);
  const bool forced_tiles = forced_tokens && is_shape(p.tokens, p.tiles);
  // Splits that fill the GPU (`resident` blocks) with blocks of `shape`, at least
  // kMinStepsPerSplit steps each.
  auto most_splits = [&](Shape shape, int64_t resident) {
    const int64_t tiles = tiles_for(p, shape);
    if (tiles > counter_capacity) return int64_t{1};
    return std::max<int64_t>(1, std::min(resident / tiles, steps / kMinStepsPerSplit));
  };
  int64_t splits = p.splits;
  Shape best_shape{0, 0};
  if (!forced_tokens && p.M <= 32) {
    best_shape = {p.M <= 16 ? 16 : 32, 2};
  } else if (!forced_tiles || splits <= 0) {
    // From 33 rows the least estimate (above) among the tiles of 32 rows up to the next power
    // of two of M, each with the splits up to a full wave; a forced tile only its splits.
    double best = 0.0;
    int64_t best_splits = 1;
    for (const Shape shape : kShapes) {
      const bool unwanted = shape.tokens == 16 || (shape.tokens > 32 && shape.tokens > 2 * p.M - 1);
      if (forced_tokens ? shape.tokens != p.tokens || (forced_tiles && shape.tiles != p.tiles)
                        : unwanted) {
        continue;
      }
      const int64_t resident = resident_for(p, shape, num_sms);
      const int64_t low = splits > 0 ? splits : 1;
      const int64_t high = splits > 0 ? splits : most_splits(shape, resident);
      for (int64_t s = low; s <= high; ++s) {
        const double cost = wgmma_choice(p, shape, s, num_sms).cost;
        if (best_shape.tokens == 0 || cost < best) {
          best = cost;
          best_shape = shape;
          best_splits = s;
        }
      }
    }
    splits = best_splits;
  } else {
    best_shape = {p.tokens, p.tiles};
  }
  p.tokens = best_shape.tokens;
  p.tiles = best_shape.tiles;
  p.loads = 2;
  if (splits <= 0) splits = most_splits(best_shape, resident_for(p, best_shape, num_sms));
  if (tiles_for(p, best_shape) > counter_capacity) splits = 1;
  p.splits = static_cast<int>(whole_splits(p, splits));
  p.units_per_split = static_cast<int>(ceil_div(steps, p.splits));  // steps of 64 rows here
  p.in_clusters = p.splits > 1 && wgmma_choice(p, best_shape, p.splits, num_sms).in_clusters;
}

int64_t wgmma_resident(int tokens, int tiles, int splits, int num_sms) {
  Problem p{};
  p.has_clusters = true;
  const Shape shape{tokens, tiles};
  return splits > 1 ? cluster_resident(p, shape, splits, num_sms) : resident_for(p, shape, num_sms);
}

bool wgmma_gathers_first(const Problem& p, bool gather_in_kernel) {
  if (p.perm != nullptr) {
    return !(gather_in_kernel && p.M <= kWgmmaGatherRows &&
             reinterpret_cast<uintptr_t>(p.perm) % 16 == 0);
  }
  // x that TMA cannot read as it is: rows not contiguous in K, not 16-byte aligned or not a
  // multiple of 16 bytes apart.
  return !(p.x_stride_k == 1 && p.x_stride_m >= p.K && p.x_stride_m % 8 == 0 &&
           reinterpret_cast<uintptr_t>(p.x) % 16 == 0);
}

cudaError_t launch_wgmma(const Problem& p, cudaStream_t stream) {
  return dispatch(p, [&](auto k) { return decltype(k)::launch(p, stream); });
}

}  // namespace ferrule_gemv
