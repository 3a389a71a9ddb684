// Causal depthwise conv1d + SiLU on CUDA (launchers and math in causal_conv_cuda.h).
//
// Why a kernel: the op path (transpose, pad, cudnn's grouped conv1d on [B, D, T], silu) moved the
// [B, T, D] activation through memory five or six times and kept the conv output and the padded
// copy for backward (~13 GiB at mamba-small's B = 64, T = 1024). Here one thread owns one channel
// of one batch row over kTile consecutive tokens: it slides a K-tap window along time in registers,
// reads x once, writes silu(conv) once, and the backward recomputes the pre-activation from x
// instead of keeping it. Adjacent threads own adjacent channels, so every load and store of a row
// is coalesced.
#include <cuda_bf16.h>

#include <type_traits>

#include "causal_conv_cuda.h"

namespace linearnexus {
namespace mamba {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // channels per block
constexpr int kTile = 64;      // tokens per thread

__device__ __forceinline__ float ld(const float* p) { return __ldg(p); }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(__ldg(p)); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }

// x at (b, t, d) for any t: the history before t = 0 (or 0), 0 past the end.
template <typename T>
__device__ __forceinline__ float x_at(const ConvArgs& a, const T* x, int64_t b, int64_t t, int64_t d) {
  if (t >= a.T) return 0.f;
  if (t >= 0) return ld(x + (b * a.T + t) * a.x_row + d);
  if (!a.history || t < -(a.K - 1)) return 0.f;
  return __ldg(a.history + (b * a.D + d) * (a.K - 1) + (a.K - 1 + t));
}

// One channel's K-tap window, in registers (K is a template parameter, so every index is known at
// compile time): v[k] = x_{t - (K - 1) + k} after push(x_t).
template <int K>
struct Window {
  float v[K];
  __device__ void clear() {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = 0.f;
  }
  __device__ void push(float x) {
#pragma unroll
    for (int k = 0; k < K - 1; ++k) v[k] = v[k + 1];
    v[K - 1] = x;
  }
  __device__ float dot(const float* w) const {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) s += w[k] * v[k];
    return s;
  }
};

// Forward: y = silu(bias + w . window), kTile tokens per thread.
template <typename T, int K>
__global__ void conv_silu_forward_kernel(ConvArgs a, T* y) {
  const int64_t d = blockIdx.x * int64_t(kThreads) + threadIdx.x, b = blockIdx.z;
  const int64_t t0 = int64_t(blockIdx.y) * kTile;
  if (d >= a.D) return;
  const T* x = static_cast<const T*>(a.x);
  float w[K];
#pragma unroll
  for (int k = 0; k < K; ++k) w[k] = __ldg(a.w + d * K + k);
  const float bias = a.bias ? __ldg(a.bias + d) : 0.f;
  Window<K> win;
  win.clear();
#pragma unroll
  for (int k = 1; k < K; ++k) win.push(x_at(a, x, b, t0 - K + k, d));
  const int64_t t1 = t0 + kTile < a.T ? t0 + kTile : a.T;
  for (int64_t t = t0; t < t1; ++t) {
    win.push(ld(x + (b * a.T + t) * a.x_row + d));
    const float p = bias + win.dot(w);
    st(y + (b * a.T + t) * a.D + d, p * sigmoid(p));
  }
}

