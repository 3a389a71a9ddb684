// One cuBLASLt matmul with an epilogue, in row-major terms (core-internal; built only with CUDA).
// Used where ATen's matmul cannot do what the caller needs: GELU / its derivative applied on the
// output tiles (gelu_mlp_cuda.cpp), an fp32 sum of bf16 products accumulated in place
// (lm_head_loss_cuda.cpp).
#pragma once

#include <ATen/ATen.h>
#include <cublasLt.h>

namespace linearnexus {
namespace cuda {

// d [M, N] = epilogue(op(a) op(b) + beta d), op(a) [M, K] (a stored [K, M] when a_t), op(b) [K, N]
// (b stored [N, K] when b_t). a and b contiguous of one dtype (bf16 or fp32), d contiguous in theirs
// or fp32, accumulated in fp32. aux [M, N] in d's dtype: GELU's input, written by
// CUBLASLT_EPILOGUE_GELU_AUX and read by CUBLASLT_EPILOGUE_DGELU (undefined otherwise). Returns false,
// launching nothing, where cuBLASLt has no kernel for the case (the caller then runs the ops); the
// answer is kept per shape, dtypes, epilogue and alignment, so a case is looked up once.
bool lt_matmul(const at::Tensor& a, bool a_t, const at::Tensor& b, bool b_t, const at::Tensor& d, float beta = 0.f,
               cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT, const at::Tensor& aux = at::Tensor());

}  // namespace cuda
}  // namespace linearnexus
