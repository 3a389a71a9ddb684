// Rotary embeddings fused with the split of the qkv projection (launcher and contract in kernels.h).
//
// Why: the op path narrows q and k out of qkv, views and transposes them, then per tensor runs
// x1*cos, x2*sin, their difference, x2*cos, x1*sin, their sum and a cat (~7 full passes over q and
// k, and as many again backwards), and attention's .contiguous() copies q, k, v once more. Here one
// thread owns one (i, i + D/2) pair of one head of one token: it reads the pair from qkv once,
// rotates it in fp32 and writes it into q, k or v; v is the same map without the rotation. Backward
// is the same map reversed with the angle negated. The layout attention gets is token-major
// ([B, T, H, D], viewed as [B, H, T, D]): the attention kernel then writes its output token-major
// too, and the [B, T, H D] the projection reads is a view, not a transposing copy each way (the
// head-major layout cost those two copies: 1.4 ms of a gpt-small step, measured on an H200).
//
// Two kernels: the vector one (qkv_rope_vec_kernel) where 16-byte accesses line up, which is
// gpt-small's case (D = 64 bf16); the scalar one (one pair per thread) for everything else.
#include <cuda_bf16.h>

#include "device_io.cuh"
#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kThreads = 256;

// Head j of the token in row `row` (= b * T + t): its slice of qkv [B, T, heads, D] and of q / k / v
// [B, T, H or Hkv, D] (heads: q's H, then k's Hkv, then v's Hkv); v does not rotate.
template <typename T>
struct HeadRows {
  T* packed;
  T* split;
  bool rotate;
};

template <typename T>
__device__ __forceinline__ HeadRows<T> head_rows(const QkvRopeArgs& a, T* qkv, T* q, T* k, T* v, int64_t row, int j) {
  const int64_t heads = a.H + 2 * a.Hkv;
  HeadRows<T> r{qkv + (row * heads + j) * a.D, nullptr, a.rope};
  if (j < a.H) {
    r.split = q + (row * a.H + j) * a.D;
  } else if (j < a.H + a.Hkv) {
    r.split = k + (row * a.Hkv + (j - a.H)) * a.D;
  } else {
    r.split = v + (row * a.Hkv + (j - a.H - a.Hkv)) * a.D;
    r.rotate = false;
  }
  return r;
}

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
    const HeadRows<T> hr = head_rows(a, qkv, q, k, v, row, j);
    const T* src = inverse ? hr.split : hr.packed;
    T* dst = inverse ? hr.packed : hr.split;
    const float x1 = ld(src + i), x2 = ld(src + i + half);
    if (!hr.rotate) {
      st(dst + i, x1), st(dst + i + half, x2);
      continue;
    }
    const float c = cs[i], s = cs[half + i];
    st(dst + i, x1 * c - x2 * s);
    st(dst + i + half, x2 * c + x1 * s);
  }
}

// The vector form. The scalar kernel above moved 2-byte values (two loads and two stores of 2 bytes
// per thread, per pair): 10.7 ms of a gpt-small step (fwd + bwd) against a ~4 ms floor for reading
// and writing q, k, v once each way. Here one thread owns N = 16 / sizeof(T) consecutive pairs
// (i0 .. i0 + N - 1 with their partners i + D/2) of one head of one token: two 16-byte loads, two
// 16-byte stores. A block takes kVecTokens tokens so that a token's heads x (D/2)/N threads (144 at
// gpt-small) do not leave most of the block idle, and keeps their cos / sin in shared memory.
// Needs (D/2) % N == 0 and 16-byte aligned q, k, v, qkv (then every row start is aligned too).
constexpr int kVecTokens = 16;

