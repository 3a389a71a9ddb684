// The mamba block's CUDA entry points in a build without CUDA (LibTorch for the CPU): every
// *_applies() is false, so the block takes its CPU paths, and the *_cuda() calls (never reached then)
// throw an Error saying so. CMake compiles this file instead of the CUDA glue
// (selective_scan_gpu.cpp, causal_conv_gpu.cpp, mamba_inner_gpu.cpp) and the .cu kernels.
#include <linearnexus/error.h>

#include "causal_conv_gpu.h"
#include "selective_scan_gpu.h"

namespace linearnexus {
namespace mamba {

// selective_scan_gpu
bool cuda_scan_applies(const at::Tensor&, int64_t) { return false; }

GatedScanResult scan_gated_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, const at::Tensor&,
                                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const at::Tensor&) {
  throw Error("mamba: the CUDA selective scan is not in this build (LibTorch without CUDA); use scan: chunk");
}

bool conv_step_applies(const at::Tensor&, const at::Tensor&) { return false; }
at::Tensor conv_step_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw Error("mamba: the CUDA conv step is not in this build (LibTorch without CUDA)");
}

// causal_conv_gpu
bool cuda_conv_applies(const at::Tensor&, int64_t) { return false; }

at::Tensor conv_silu_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor*) {
  throw Error("mamba: the CUDA causal conv is not in this build (LibTorch without CUDA); use scan: chunk");
}

// mamba_inner_gpu
bool mamba_inner_applies(const at::Tensor&, int64_t, int64_t) { return false; }

at::Tensor mamba_inner_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw Error("mamba: the CUDA inner path is not in this build (LibTorch without CUDA)");
}

}  // namespace mamba
}  // namespace linearnexus
