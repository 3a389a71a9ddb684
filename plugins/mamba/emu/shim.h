// CPU stand-ins for the CUDA constructs selective_scan_bwd.cu uses (run.sh): one OS thread per CUDA
// thread, barriers for __syncthreads and for warp shuffles.
#pragma once
#include <pthread.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <atomic>
#include <vector>
#include <thread>
#include <string>
#include <cstdlib>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__
#define __align__(x)
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float2 {
  float x, y;
};
struct float4 {
  float x, y, z, w;
};
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
typedef int cudaError_t;
typedef void* cudaStream_t;
struct __nv_bfloat16 {
  float v;
};
inline float __bfloat162float(__nv_bfloat16 x) { return x.v; }
inline __nv_bfloat16 __float2bfloat16(float x) { return {x}; }
inline float __ldg(const float* p) { return *p; }
inline __nv_bfloat16 __ldg(const __nv_bfloat16* p) { return *p; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __expf(float x) { return std::exp(x); }
extern thread_local dim3 threadIdx, blockIdx;
extern thread_local float* g_smem;
extern pthread_barrier_t g_block_bar;
extern pthread_barrier_t g_warp_bar[32];
extern float g_warp_buf[32][32];
inline void __syncthreads() { pthread_barrier_wait(&g_block_bar); }
inline float __shfl_xor_sync(unsigned, float v, int off) {
  const int lane = threadIdx.x % 32, w = threadIdx.x / 32;
  g_warp_buf[w][lane] = v;
  pthread_barrier_wait(&g_warp_bar[w]);
  const float r = g_warp_buf[w][lane ^ off];
  pthread_barrier_wait(&g_warp_bar[w]);
  return r;
}
extern std::mutex g_atomic_mu;
inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> l(g_atomic_mu);
  float o = *p;
  *p += v;
  return o;
}
