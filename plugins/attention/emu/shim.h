// CPU stand-ins for the CUDA constructs decode_attention.cu uses (run.sh): one OS thread per CUDA
// thread, a barrier for __syncthreads and one per warp for __shfl_xor_sync, __shared__ arrays as one
// NaN-filled buffer per CTA (a read before the write shows), bf16 as 16 bits rounded to nearest even
// from fp32 (as __float2bfloat16), 16-byte loads as plain copies, and <<<>>> (rewritten by run.sh to
// emu_launch) as the CTAs run one after another. Same idea as plugins/mamba/emu/shim.h, whose bf16
// is a plain float (this kernel reinterprets 16 bytes as 8 bf16, so it needs the real 2 bytes).
#pragma once
#include <pthread.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
typedef int cudaError_t;
typedef void* cudaStream_t;
constexpr cudaError_t cudaSuccess = 0, cudaErrorInvalidValue = 1;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __bfloat162float(__nv_bfloat16 x) { return __uint_as_float(static_cast<unsigned>(x.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16(float f) {  // round to nearest even, NaN kept quiet
  unsigned u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<uint16_t>(u >> 16)};
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }

extern thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
extern thread_local int g_shared_next;  // the thread's next __shared__ declaration
extern std::mutex g_mu;
extern std::vector<std::unique_ptr<float[]>> g_shared;  // the CTA's __shared__ arrays
extern pthread_barrier_t g_block_bar;
extern pthread_barrier_t g_warp_bar[32];
extern float g_warp_buf[32][32];

// The i-th __shared__ array a thread declares: the same buffer for every thread of the CTA.
inline void* emu_shared(size_t bytes) {
  std::lock_guard<std::mutex> l(g_mu);
  const size_t i = static_cast<size_t>(g_shared_next++);
  if (g_shared.size() <= i) {
    const size_t n = bytes / sizeof(float);
    g_shared.emplace_back(new float[n]);
    for (size_t j = 0; j < n; ++j) g_shared.back()[j] = std::numeric_limits<float>::quiet_NaN();
  }
  return g_shared[i].get();
}

inline void __syncthreads() { pthread_barrier_wait(&g_block_bar); }
inline float __shfl_xor_sync(unsigned, float v, int off) {
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  g_warp_buf[w][lane] = v;
  pthread_barrier_wait(&g_warp_bar[w]);
  const float r = g_warp_buf[w][lane ^ off];
  pthread_barrier_wait(&g_warp_bar[w]);
  return r;
}

// kernel<<<grid, block, 0, stream>>>(args): the CTAs one by one, each as block.x OS threads
// (block.x a multiple of 32, at most 1024).
inline void emu_launch(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  pthread_barrier_init(&g_block_bar, nullptr, block.x);
  for (unsigned w = 0; w < block.x / 32; ++w) pthread_barrier_init(&g_warp_bar[w], nullptr, 32);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        g_shared.clear();
        std::vector<std::thread> th;
        for (unsigned t = 0; t < block.x; ++t)
          th.emplace_back([&, t] {
            threadIdx = dim3(t), blockIdx = dim3(x, y, z), blockDim = block, gridDim = grid;
            g_shared_next = 0;
            kernel();
          });
        for (auto& t : th) t.join();
      }
  pthread_barrier_destroy(&g_block_bar);
  for (unsigned w = 0; w < block.x / 32; ++w) pthread_barrier_destroy(&g_warp_bar[w]);
}
