// Single-query attention over a static KV cache (decode_attention_cuda.h). SDPA's memory-efficient
// kernel, which is what takes a mask, parallelises over (batch, head, query blocks): one block per
// head at batch 1, each walking all the keys, ~16 us a layer at 768 keys on an H200 and a quarter of
// gpt-small's decode step. Here each (row, head) is split into chunks of kChunk keys, one block
// each, then combined: the flash-decoding split.
#include <cuda_bf16.h>

#include <cmath>

#include "decode_attention_cuda.h"

namespace linearnexus {
namespace attention {
namespace cuda {
namespace {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// One block per (b, h, chunk): the chunk's scores, their max m and sum l of exp(s - m), and the
// partial output sum_j exp(s_j - m) V_j; written to work[(bh * chunks + c) * (D + 2) + ...] as
// [o_0 .. o_{D-1}, m, l].
template <typename T>
__global__ void chunk_kernel(DecodeAttentionArgs a, float* work) {
  const int64_t nc = (a.L + kChunk - 1) / kChunk, bh = blockIdx.x / nc, c = blockIdx.x % nc;
  const int64_t b = bh / a.H, h = bh % a.H, kv = h / (a.H / a.Hkv);
  const int D = static_cast<int>(a.D), tid = threadIdx.x;
  const int64_t j0 = c * kChunk, n = a.L - j0 < kChunk ? a.L - j0 : kChunk;
  __shared__ float q[kThreads], p[kChunk], red[kThreads];
  const T* qp = static_cast<const T*>(a.q) + bh * D;
  if (tid < D) q[tid] = to_f(qp[tid]) * a.scale;
  __syncthreads();
  const T* kp = static_cast<const T*>(a.k) + ((b * a.Hkv + kv) * a.L + j0) * D;
  const float* bias = a.bias + b * a.bias_row + j0;
  float m = -INFINITY;
  for (int64_t j = tid; j < n; j += kThreads) {  // a thread per key: its whole row
    float s = 0.f;
    const T* row = kp + j * D;
    for (int d = 0; d < D; ++d) s += q[d] * to_f(row[d]);
    s += bias[j];
    p[j] = s;
    m = fmaxf(m, s);
  }
  red[tid] = m;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (tid < w) red[tid] = fmaxf(red[tid], red[tid + w]);
    __syncthreads();
  }
  m = red[0];
  __syncthreads();
  float l = 0.f;
  for (int64_t j = tid; j < n; j += kThreads) {
    const float e = m == -INFINITY ? 0.f : __expf(p[j] - m);
    p[j] = e;
    l += e;
  }
  red[tid] = l;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (tid < w) red[tid] += red[tid + w];
    __syncthreads();
  }
  l = red[0];
  __syncthreads();
  // Output: thread (g, d) sums keys g, g + G, ... of the chunk for dimension d; then the G groups.
  const int G = kThreads / D, g = tid / D, d = tid % D;
  const T* vp = static_cast<const T*>(a.v) + ((b * a.Hkv + kv) * a.L + j0) * D;
  float acc = 0.f;
  for (int64_t j = g; j < n; j += G) acc += p[j] * to_f(vp[j * D + d]);
  red[tid] = acc;
  __syncthreads();
  float* out = work + (bh * nc + c) * (D + 2);
  if (g == 0) {
    for (int k = 1; k < G; ++k) acc += red[k * D + d];
    out[d] = acc;
  }
  if (tid == 0) {
    out[D] = m;
    out[D + 1] = l;
  }
}

// One block of D threads per (b, h): out = sum_c e^{m_c - M} o_c / sum_c e^{m_c - M} l_c.
template <typename T>
__global__ void combine_kernel(DecodeAttentionArgs a, const float* work, T* out) {
  const int64_t nc = (a.L + kChunk - 1) / kChunk, bh = blockIdx.x;
  const int D = static_cast<int>(a.D), d = threadIdx.x;
  const float* w = work + bh * nc * (D + 2);
  float M = -INFINITY;
  for (int64_t c = 0; c < nc; ++c) M = fmaxf(M, w[c * (D + 2) + D]);
  float num = 0.f, den = 0.f;
  for (int64_t c = 0; c < nc; ++c) {
    const float mc = w[c * (D + 2) + D];
    if (mc == -INFINITY) continue;  // a chunk of padding / unwritten columns only
    const float f = __expf(mc - M);
    num += f * w[c * (D + 2) + d];
    den += f * w[c * (D + 2) + D + 1];
  }
  out[bh * D + d] = from_f<T>(den > 0.f ? num / den : 0.f);
}

template <typename T>
cudaError_t launch(const DecodeAttentionArgs& a, void* out, float* work, cudaStream_t stream) {
  const int64_t blocks = a.B * a.H * chunks(a.L);
  chunk_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, work);
  combine_kernel<T><<<static_cast<unsigned>(a.B * a.H), static_cast<unsigned>(a.D), 0, stream>>>(a, work, static_cast<T*>(out));
  return cudaGetLastError();
}

}  // namespace

cudaError_t decode_attention(const DecodeAttentionArgs& a, void* out, float* work, cudaStream_t stream) {
  if (!supports(a.D) || a.Hkv <= 0 || a.H % a.Hkv != 0) return cudaErrorInvalidValue;
  return a.bf16 ? launch<__nv_bfloat16>(a, out, work, stream) : launch<float>(a, out, work, stream);
}

}  // namespace cuda
}  // namespace attention
}  // namespace linearnexus
