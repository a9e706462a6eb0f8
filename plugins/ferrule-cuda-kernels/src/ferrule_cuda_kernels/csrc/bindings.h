// The functions the extension module (module.cpp) exposes, and the helpers their bindings
// (gptq_gemv.cpp, gptq_mma.cpp) share.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace ferrule_bindings {

// Multiprocessors of the current device, asked once per device.
int multiprocessors();

// `t` is on x's device, of `dtype` and contiguous, else a TORCH_CHECK error naming `kernel`.
void check_operand(const char* kernel, const torch::Tensor& t, const char* name,
                   const torch::Tensor& x, at::ScalarType dtype);

torch::Tensor gptq_gemv(const torch::Tensor& x, const std::optional<torch::Tensor>& perm,
                        const torch::Tensor& qweight, const torch::Tensor& qzeros,
                        const torch::Tensor& scales, const torch::Tensor& counters,
                        int64_t bits, int64_t group_size);
std::vector<int64_t> gptq_gemv_plan(int64_t M, int64_t K, int64_t N, int64_t bits,
                                    int64_t counter_capacity);

torch::Tensor gptq_mma(const torch::Tensor& x, const std::optional<torch::Tensor>& perm,
                       const torch::Tensor& packed, const torch::Tensor& scales,
                       const std::optional<torch::Tensor>& zeros, const torch::Tensor& counters,
                       int64_t group_size, int64_t n_tiles, int64_t splits);
void gptq_mma_dequant(const torch::Tensor& packed, const torch::Tensor& scales,
                      const std::optional<torch::Tensor>& zeros, torch::Tensor& out,
                      int64_t group_size);
std::vector<int64_t> gptq_mma_plan(int64_t M, int64_t K, int64_t N, int64_t counter_capacity,
                                   int64_t n_tiles, int64_t splits);

}  // namespace ferrule_bindings
