// CPU stand-ins for the CUDA constructs the chunk kernels use outside mma.cuh (a plugin's emu/run.sh):
// one OS thread per CUDA thread, a barrier for __syncthreads and a per-warp barrier + buffer for warp
// shuffles. bf16 is its real 16-bit pattern, rounded to nearest even, so packed registers and shared
// memory hold the same bits as on the GPU.
#pragma once
#include <pthread.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(x)
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float2 {
  float x, y;
};
struct uint4 {
  uint32_t x, y, z, w;
};
inline float2 make_float2(float a, float b) { return {a, b}; }
inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) { return {a, b, c, d}; }
typedef int cudaError_t;
typedef void* cudaStream_t;

struct __nv_bfloat16 {
  uint16_t bits;
};
inline uint16_t bf16_bits_rn(float f) {  // round to nearest even, as __float2bfloat16_rn
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float f) { return {bf16_bits_rn(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {bf16_bits_rn(f)}; }
inline float __bfloat162float(__nv_bfloat16 x) { return bf16_bits_to_float(x.bits); }

extern thread_local dim3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;  // defined by the emulators whose kernels read them
extern thread_local unsigned char* g_smem;
extern pthread_barrier_t g_block_bar;
extern pthread_barrier_t g_warp_bar[];  // 32 slots, more where several CTAs run at once
// Several CTAs at once (a cluster: core/sdk/src/cuda/emu): each thread's CTA has its own block barrier
// and warp slots from g_warp_base on; left as they are, one CTA at a time uses g_block_bar and 0..31.
inline thread_local int g_warp_base = 0;
inline thread_local pthread_barrier_t* g_cta_bar = nullptr;
inline int warp_slot() { return g_warp_base + static_cast<int>(threadIdx.x / 32); }
inline void __syncthreads() { pthread_barrier_wait(g_cta_bar ? g_cta_bar : &g_block_bar); }
inline void warp_sync() { pthread_barrier_wait(&g_warp_bar[warp_slot()]); }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }  // the hardware's is approximate (2 ulp)

// Warp shuffles (every lane of the warp takes part, as the kernel's full masks say).
extern float g_shfl_buf[][32];
inline float __shfl_up_sync(unsigned, float v, int off) {
  const int lane = threadIdx.x % 32, w = warp_slot();
  g_shfl_buf[w][lane] = v;
  warp_sync();
  const float r = lane >= off ? g_shfl_buf[w][lane - off] : v;
  warp_sync();
  return r;
}
inline float __shfl_sync(unsigned, float v, int src) {
  const int lane = threadIdx.x % 32, w = warp_slot();
  g_shfl_buf[w][lane] = v;
  warp_sync();
  const float r = g_shfl_buf[w][src];
  warp_sync();
  return r;
}
inline float __shfl_xor_sync(unsigned, float v, int mask) {
  const int lane = threadIdx.x % 32, w = warp_slot();
  g_shfl_buf[w][lane] = v;
  warp_sync();
  const float r = g_shfl_buf[w][lane ^ mask];
  warp_sync();
  return r;
}
inline int __shfl_xor_sync(unsigned, int v, int mask) {
  const int lane = threadIdx.x % 32, w = warp_slot();
  float f;
  std::memcpy(&f, &v, 4);  // through the float buffer, bits unchanged
  g_shfl_buf[w][lane] = f;
  warp_sync();
  std::memcpy(&v, &g_shfl_buf[w][lane ^ mask], 4);
  warp_sync();
  return v;
}
inline float __shfl_down_sync(unsigned, float v, int off) {
  const int lane = threadIdx.x % 32, w = warp_slot();
  g_shfl_buf[w][lane] = v;
  warp_sync();
  const float r = lane + off < 32 ? g_shfl_buf[w][lane + off] : v;
  warp_sync();
  return r;
}
// Atomics: one lock for all (order differs from the GPU's; fp32 sums within rounding of each other).
#include <mutex>
extern std::mutex g_atomic_mu;
inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> l(g_atomic_mu);
  const float o = *p;
  *p += v;
  return o;
}
