// GPT-2's MLP with GELU in cuBLASLt's epilogues (gelu_mlp_cuda.h).
//
// Why: ATen's path is up (a matmul writing pre) -> gelu (a kernel reading pre, writing a) -> down,
// and back: da = dout w_down (a matmul) -> gelu_backward (reading da and pre, writing dpre). The two
// elementwise kernels cost 6.9 ms of a gpt-small step at B = 64 (docs/benchmarks.md): passes over
// [B*T, 4C] at memory speed. cuBLASLt applies GELU (its tanh form, GPT-2's) in the up-projection's
// epilogue, on tiles still in registers, writing pre beside a (GELU_AUX, for backward), and GELU's
// derivative in the epilogue of the matmul that produces da (DGELU, reading pre): no elementwise
// pass is left. Without autograd (evaluation, decoding, checkpointed forwards) the forward epilogue
// is GELU alone: no pre is written. Where cuBLASLt has no kernel for a case (an odd width, an
// unaligned view) the same node runs the ops: matmul, at::gelu / gelu_backward.
#include "gelu_mlp_cuda.h"

#include <torch/autograd.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "linearnexus/error.h"
#include "linearnexus/log.h"

namespace linearnexus {
namespace cuda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("gelu MLP: ") + what + " failed: " + cublasLtGetStatusString(s));
}

// Largest power of two <= 256 dividing the address: cuBLASLt picks kernels by it.
uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

template <typename T, cublasStatus_t (*Destroy)(T)>
struct LtHandle {  // owns one cuBLASLt descriptor
  T h = nullptr;
  ~LtHandle() {
    if (h) Destroy(h);
  }
};

// The heuristic's choice per shape, dtype, epilogue and alignment (found false: cuBLASLt has none).
using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, bool, bool, int, int, uint32_t, uint32_t, uint32_t, uint32_t>;
struct Plan {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};
std::mutex plans_mutex;
std::map<PlanKey, Plan> plans;

// Row-major D [M, N] = op(a) op(b) with cuBLASLt's epilogue applied, op(a) [M, K] (a stored [K, M]
// when a_t), op(b) [K, N] (b stored [N, K] when b_t); aux [M, N] is GELU's input (written by
// GELU_AUX, read by DGELU; undefined for GELU). All contiguous, one dtype. Column-major cuBLASLt
// computes D^T = op(b)^T op(a)^T, so b is its first operand. False (nothing launched) where
// cuBLASLt has no kernel for the case.
bool lt_matmul(const at::Tensor& a, bool a_t, const at::Tensor& b, bool b_t, at::Tensor& d, cublasLtEpilogue_t epilogue,
               const at::Tensor& aux) {
  const int64_t M = d.size(0), N = d.size(1), K = a_t ? a.size(0) : a.size(1);
  const bool bf16 = d.scalar_type() == at::kBFloat16;
  const cudaDataType_t type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const uint32_t al_a = alignment(a.data_ptr()), al_b = alignment(b.data_ptr()), al_d = alignment(d.data_ptr()),
                 al_aux = aux.defined() ? alignment(aux.data_ptr()) : 256;

  LtHandle<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy> op;
  check_lt(cublasLtMatmulDescCreate(&op.h, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = b_t ? CUBLAS_OP_T : CUBLAS_OP_N, tb = a_t ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "set TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "set TRANSB");
  check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)), "set EPILOGUE");
  if (aux.defined()) {
    void* aux_ptr = aux.data_ptr();
    const int64_t aux_ld = N;
    check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux_ptr, sizeof(aux_ptr)),
             "set EPILOGUE_AUX_POINTER");
    check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)),
             "set EPILOGUE_AUX_LD");
  }
  // Column-major layouts: b as stored is [N, K] (b_t) or [K, N], i.e. K x N or N x K column-major.
  LtHandle<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy> la, lb, ld;
  check_lt(b_t ? cublasLtMatrixLayoutCreate(&la.h, type, K, N, K) : cublasLtMatrixLayoutCreate(&la.h, type, N, K, N),
           "layout of b");
  check_lt(a_t ? cublasLtMatrixLayoutCreate(&lb.h, type, M, K, M) : cublasLtMatrixLayoutCreate(&lb.h, type, K, M, K),
           "layout of a");
  check_lt(cublasLtMatrixLayoutCreate(&ld.h, type, N, M, N), "layout of d");

  const int device = d.get_device();
  const PlanKey key{device, M, N, K, a_t, b_t, static_cast<int>(epilogue), bf16, al_a, al_b, al_d, al_aux};
  const cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  const size_t workspace_size = at::cuda::getCUDABlasLtWorkspaceSize();
  Plan plan;
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(plans_mutex);
    auto it = plans.find(key);
    if (it != plans.end()) plan = it->second, known = true;
  }
  if (!known) {
    LtHandle<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy> pref;
    check_lt(cublasLtMatmulPreferenceCreate(&pref.h), "cublasLtMatmulPreferenceCreate");
    const uint64_t ws = workspace_size;
    check_lt(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
             "set MAX_WORKSPACE_BYTES");
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_d},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_d}};
    for (const auto& [attr, value] : aligns)
      check_lt(cublasLtMatmulPreferenceSetAttribute(pref.h, attr, &value, sizeof(value)), "set MIN_ALIGNMENT");
    cublasLtMatmulHeuristicResult_t result{};
    int returned = 0;
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(handle, op.h, la.h, lb.h, ld.h, ld.h, pref.h, 1, &result,
                                                            &returned);
    plan.found = s == CUBLAS_STATUS_SUCCESS && returned > 0;
    if (plan.found) plan.algo = result.algo;
    if (!plan.found)
      log_info("gelu MLP: cuBLASLt has no epilogue kernel for [" + std::to_string(M) + ", " + std::to_string(K) +
               "] x [" + std::to_string(K) + ", " + std::to_string(N) + "] (" + (bf16 ? "bf16" : "fp32") +
               "); this shape runs matmul + GELU as separate ops");
    std::lock_guard<std::mutex> lock(plans_mutex);
    plans[key] = plan;
  }
  if (!plan.found) return false;
  const float alpha = 1.f, beta = 0.f;
  check_lt(cublasLtMatmul(handle, op.h, &alpha, b.data_ptr(), la.h, a.data_ptr(), lb.h, &beta, d.data_ptr(), ld.h,
                          d.data_ptr(), ld.h, &plan.algo, at::cuda::getCUDABlasLtWorkspace(), workspace_size,
                          at::cuda::getCurrentCUDAStream()),
           "cublasLtMatmul");
  return true;
}

