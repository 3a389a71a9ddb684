// What the torch glue of the mamba plugin's CUDA kernels shares (selective_scan_gpu.cpp,
// causal_conv_gpu.cpp). Included only where LINEARNEXUS_MAMBA_CUDA is defined (CUDA builds).
#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <string>

#include <linearnexus/error.h>

namespace linearnexus {
namespace mamba {

// A launcher's CUDA error as one Error naming the kernel ("selective scan forward", ...).
inline void check_cuda(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw Error("mamba: CUDA " + what + " failed: " + cudaGetErrorString(e));
}

// Whether x [B, T, X] has unit stride along X and rows an equal stride apart (a narrow of xz has):
// the layout the kernels index with, as ptr[(b * T + t) * x.stride(1) + i]. Otherwise the caller
// makes it contiguous.
inline bool kernel_rows(const at::Tensor& x) {
  return x.stride(2) == 1 && x.stride(1) >= x.size(2) && x.stride(0) == x.size(1) * x.stride(1);
}

}  // namespace mamba
}  // namespace linearnexus
