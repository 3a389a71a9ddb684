// The attention block's CUDA entry points in a build without CUDA (LibTorch for the CPU):
// decode_attention_applies() is false, so the block keeps SDPA, and decode_attention_cuda() (never
// reached then) throws an Error saying so. CMake compiles this file instead of
// decode_attention_gpu.cpp and decode_attention.cu.
#include <linearnexus/error.h>

#include "decode_attention_gpu.h"

namespace linearnexus {
namespace attention {

bool decode_attention_applies(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  return false;
}

at::Tensor decode_attention_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const at::Tensor&, int64_t) {
  throw Error("attention: the CUDA decode attention is not in this build (LibTorch without CUDA)");
}

}  // namespace attention
}  // namespace linearnexus