template <typename T>
__global__ void __launch_bounds__(kThreads) qkv_rope_vec_kernel(QkvRopeArgs a, T* qkv, T* q, T* k, T* v, bool inverse) {
  constexpr int N = Pack16<T>::N;
  extern __shared__ float cs[];  // [kVecTokens, 2, D/2]: per token cos, then sin
  const int half = static_cast<int>(a.D / 2), heads = static_cast<int>(a.H + 2 * a.Hkv), chunks = half / N;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kVecTokens;
  const int tokens = static_cast<int>(min(static_cast<int64_t>(kVecTokens), a.B * a.T - row0));
  if (a.rope) {
    for (int idx = threadIdx.x; idx < tokens * half; idx += kThreads) {
      const int r = idx / half, i = idx % half;
      const int64_t row = row0 + r, b = row / a.T, t = row % a.T;
      const float pos = static_cast<float>(a.positions[b * a.pos_batch_stride + t]);
      // angle = pos * base^(-i * (2/D)) in fp32, as apply_rope computes it.
      const float inv_freq = powf(a.base, -static_cast<float>(i) * a.two_over_d);
      float s, c;
      sincosf(pos * inv_freq, &s, &c);
      cs[r * 2 * half + i] = c, cs[r * 2 * half + half + i] = inverse ? -s : s;
    }
    __syncthreads();
  }
  const int per_token = heads * chunks;
  for (int idx = threadIdx.x; idx < tokens * per_token; idx += kThreads) {
    const int r = idx / per_token, rem = idx % per_token;
    const int j = rem / chunks, i0 = (rem % chunks) * N;  // head j, pairs i0 .. i0 + N - 1
    const HeadRows<T> hr = head_rows(a, qkv, q, k, v, row0 + r, j);
    const T* src = inverse ? hr.split : hr.packed;
    T* dst = inverse ? hr.packed : hr.split;
    float x1[N], x2[N];
    Pack16<T>::load(src + i0, x1);
    Pack16<T>::load(src + i0 + half, x2);
    if (hr.rotate) {
      const float* c = cs + r * 2 * half + i0;
      const float* s = c + half;
      float y1[N], y2[N];
#pragma unroll
      for (int n = 0; n < N; ++n) {
        y1[n] = x1[n] * c[n] - x2[n] * s[n];
        y2[n] = x2[n] * c[n] + x1[n] * s[n];
      }
      Pack16<T>::store(dst + i0, y1);
      Pack16<T>::store(dst + i0 + half, y2);
    } else {
      Pack16<T>::store(dst + i0, x1);
      Pack16<T>::store(dst + i0 + half, x2);
    }
  }
}

template <typename T>
cudaError_t launch(const QkvRopeArgs& a, T* qkv, T* q, T* k, T* v, bool inverse, cudaStream_t stream) {
  const int64_t rows = a.B * a.T;
  const size_t vec_shared = static_cast<size_t>(kVecTokens * a.D) * sizeof(float);
  const bool vec = (a.D / 2) % Pack16<T>::N == 0 && vec_shared <= 48 * 1024 && aligned16(qkv) && aligned16(q) &&
                   aligned16(k) && aligned16(v);
  if (vec) {
    const dim3 blocks(static_cast<unsigned>((rows + kVecTokens - 1) / kVecTokens));
    qkv_rope_vec_kernel<T><<<blocks, kThreads, vec_shared, stream>>>(a, qkv, q, k, v, inverse);
  } else {
    const size_t shared = static_cast<size_t>(a.D) * sizeof(float);
    qkv_rope_kernel<T><<<dim3(static_cast<unsigned>(rows)), kThreads, shared, stream>>>(a, qkv, q, k, v, inverse);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t qkv_rope(const QkvRopeArgs& a, DType dtype, void* qkv, void* q, void* k, void* v, bool inverse,
                     cudaStream_t stream) {
  if (a.B * a.T == 0) return cudaSuccess;
  if (a.D % 2 != 0) return cudaErrorInvalidValue;
  using bf = __nv_bfloat16;
  if (dtype == DType::BF16)
    return launch<bf>(a, static_cast<bf*>(qkv), static_cast<bf*>(q), static_cast<bf*>(k), static_cast<bf*>(v), inverse,
                      stream);
  return launch<float>(a, static_cast<float*>(qkv), static_cast<float*>(q), static_cast<float*>(k),
                       static_cast<float*>(v), inverse, stream);
}

}  // namespace cuda
}  // namespace linearnexus
