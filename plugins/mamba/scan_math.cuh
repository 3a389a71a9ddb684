// Device helpers the selective-scan kernels share (selective_scan.cu, selective_scan_bwd.cu):
// fp32 / bf16 loads and stores in fp32, and the activations' forms the forward and the backward
// must agree on (softplus as torch computes it, the sigmoid of the gate).
#pragma once

#include <cuda_bf16.h>

namespace linearnexus {
namespace mamba {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float ld(const float* p) { return __ldg(p); }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

__device__ __forceinline__ float sigmoid(float x) { return __frcp_rn(1.f + __expf(-x)); }
// torch's softplus: beta 1, linear above 20.
__device__ __forceinline__ float softplus(float x) { return x > 20.f ? x : log1pf(__expf(x)); }

// 2^x for x <= 0 (a decay exp(delta A) with delta >= 0, A <= 0): one MUFU instruction, results
// that would be denormal flushed to 0 (a decay of < 1e-38 per step is 0 for any state).
__device__ __forceinline__ float exp2_decay(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

}  // namespace cuda
}  // namespace mamba
}  // namespace linearnexus
