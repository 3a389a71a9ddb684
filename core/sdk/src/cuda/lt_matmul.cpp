// One cuBLASLt matmul with an epilogue (lt_matmul.h). cuBLASLt is column-major: the row-major
// D [M, N] = op(a) op(b) is its D^T [N, M] = op(b)^T op(a)^T, so b is its first operand.
#include "lt_matmul.h"

#include <ATen/cuda/CUDAContext.h>

#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "linearnexus/error.h"
#include "linearnexus/log.h"

namespace linearnexus {
namespace cuda {
namespace {

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLASLt matmul: ") + what + " failed: " + cublasLtGetStatusString(s));
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

cudaDataType_t lt_type(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? CUDA_R_16BF : CUDA_R_32F; }

// The heuristic's choice per device, shape, transposes, dtypes, epilogue, beta != 0 and alignments
// (found false: cuBLASLt has no kernel for it). Deterministic: the heuristic's first answer, never
// a timed pick, so a run and its resume use the same kernels.
using PlanKey =
    std::tuple<int, int64_t, int64_t, int64_t, bool, bool, int, int, int, bool, uint32_t, uint32_t, uint32_t, uint32_t>;
struct Plan {
  bool found = false;
  cublasLtMatmulAlgo_t algo{};
};
std::mutex plans_mutex;
std::map<PlanKey, Plan> plans;

}  // namespace

bool lt_matmul(const at::Tensor& a, bool a_t, const at::Tensor& b, bool b_t, const at::Tensor& d, float beta,
               cublasLtEpilogue_t epilogue, const at::Tensor& aux) {
  const int64_t M = d.size(0), N = d.size(1), K = a_t ? a.size(0) : a.size(1);
  const cudaDataType_t in_type = lt_type(a), out_type = lt_type(d);
  const uint32_t al_a = alignment(a.data_ptr()), al_b = alignment(b.data_ptr()), al_d = alignment(d.data_ptr()),
                 al_aux = aux.defined() ? alignment(aux.data_ptr()) : 256;

  LtHandle<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy> op;
  check_lt(cublasLtMatmulDescCreate(&op.h, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = b_t ? CUBLAS_OP_T : CUBLAS_OP_N, tb = a_t ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "set TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "set TRANSB");
  check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
           "set EPILOGUE");
  if (aux.defined()) {
    void* aux_ptr = aux.data_ptr();
    const int64_t aux_ld = N;
    check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux_ptr, sizeof(aux_ptr)),
             "set EPILOGUE_AUX_POINTER");
    check_lt(cublasLtMatmulDescSetAttribute(op.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof(aux_ld)),
             "set EPILOGUE_AUX_LD");
  }
  // Column-major: b as stored is [N, K] (b_t) or [K, N], i.e. K x N or N x K; a likewise.
  LtHandle<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy> lb, la, ld;
  check_lt(
      b_t ? cublasLtMatrixLayoutCreate(&lb.h, in_type, K, N, K) : cublasLtMatrixLayoutCreate(&lb.h, in_type, N, K, N),
      "layout of b");
  check_lt(
      a_t ? cublasLtMatrixLayoutCreate(&la.h, in_type, M, K, M) : cublasLtMatrixLayoutCreate(&la.h, in_type, K, M, K),
      "layout of a");
  check_lt(cublasLtMatrixLayoutCreate(&ld.h, out_type, N, M, N), "layout of d");

  const PlanKey key{d.get_device(),
                    M,
                    N,
                    K,
                    a_t,
                    b_t,
                    static_cast<int>(epilogue),
                    static_cast<int>(in_type),
                    static_cast<int>(out_type),
                    beta != 0.f,
                    al_a,
                    al_b,
                    al_d,
                    al_aux};
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
    const cublasStatus_t s =
        cublasLtMatmulAlgoGetHeuristic(handle, op.h, lb.h, la.h, ld.h, ld.h, pref.h, 1, &result, &returned);
    plan.found = s == CUBLAS_STATUS_SUCCESS && returned > 0;
    if (plan.found) plan.algo = result.algo;
    if (!plan.found)
      log_info("cuBLASLt has no kernel for [" + std::to_string(M) + ", " + std::to_string(K) + "] x [" +
               std::to_string(K) + ", " + std::to_string(N) + "] with epilogue " +
               std::to_string(static_cast<int>(epilogue)) + "; this case runs as separate ops");
    std::lock_guard<std::mutex> lock(plans_mutex);
    plans[key] = plan;
  }
  if (!plan.found) return false;
  const float alpha = 1.f;
  check_lt(cublasLtMatmul(handle, op.h, &alpha, b.data_ptr(), lb.h, a.data_ptr(), la.h, &beta, d.data_ptr(), ld.h,
                          d.data_ptr(), ld.h, &plan.algo, at::cuda::getCUDABlasLtWorkspace(), workspace_size,
                          at::cuda::getCurrentCUDAStream()),
           "cublasLtMatmul");
  return true;
}

}  // namespace cuda
}  // namespace linearnexus
