// The functions the extension module (module.cpp) exposes, and the helpers their bindings
// (gptq_gemv.cpp) use.
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

}  // namespace ferrule_bindings
