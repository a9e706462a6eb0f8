// The extension module: the bindings of cuda-gptq-gemv and the helpers they use.

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/extension.h>

#include <array>

#include "bindings.h"

namespace ferrule_bindings {

int multiprocessors() {
  static std::array<int, 64> count{};
  const int device = c10::cuda::current_device();
  TORCH_CHECK(device < static_cast<int>(count.size()), "ferrule cuda kernels: device index ",
              device);
  if (count[device] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    count[device] = n;
  }
  return count[device];
}

void check_operand(const char* kernel, const torch::Tensor& t, const char* name,
                   const torch::Tensor& x, at::ScalarType dtype) {
  TORCH_CHECK(t.device() == x.device(), kernel, ": ", name, " is on ", t.device(),
              " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == dtype, kernel, ": ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), kernel, ": ", name, " must be contiguous");
}

}  // namespace ferrule_bindings

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace ferrule_bindings;
  m.def("gptq_gemv", &gptq_gemv, "y = x @ W for a GPTQ 4/8-bit layer (cuda-gptq-gemv)");
  m.def("gptq_gemv_plan", &gptq_gemv_plan, "(tile_rows, splits, units_per_split) for a shape");
}
