// Loads and stores of fp32 / bf16 values as fp32, shared by core's kernels (all math is fp32).
#pragma once

#include <cuda_bf16.h>

namespace linearnexus {
namespace cuda {

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

}  // namespace cuda
}  // namespace linearnexus
