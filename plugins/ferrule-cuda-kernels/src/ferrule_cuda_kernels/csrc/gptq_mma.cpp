// The torch binding of cuda-gptq-mma: checks the tensors, allocates the output and the split-K
// workspace (torch's caching allocator, so CUDA graphs capture it) and launches on the current
// stream. The kernels are in gptq_mma.cu; the repacking is ferrule_cuda_kernels.mma_pack.

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "bindings.h"
#include "gptq_mma.h"

namespace {

constexpr const char* kName = "cuda-gptq-mma";

// Checks the layer's tensors against `like` (x, or the scales for a dequantization) and
// returns (groups, N, K).
std::array<int64_t, 3> check_layer(const torch::Tensor& like, const torch::Tensor& packed,
                                   const torch::Tensor& scales,
                                   const std::optional<torch::Tensor>& zeros,
                                   int64_t group_size) {
  using ferrule_bindings::check_operand;
  check_operand(kName, packed, "packed", like, at::kInt);
  check_operand(kName, scales, "scales", like, like.scalar_type());
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == 32 && packed.size(3) == 4, kName,
              ": packed must be [N / 16, K / 64, 32, 4], got ", packed.sizes());
  const int64_t N = packed.size(0) * ferrule_mma::kTileN;
  const int64_t K = packed.size(1) * ferrule_mma::kSuperK;
  TORCH_CHECK(scales.dim() == 2 && scales.size(1) == N, kName, ": scales must be [groups, ", N,
              "], got ", scales.sizes());
  const int64_t groups = scales.size(0);
  TORCH_CHECK(group_size > 0 && (group_size % 16 == 0 || group_size >= K), kName,
              ": group_size=", group_size, " must be a multiple of 16 (or cover all of K=", K,
              ")");
  const int64_t size = group_size < K ? group_size : K;
  TORCH_CHECK((K + size - 1) / size == groups, kName, ": ", groups,
              " groups of scales, but K=", K, " in groups of ", size, " makes ",
              (K + size - 1) / size);
  if (zeros.has_value()) {
    check_operand(kName, *zeros, "zeros", like, at::kByte);
    TORCH_CHECK(zeros->sizes() == scales.sizes(), kName, ": zeros must be shaped like scales ",
                scales.sizes(), ", got ", zeros->sizes());
  }
  TORCH_CHECK(reinterpret_cast<uintptr_t>(packed.data_ptr()) % 16 == 0, kName,
              ": packed must be 16-byte aligned");
  TORCH_CHECK(scales.numel() < (int64_t{1} << 31), kName, ": the layer is too large");
  return {groups, N, K};
}

}  // namespace

