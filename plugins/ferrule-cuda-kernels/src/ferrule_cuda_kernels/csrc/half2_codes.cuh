// Float16 helpers shared by the kernels: reading 32 bits as a half2, and the one-LOP3 unpacking
// of two 4-bit codes into float16 numbers (see the top of gptq_gemv.cu).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace ferrule_gemv {

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

// The float16 pair (1024 + q, 1024 + q') of the codes at bits 0-3 and 16-19 of `w`.
__device__ __forceinline__ __half2 biased_pair(uint32_t w) {
  return bits_half2(and_or<0x000F000Fu, 0x64006400u>(w));
}

}  // namespace ferrule_gemv
