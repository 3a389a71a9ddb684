// The mamba2 block's CUDA entry points in a build without CUDA (LibTorch for the CPU):
// ssd_cuda_applies() is false, and ssd_chunk_cuda() (never reached then) throws an Error saying so.
// CMake compiles this file instead of ssd_chunk_gpu.cpp and the .cu kernels.
#include <linearnexus/error.h>

#include "ssd_chunk_gpu.h"

namespace linearnexus {
namespace mamba2 {

bool ssd_cuda_applies(const at::Tensor&, int64_t, int64_t) { return false; }

SsdResult ssd_chunk_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&) {
  throw Error("mamba2: the CUDA SSD chunk kernels are not in this build (LibTorch without CUDA)");
}

}  // namespace mamba2
}  // namespace linearnexus
