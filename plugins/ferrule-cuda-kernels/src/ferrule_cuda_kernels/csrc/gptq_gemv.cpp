// The torch binding of cuda-gptq-gemv, cuda-gptq-mma and cuda-gptq-wgmma: checks the tensors,
// allocates the output and the split-K workspace (through torch's caching allocator, so CUDA
// graphs capture it), and launches on the current stream. The kernels are in gptq_gemv.cu,
// gptq_mma.cu and gptq_wgmma.cu.

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <array>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "gptq_gemv.h"

namespace {

// An attribute of the current device, asked once per device.
int device_attribute(cudaDeviceAttr attribute, std::array<int, 64>& cache) {
  const int device = c10::cuda::current_device();
  TORCH_CHECK(device < static_cast<int>(cache.size()), "cuda-gptq-gemv: device index ", device);
  if (cache[device] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, attribute, device));
    cache[device] = n;
  }
  return cache[device];
}

int multiprocessors() {
  static std::array<int, 64> count{};
  return device_attribute(cudaDevAttrMultiProcessorCount, count);
}

int capability_major() {
  static std::array<int, 64> major{};
  return device_attribute(cudaDevAttrComputeCapabilityMajor, major);
}

int capability_minor() {
  static std::array<int, 64> minor{};
  return device_attribute(cudaDevAttrComputeCapabilityMinor, minor);
}

// The compute capability (major, minor) of x's device.
std::pair<int, int> capability_of(const torch::Tensor& x) {
  const c10::cuda::CUDAGuard guard(x.device());
  return {capability_major(), capability_minor()};
}

void check_tensor(const char* kernel, const torch::Tensor& t, const char* name,
                  const torch::Tensor& x, at::ScalarType dtype) {
  TORCH_CHECK(t.device() == x.device(), kernel, ": ", name, " is on ", t.device(),
              " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == dtype, kernel, ": ", name, " must be ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), kernel, ": ", name, " must be contiguous");
}

// Checks the tensors of y [M, N] = x [M, K] @ W (W the GPTQ layer, rows sorted by group;
// `perm` gathers x) and fills a Problem for them, without the plan and the workspace.
ferrule_gemv::Problem problem_for(const char* kernel, const torch::Tensor& x,
                                  const std::optional<torch::Tensor>& perm,
                                  const torch::Tensor& qweight, const torch::Tensor& qzeros,
                                  const torch::Tensor& scales, const torch::Tensor& counters,
                                  int64_t bits, int64_t group_size) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, kernel, ": x must be a 2-D CUDA tensor, got ",
              x.sizes(), " on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              kernel, ": x must be float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(bits == 4 || bits == 8, kernel, ": bits must be 4 or 8, got ", bits);
  check_tensor(kernel, qweight, "qweight", x, at::kInt);
  check_tensor(kernel, qzeros, "qzeros", x, at::kInt);
  check_tensor(kernel, scales, "scales", x, x.scalar_type());
  check_tensor(kernel, counters, "counters", x, at::kInt);
  const int64_t M = x.size(0);
  const int64_t K = x.size(1);
  TORCH_CHECK(scales.dim() == 2, kernel, ": scales must be [groups, N]");
  const int64_t groups = scales.size(0);
  const int64_t N = scales.size(1);
  TORCH_CHECK(K * bits % 32 == 0 && N % 4 == 0 && N * bits % 32 == 0,
              kernel, ": K=", K, ", N=", N, " cannot be packed at ", bits, " bits");
  TORCH_CHECK(qweight.dim() == 2 && qweight.size(0) == K * bits / 32 && qweight.size(1) == N,
              kernel, ": qweight has shape ", qweight.sizes(), ", expected [",
              K * bits / 32, ", ", N, "]");
  TORCH_CHECK(qzeros.dim() == 2 && qzeros.size(0) == groups && qzeros.size(1) == N * bits / 32,
              kernel, ": qzeros has shape ", qzeros.sizes(), ", expected [", groups, ", ",
              N * bits / 32, "]");
  const int64_t unit = ferrule_gemv::unit_rows(static_cast<int>(bits));
  TORCH_CHECK(group_size > 0 && (group_size % unit == 0 || group_size >= K),
              kernel, ": group_size=", group_size, " must be a multiple of ", unit,
              " at ", bits, " bits (or cover all of K=", K, ")");
  TORCH_CHECK((K + group_size - 1) / group_size == groups, kernel, ": ", groups,
              " groups of scales, but K=", K, " in groups of ", group_size, " makes ",
              (K + group_size - 1) / group_size);
  const int32_t* perm_ptr = nullptr;
  if (perm.has_value()) {
    check_tensor(kernel, *perm, "perm", x, at::kInt);
    TORCH_CHECK(perm->dim() == 1 && perm->size(0) == K, kernel, ": perm must be [", K,
                "], got ", perm->sizes());
    perm_ptr = perm->data_ptr<int32_t>();
  }
  // 16-byte loads of qweight and 8-byte loads of scales.
  TORCH_CHECK(reinterpret_cast<uintptr_t>(qweight.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(scales.data_ptr()) % 8 == 0,
              kernel, ": qweight must be 16-byte and scales 8-byte aligned");
  // The kernels index weights, scales and zeros with 32-bit offsets.
  TORCH_CHECK(M < (int64_t{1} << 31) && qweight.numel() < (int64_t{1} << 31) &&
                  scales.numel() < (int64_t{1} << 31),
              kernel, ": the layer is too large for 32-bit offsets");

  ferrule_gemv::Problem p{};
  p.x = x.data_ptr();
  p.x_stride_m = x.stride(0);
  p.x_stride_k = x.stride(1);
  p.perm = perm_ptr;
  p.qweight = qweight.data_ptr<int32_t>();
  p.qzeros = qzeros.data_ptr<int32_t>();
  p.scales = scales.data_ptr();
  p.counters = counters.data_ptr<int32_t>();
  p.M = static_cast<int>(M);
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(N);
  p.group_size = static_cast<int>(group_size < K ? group_size : K);
  p.bits = static_cast<int>(bits);
  p.bf16 = x.scalar_type() == at::kBFloat16;
  p.pdl = capability_of(x).first >= 9;
  p.has_clusters = p.pdl;  // sm_90 and later
  return p;
}