// Backward over the tokens [t0, t0 + kTile): g_t = dy_t silu'(p_t) for t in [t0, t1 + K - 1)
// (recomputing p_t from x), then
//   dx_s = sum_k w[k] g_{s + K - 1 - k},   dw[k] += g_t x_{t - (K - 1) + k},   dbias += g_t
// with g = 0 past the end. A window of the last K g's gives each dx_s once g_{s + K - 1} is known.
template <typename T, int K>
__global__ void conv_silu_backward_kernel(ConvArgs a, const T* dy, T* dx, int64_t dx_row, float* dw, float* dbias) {
  const int64_t d = blockIdx.x * int64_t(kThreads) + threadIdx.x, b = blockIdx.z;
  const int64_t t0 = int64_t(blockIdx.y) * kTile;
  if (d >= a.D) return;
  const T* x = static_cast<const T*>(a.x);
  float w[K], acc_w[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    w[k] = __ldg(a.w + d * K + k);
    acc_w[k] = 0.f;
  }
  const float bias = a.bias ? __ldg(a.bias + d) : 0.f;
  float acc_b = 0.f;
  Window<K> win, gw;  // gw: the last K g's, gw.v[j] = g_{t - (K - 1) + j}
  win.clear();
  gw.clear();
#pragma unroll
  for (int k = 1; k < K; ++k) win.push(x_at(a, x, b, t0 - K + k, d));
  const int64_t t1 = t0 + kTile < a.T ? t0 + kTile : a.T;  // this thread's dx and dw rows
  for (int64_t t = t0; t < t1 + K - 1; ++t) {
    float g = 0.f;
    if (t < a.T) {
      win.push(ld(x + (b * a.T + t) * a.x_row + d));
      const float p = bias + win.dot(w), s = sigmoid(p);
      g = ld(dy + (b * a.T + t) * a.D + d) * s * (1.f + p * (1.f - s));
      if (t < t1) {
#pragma unroll
        for (int k = 0; k < K; ++k) acc_w[k] += g * win.v[k];
        acc_b += g;
      }
    }
    gw.push(g);
    const int64_t s_out = t - (K - 1);
    if (s_out >= t0 && s_out < t1) {
      float v = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) v += w[k] * gw.v[K - 1 - k];
      st(dx + (b * a.T + s_out) * dx_row + d, v);
    }
  }
  const int64_t row = b * gridDim.y + blockIdx.y;  // the partial sums' (batch row, tile)
#pragma unroll
  for (int k = 0; k < K; ++k) dw[(row * a.D + d) * K + k] = acc_w[k];
  if (dbias) dbias[row * a.D + d] = acc_b;
}

dim3 grid_of(const ConvArgs& a) {
  return dim3(static_cast<unsigned>((a.D + kThreads - 1) / kThreads), static_cast<unsigned>(conv_backward_tiles(a.T)),
              static_cast<unsigned>(a.B));
}

// Calls f(std::integral_constant<int, K>) for the runtime K in 1 .. kMaxConvTaps.
template <typename F>
cudaError_t with_taps(int64_t K, F&& f) {
  switch (K) {
    case 1:
      f(std::integral_constant<int, 1>());
      break;
    case 2:
      f(std::integral_constant<int, 2>());
      break;
    case 3:
      f(std::integral_constant<int, 3>());
      break;
    case 4:
      f(std::integral_constant<int, 4>());
      break;
    case 5:
      f(std::integral_constant<int, 5>());
      break;
    case 6:
      f(std::integral_constant<int, 6>());
      break;
    case 7:
      f(std::integral_constant<int, 7>());
      break;
    case 8:
      f(std::integral_constant<int, 8>());
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
static_assert(kMaxConvTaps == 8, "with_taps dispatches K = 1 .. 8");

}  // namespace

int64_t conv_backward_tiles(int64_t T) { return (T + kTile - 1) / kTile; }

cudaError_t conv_silu_forward(const ConvArgs& a, void* y, cudaStream_t stream) {
  if (a.B == 0 || a.T == 0 || a.D == 0) return cudaSuccess;
  return with_taps(a.K, [&](auto k) {
    constexpr int K = decltype(k)::value;
    if (a.bf16)
      conv_silu_forward_kernel<__nv_bfloat16, K>
          <<<grid_of(a), kThreads, 0, stream>>>(a, static_cast<__nv_bfloat16*>(y));
    else
      conv_silu_forward_kernel<float, K><<<grid_of(a), kThreads, 0, stream>>>(a, static_cast<float*>(y));
  });
}

cudaError_t conv_silu_backward(const ConvArgs& a, const void* dy, void* dx, int64_t dx_row, float* dw, float* dbias,
                               cudaStream_t stream) {
  if (a.B == 0 || a.T == 0 || a.D == 0) return cudaSuccess;
  return with_taps(a.K, [&](auto k) {
    constexpr int K = decltype(k)::value;
    if (a.bf16)
      conv_silu_backward_kernel<__nv_bfloat16, K><<<grid_of(a), kThreads, 0, stream>>>(
          a, static_cast<const __nv_bfloat16*>(dy), static_cast<__nv_bfloat16*>(dx), dx_row, dw, dbias);
    else
      conv_silu_backward_kernel<float, K><<<grid_of(a), kThreads, 0, stream>>>(
          a, static_cast<const float*>(dy), static_cast<float*>(dx), dx_row, dw, dbias);
  });
}

}  // namespace cuda
}  // namespace mamba
}  // namespace linearnexus
