// Rotary embeddings fused with the split of the qkv projection (launcher and contract in kernels.h).
//
// Why: the op path narrows q and k out of qkv, views and transposes them, then per tensor runs
// x1*cos, x2*sin, their difference, x2*cos, x1*sin, their sum and a cat (~7 full passes over q and
// k, and as many again backwards), and attention's .contiguous() copies q, k, v once more. Here one
// thread owns one (i, i + D/2) pair of one head of one token: it reads the pair from qkv once,
// rotates it in fp32 and writes it into the head-major layout the attention kernel reads; v is the
// same map without the rotation. Backward is the same map reversed with the angle negated.
#include <cuda_bf16.h>

#include "device_io.cuh"
#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// One block per token (b, t). Every head of the token rotates pair i by the same angle, so the
// block computes the D/2 cos / sin once into shared memory (the first version computed them per
// head and pair: 13.6 ms of a gpt-small step, compute-bound on sincosf); then each thread moves
// one pair of one head.
template <typename T>
__global__ void __launch_bounds__(kThreads) qkv_rope_kernel(QkvRopeArgs a, T* qkv, T* q, T* k, T* v, bool inverse) {
  extern __shared__ float cs[];  // [2, D/2]: cos, then sin
  const int half = static_cast<int>(a.D / 2), heads = static_cast<int>(a.H + 2 * a.Hkv);
  const int64_t row = blockIdx.x, b = row / a.T, t = row % a.T;
  if (a.rope) {
    const float pos = static_cast<float>(a.positions[b * a.pos_batch_stride + t]);
    for (int i = threadIdx.x; i < half; i += kThreads) {
      // angle = pos * base^(-i * (2/D)) in fp32, as apply_rope computes it.
      const float inv_freq = powf(a.base, -static_cast<float>(i) * a.two_over_d);
      float s, c;
      sincosf(pos * inv_freq, &s, &c);
      cs[i] = c, cs[half + i] = inverse ? -s : s;
    }
    __syncthreads();
  }
  for (int idx = threadIdx.x; idx < heads * half; idx += kThreads) {
    const int i = idx % half;  // the pair (i, i + half)
    const int j = idx / half;  // head among q's H, then k's Hkv, then v's Hkv
    T* packed = qkv + (row * heads + j) * a.D;  // [B, T, heads, D]
    T* split;                                   // [B, H or Hkv, T, D]
    bool rotate = a.rope;
    if (j < a.H) {
      split = q + ((b * a.H + j) * a.T + t) * a.D;
    } else if (j < a.H + a.Hkv) {
      split = k + ((b * a.Hkv + (j - a.H)) * a.T + t) * a.D;
    } else {
      split = v + ((b * a.Hkv + (j - a.H - a.Hkv)) * a.T + t) * a.D;
      rotate = false;
    }
    const T* src = inverse ? split : packed;
    T* dst = inverse ? packed : split;
    const float x1 = ld(src + i), x2 = ld(src + i + half);
    if (!rotate) {
      st(dst + i, x1), st(dst + i + half, x2);
      continue;
    }
    const float c = cs[i], s = cs[half + i];
    st(dst + i, x1 * c - x2 * s);
    st(dst + i + half, x2 * c + x1 * s);
  }
}

}  // namespace

cudaError_t qkv_rope(const QkvRopeArgs& a, DType dtype, void* qkv, void* q, void* k, void* v, bool inverse,
                     cudaStream_t stream) {
  if (a.B * a.T == 0) return cudaSuccess;
  if (a.D % 2 != 0) return cudaErrorInvalidValue;
  const dim3 blocks(static_cast<unsigned>(a.B * a.T));
  const size_t shared = static_cast<size_t>(a.D) * sizeof(float);
  if (dtype == DType::BF16)
    qkv_rope_kernel<__nv_bfloat16><<<blocks, kThreads, shared, stream>>>(
        a, static_cast<__nv_bfloat16*>(qkv), static_cast<__nv_bfloat16*>(q), static_cast<__nv_bfloat16*>(k),
        static_cast<__nv_bfloat16*>(v), inverse);
  else
    qkv_rope_kernel<float><<<blocks, kThreads, shared, stream>>>(a, static_cast<float*>(qkv), static_cast<float*>(q),
                                                            static_cast<float*>(k), static_cast<float*>(v), inverse);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace linearnexus