// Allocates the output (and the split-K workspace the plan asks for) and launches.
template <typename Plan, typename Launch>
torch::Tensor run(ferrule_gemv::Problem& p, const torch::Tensor& x, const torch::Tensor& counters,
                  Plan plan, Launch launch) {
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = torch::empty({x.size(0), p.N}, x.options());
  if (p.M == 0) return out;
  p.out = out.data_ptr();
  plan(p, multiprocessors(), counters.numel());
  torch::Tensor workspace;
  if (p.splits > 1 && !p.in_clusters) {
    workspace = torch::empty({p.splits, p.M, p.N}, x.options().dtype(at::kFloat));
    p.workspace = workspace.data_ptr<float>();
  }
  C10_CUDA_CHECK(launch(p, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

// x[:, p.perm] into a new [M, K] tensor that p then reads (without perm), by gather_rows
// (without perm, a contiguous copy); an empty tensor, and p unchanged, when there is no perm
// and `always` is false. The caller keeps the tensor until the launch.
torch::Tensor gather_first(ferrule_gemv::Problem& p, const torch::Tensor& x, bool always = false) {
  if ((p.perm == nullptr && !always) || p.M == 0) return {};
  const c10::cuda::CUDAGuard guard(x.device());
  auto gathered = torch::empty({x.size(0), x.size(1)}, x.options());
  C10_CUDA_CHECK(ferrule_gemv::gather_rows(p, gathered.data_ptr(), multiprocessors(),
                                           c10::cuda::getCurrentCUDAStream().stream()));
  p.x = gathered.data_ptr();
  p.x_stride_m = x.size(1);
  p.x_stride_k = 1;
  p.perm = nullptr;
  return gathered;
}

// y [M, N] = x [M, K] @ W with cuda-gptq-gemv.
torch::Tensor gptq_gemv(const torch::Tensor& x, const std::optional<torch::Tensor>& perm,
                        const torch::Tensor& qweight, const torch::Tensor& qzeros,
                        const torch::Tensor& scales, const torch::Tensor& counters,
                        int64_t bits, int64_t group_size) {
  auto p = problem_for("cuda-gptq-gemv", x, perm, qweight, qzeros, scales, counters, bits,
                       group_size);
  // Act-order float16 rows (two or more, or one of long K): x[:, perm] once first (see
  // gemv_gathers_first).
  torch::Tensor gathered;
  if (ferrule_gemv::gemv_gathers_first(p)) gathered = gather_first(p, x);
  return run(p, x, counters, ferrule_gemv::plan, ferrule_gemv::launch);
}

// y [M, N] = x [M, K] @ W with cuda-gptq-mma (float16, 4-bit, sm_80+); warps_k and splits
// force the plan's choices (0: choose), for tuning.
torch::Tensor gptq_mma(const torch::Tensor& x, const std::optional<torch::Tensor>& perm,
                       const torch::Tensor& qweight, const torch::Tensor& qzeros,
                       const torch::Tensor& scales, const torch::Tensor& counters,
                       int64_t group_size, int64_t warps_k, int64_t splits) {
  auto p = problem_for("cuda-gptq-mma", x, perm, qweight, qzeros, scales, counters, 4,
                       group_size);
  TORCH_CHECK(!p.bf16, "cuda-gptq-mma: x must be float16, got ", x.scalar_type());
  TORCH_CHECK(capability_of(x).first >= 8, "cuda-gptq-mma: needs sm_80 or later (mma.sync)");
  p.warps_k = static_cast<int>(warps_k);
  p.splits = static_cast<int>(splits);
  // act-order: x[:, perm] once, rather than in every block
  const torch::Tensor gathered = gather_first(p, x);
  return run(p, x, counters, ferrule_gemv::plan_mma, ferrule_gemv::launch_mma);
}

// y [M, N] = x [M, K] @ W with cuda-gptq-wgmma (float16, 4-bit, sm_90). Act-order layers gather
// x[:, perm] first, or with gather_in_kernel (up to 4 rows) in the kernel; x that TMA cannot
// read as it is is copied first (wgmma_gathers_first). tokens, tiles and splits force the
// plan's choices (0: choose), for tuning; clusters (0, 1, 2) as Problem::clusters.
torch::Tensor gptq_wgmma(const torch::Tensor& x, const std::optional<torch::Tensor>& perm,
                         const torch::Tensor& qweight, const torch::Tensor& qzeros,
                         const torch::Tensor& scales, const torch::Tensor& counters,
                         int64_t group_size, int64_t tokens, int64_t tiles, int64_t splits,
                         bool gather_in_kernel, int64_t clusters) {
  auto p = problem_for("cuda-gptq-wgmma", x, perm, qweight, qzeros, scales, counters, 4,
                       group_size);
  TORCH_CHECK(!p.bf16, "cuda-gptq-wgmma: x must be float16, got ", x.scalar_type());
  const auto [major, minor] = capability_of(x);
  TORCH_CHECK(major == 9 && minor == 0,
              "cuda-gptq-wgmma: needs an sm_90 device (Hopper's wgmma), got sm_", major, minor);
  TORCH_CHECK(p.K % 64 == 0 && (p.group_size % 64 == 0 || p.group_size >= p.K),
              "cuda-gptq-wgmma: K=", p.K, " must be a multiple of 64 and group_size=",
              p.group_size, " a multiple of 64 (or all of K)");
  // TMA reads rows a multiple of 16 bytes long from 16-byte aligned tensors (zero points: N / 2
  // bytes a row).
  TORCH_CHECK(p.N % 32 == 0, "cuda-gptq-wgmma: N=", p.N, " must be a multiple of 32");
  for (const torch::Tensor* t : {&qweight, &qzeros, &scales}) {
    TORCH_CHECK(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0,
                "cuda-gptq-wgmma: qweight, qzeros and scales must be 16-byte aligned");
  }
  p.tokens = static_cast<int>(tokens);
  p.tiles = static_cast<int>(tiles);
  p.splits = static_cast<int>(splits);
  TORCH_CHECK(clusters >= 0 && clusters <= 2, "cuda-gptq-wgmma: clusters must be 0, 1 or 2, got ",
              clusters);
  p.clusters = static_cast<int>(clusters);
  torch::Tensor gathered;
  if (ferrule_gemv::wgmma_gathers_first(p, gather_in_kernel)) {
    gathered = gather_first(p, x, /*always=*/true);
  }
  return run(p, x, counters, ferrule_gemv::plan_wgmma, ferrule_gemv::launch_wgmma);
}

// A float16 problem of this shape with one group, for the plan queries below (tests and
// benchmarks): what each kernel would choose.
ferrule_gemv::Problem shape_problem(int64_t M, int64_t K, int64_t N, int64_t bits) {
  ferrule_gemv::Problem p{};
  p.M = static_cast<int>(M);
  p.K = static_cast<int>(K);
  p.N = static_cast<int>(N);
  p.bits = static_cast<int>(bits);
  p.group_size = static_cast<int>(K);
  p.has_clusters = capability_major() >= 9;  // the current device's
  return p;
}

// (tile_rows, splits, units_per_split) that gptq_gemv would use.
std::vector<int64_t> gptq_gemv_plan(int64_t M, int64_t K, int64_t N, int64_t bits,
                                    int64_t counter_capacity) {
  auto p = shape_problem(M, K, N, bits);
  ferrule_gemv::plan(p, multiprocessors(), counter_capacity);
  return {p.tile_rows, p.splits, p.units_per_split};
}

// (tokens, loads, warps_k, splits, units_per_split) that gptq_mma would use.
std::vector<int64_t> gptq_mma_plan(int64_t M, int64_t K, int64_t N, int64_t counter_capacity,
                                   int64_t warps_k, int64_t splits) {
  auto p = shape_problem(M, K, N, 4);
  p.warps_k = static_cast<int>(warps_k);
  p.splits = static_cast<int>(splits);
  ferrule_gemv::plan_mma(p, multiprocessors(), counter_capacity);
  return {p.tokens, p.loads, p.warps_k, p.splits, p.units_per_split};
}

// (tokens, splits, steps_per_split, in_clusters, tiles) that gptq_wgmma would use.
std::vector<int64_t> gptq_wgmma_plan(int64_t M, int64_t K, int64_t N, int64_t counter_capacity,
                                     int64_t tokens, int64_t tiles, int64_t splits,
                                     int64_t clusters) {
  auto p = shape_problem(M, K, N, 4);
  p.tokens = static_cast<int>(tokens);
  p.tiles = static_cast<int>(tiles);
  p.splits = static_cast<int>(splits);
  p.clusters = static_cast<int>(clusters);
  ferrule_gemv::plan_wgmma(p, multiprocessors(), counter_capacity);
  return {p.tokens, p.splits, p.units_per_split, p.in_clusters, p.tiles};
}

// Blocks of cuda-gptq-wgmma's `tokens`-row tiles of `tiles` m64 tiles a consumer the current
// device holds at once, in thread block clusters of `splits` when above 1 (the plan's
// residency; 0: not in clusters).
int64_t gptq_wgmma_resident(int64_t tokens, int64_t tiles, int64_t splits) {
  return ferrule_gemv::wgmma_resident(static_cast<int>(tokens), static_cast<int>(tiles),
                                      static_cast<int>(splits), multiprocessors());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gptq_gemv", &gptq_gemv, "y = x @ W for a GPTQ 4/8-bit layer (cuda-gptq-gemv)");
  m.def("gptq_gemv_plan", &gptq_gemv_plan, "(tile_rows, splits, units_per_split) for a shape");
  m.def("gptq_mma", &gptq_mma, "y = x @ W for a GPTQ 4-bit layer, float16 x (cuda-gptq-mma)");
  m.def("gptq_mma_plan", &gptq_mma_plan,
        "(tokens, loads, warps_k, splits, units_per_split) for a shape");
  m.def("gptq_wgmma", &gptq_wgmma,
        "y = x @ W for a GPTQ 4-bit layer, float16 x, sm_90 (cuda-gptq-wgmma)");
  m.def("gptq_wgmma_plan", &gptq_wgmma_plan,
        "(tokens, splits, steps_per_split, in_clusters, tiles) for a shape");
  m.def("gptq_wgmma_resident", &gptq_wgmma_resident,
        "blocks of a tile size resident at once, in clusters of `splits` when above 1");
}
