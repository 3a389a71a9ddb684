#pragma once
// What the ATen glue of CUDA kernels shares: the SDK's own (sdk/src/cuda) and a plugin's (plugins/mamba).
// Kernel launchers take raw pointers, sizes and a stream and return a cudaError_t; the glue turns a
// failure into one Error naming the kernel, and hands the kernels tensors in the layout they index.
// Include it only in CUDA builds (it includes the CUDA runtime's header).
#include <ATen/ATen.h>
#include <cuda_runtime_api.h>

#include <string>

#include "linearnexus/error.h"

namespace linearnexus {

// A launcher's CUDA error as one Error: "WHAT: CUDA kernel failed: <the runtime's message>".
inline void check_cuda(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw Error(what + ": CUDA kernel failed: " + cudaGetErrorString(e));
}

// Whether x [B, T, X] has unit stride along X and rows an equal stride apart (a narrow of a wider
// projection has): the layout kernels index as ptr[(b * T + t) * x.stride(1) + i]. Otherwise the
// caller makes it contiguous.
inline bool kernel_rows(const at::Tensor& x) {
  return x.stride(2) == 1 && x.stride(1) >= x.size(2) && x.stride(0) == x.size(1) * x.stride(1);
}

}  // namespace linearnexus