namespace ferrule_bindings {

torch::Tensor gptq_mma(const torch::Tensor& x, const std::optional<torch::Tensor>& perm,
                       const torch::Tensor& packed, const torch::Tensor& scales,
                       const std::optional<torch::Tensor>& zeros, const torch::Tensor& counters,
                       int64_t group_size, int64_t n_tiles, int64_t splits) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, kName, ": x must be a 2-D CUDA tensor, got ",
              x.sizes(), " on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, kName,
              ": x must be float16 or bfloat16, got ", x.scalar_type());
  const auto [groups, N, K] = check_layer(x, packed, scales, zeros, group_size);
  (void)groups;
  TORCH_CHECK(x.size(1) == K, kName, ": x has ", x.size(1), " features, the layer ", K);
  check_operand(kName, counters, "counters", x, at::kInt);
  const int32_t* perm_ptr = nullptr;
  if (perm.has_value()) {
    check_operand(kName, *perm, "perm", x, at::kInt);
    TORCH_CHECK(perm->dim() == 1 && perm->size(0) == K, kName, ": perm must be [", K, "], got ",
                perm->sizes());
    perm_ptr = perm->data_ptr<int32_t>();
  }
  // Pairs of activations are read as one 32-bit word: unit stride along K, even row stride.
  torch::Tensor rows = x;
  if (x.stride(1) != 1 || x.stride(0) % 2 != 0 ||
      reinterpret_cast<uintptr_t>(x.data_ptr()) % 4 != 0) {
    rows = x.contiguous();
  }
  const int64_t M = rows.size(0);
  TORCH_CHECK(M * N < (int64_t{1} << 31), kName, ": the output is too large");

  const c10::cuda::CUDAGuard guard(x.device());
  auto out = torch::empty({M, N}, x.options());
  if (M == 0) return out;
  ferrule_mma::Problem p{};
  p.x = rows.data_ptr();
  p.x_stride_m = rows.stride(0);
  p.perm = perm_ptr;
  p.packed = packed.data_ptr<int32_t>();
  p.scales = scales.data_ptr();
  p.zeros = zeros.has_value() ? zeros->data_ptr<uint8_t>() : nullptr;
  p.out = out.data_ptr();
  p.counters = counters.data_ptr<int32_t>();
  p.M = static_cast<int>(M);
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(N);
  p.group_size = static_cast<int>(group_size < K ? group_size : K);
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.n_tiles = static_cast<int>(n_tiles);
  p.splits = static_cast<int>(splits);
  ferrule_mma::plan(p, multiprocessors(), counters.numel());
  torch::Tensor workspace;
  if (p.splits > 1) {
    workspace = torch::empty({p.splits, M, N}, x.options().dtype(at::kFloat));
    p.workspace = workspace.data_ptr<float>();
  }
  C10_CUDA_CHECK(ferrule_mma::launch(p, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

void gptq_mma_dequant(const torch::Tensor& packed, const torch::Tensor& scales,
                      const std::optional<torch::Tensor>& zeros, torch::Tensor& out,
                      int64_t group_size) {
  TORCH_CHECK(scales.is_cuda(), kName, ": scales must be on a CUDA device");
  TORCH_CHECK(scales.scalar_type() == at::kHalf || scales.scalar_type() == at::kBFloat16, kName,
              ": scales must be float16 or bfloat16, got ", scales.scalar_type());
  const auto [groups, N, K] = check_layer(scales, packed, scales, zeros, group_size);
  (void)groups;
  check_operand(kName, out, "out", scales, scales.scalar_type());
  TORCH_CHECK(out.dim() == 2 && out.size(0) == N && out.size(1) == K, kName,
              ": out must be [", N, ", ", K, "], got ", out.sizes());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(out.data_ptr()) % 16 == 0, kName,
              ": out must be 16-byte aligned");
  const c10::cuda::CUDAGuard guard(scales.device());
  ferrule_mma::Dequant d{};
  d.packed = packed.data_ptr<int32_t>();
  d.scales = scales.data_ptr();
  d.zeros = zeros.has_value() ? zeros->data_ptr<uint8_t>() : nullptr;
  d.out = out.data_ptr();
  d.K = static_cast<int>(K);
  d.N = static_cast<int>(N);
  d.group_size = static_cast<int>(group_size < K ? group_size : K);
  d.bf16 = scales.scalar_type() == at::kBFloat16;
  C10_CUDA_CHECK(ferrule_mma::launch_dequant(d, c10::cuda::getCurrentCUDAStream().stream()));
}

std::vector<int64_t> gptq_mma_plan(int64_t M, int64_t K, int64_t N, int64_t counter_capacity,
                                   int64_t n_tiles, int64_t splits) {
  ferrule_mma::Problem p{};
  p.M = static_cast<int>(M);
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(N);
  p.group_size = static_cast<int>(K);
  p.n_tiles = static_cast<int>(n_tiles);
  p.splits = static_cast<int>(splits);
  ferrule_mma::plan(p, multiprocessors(), counter_capacity);
  return {p.token_tiles, p.n_tiles, p.splits, p.kb_per_split};
}

}  // namespace ferrule_bindings
