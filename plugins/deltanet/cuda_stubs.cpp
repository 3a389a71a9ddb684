// The deltanet blocks' CUDA entry points in a build without CUDA (LibTorch for the CPU):
// delta_cuda_applies() is false, and delta_chunk_cuda() (never reached then) throws an Error saying so.
// CMake compiles this file instead of delta_chunk_gpu.cpp and the .cu kernels.
#include <linearnexus/error.h>

#include "delta_chunk_gpu.h"

namespace linearnexus {
namespace deltanet {

bool delta_cuda_applies(const at::Tensor&, int64_t) { return false; }

DeltaResult delta_chunk_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&) {
  throw Error("deltanet: the CUDA delta-rule chunk kernels are not in this build (LibTorch without CUDA)");
}

}  // namespace deltanet
}  // namespace linearnexus