// a = gelu(x w_up^T) [M, H], with pre = x w_up^T in `pre` when it is defined.
at::Tensor up_gelu(const at::Tensor& x, const at::Tensor& w_up, at::Tensor pre) {
  auto a = at::empty({x.size(0), w_up.size(0)}, x.options());
  if (lt_matmul(x, false, w_up, true, a, pre.defined() ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU, pre))
    return a;
  if (!pre.defined()) return at::gelu(at::mm(x, w_up.t()), "tanh");
  at::mm_out(pre, x, w_up.t());
  return at::gelu(pre, "tanh");
}

struct GeluMlp : public torch::autograd::Function<GeluMlp> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w_up, const at::Tensor& w_down) {
    // x: [M, C], w_up: [H, C], w_down: [C, H], contiguous, one dtype
    const c10::cuda::CUDAGuard guard(x.device());
    auto pre = at::empty({x.size(0), w_up.size(0)}, x.options());  // [M, H], GELU's input
    auto a = up_gelu(x, w_up, pre);                                // [M, H]
    ctx->save_for_backward({x, w_up, w_down, pre, a});
    return at::mm(a, w_down.t());  // [M, C]
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w_up = saved[1], &w_down = saved[2], &pre = saved[3], &a = saved[4];
    const c10::cuda::CUDAGuard guard(x.device());
    auto dout = grads[0].to(x.scalar_type()).contiguous();  // [M, C]
    auto dpre = at::empty_like(pre);                        // [M, H] = (dout w_down) * gelu'(pre)
    if (!lt_matmul(dout, false, w_down, false, dpre, CUBLASLT_EPILOGUE_DGELU, pre))
      dpre = at::gelu_backward(at::mm(dout, w_down), pre, "tanh");
    return {at::mm(dpre, w_up), at::mm(dpre.t(), x), at::mm(dout.t(), a)};  // dx [M, C], dw_up [H, C], dw_down [C, H]
  }
};

}  // namespace

at::Tensor gelu_mlp(const at::Tensor& x, const at::Tensor& w_up, const at::Tensor& w_down) {
  // x: [..., C] -> [..., C]
  const int64_t C = x.size(-1);
  auto x2 = x.reshape({-1, C}).contiguous();
  auto wu = w_up.contiguous(), wd = w_down.contiguous();
  at::Tensor out;
  if (x2.size(0) == 0) {
    out = at::mm(at::gelu(at::mm(x2, wu.t()), "tanh"), wd.t());
  } else if (at::GradMode::is_enabled()) {
    out = GeluMlp::apply(x2, wu, wd);
  } else {
    const c10::cuda::CUDAGuard guard(x.device());
    out = at::mm(up_gelu(x2, wu, at::Tensor()), wd.t());
  }
  auto shape = x.sizes().vec();
  shape.back() = wd.size(0);
  return out.view(shape);
}

}  // namespace cuda
}  // namespace linearnexus
