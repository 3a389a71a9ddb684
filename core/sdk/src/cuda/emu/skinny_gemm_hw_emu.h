// skinny_gemm_hw.cuh on the CPU (run.sh puts this header in its place): the same functions on
// scripts/cuda_emu's shim.h and mma_emu.h. Vector loads check their 16-byte alignment (the GPU
// faults otherwise); the mma is mma_emu.h's PTX-layout one; PDL is a no-op (one kernel at a time);
// a cluster's CTAs run at once (emulate_skinny_gemm.cpp's launch) with a barrier across them and
// each CTA's shared memory reachable at the same offset as in its own.
#pragma once
#include <cstdio>
#include <cstdlib>

#include "mma_emu.h"
#include "shim.h"

namespace linearnexus {
namespace cuda {

extern unsigned char* g_cluster_smem[8];  // the cluster's CTAs' shared memory, by rank
extern pthread_barrier_t g_cluster_bar;

namespace {

inline uint4 load16(const void* p, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
    std::fprintf(stderr, "%s: 16-byte load from a misaligned address\n", what);
    std::abort();
  }
  return *static_cast<const uint4*>(p);
}
inline uint4 load_stream(const __nv_bfloat16* p) { return load16(p, "load_stream"); }
inline uint4 load_x(const __nv_bfloat16* p) { return load16(p, "load_x"); }

inline void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
  const uint32_t a[4] = {a0, a1, a2, a3};
  linearnexus::mma::mma_bf16(c, a, b0, b1);
}

inline void let_dependents_launch() {}
inline void wait_for_predecessor() {}

// The emulator runs the grid's CTAs one after another: the ticket is a plain count (under the shim's
// lock), the fence nothing.
inline void publish_to_grid() {}
inline unsigned take_ticket(unsigned* counter) {
  std::lock_guard<std::mutex> l(g_atomic_mu);
  return (*counter)++;
}
inline float load_from_grid(const float* p) { return *p; }
inline int load_from_grid(const int* p) { return *p; }

inline void cluster_sync() { pthread_barrier_wait(&g_cluster_bar); }
inline float* cluster_peer(float* p, int rank) {
  const ptrdiff_t off = reinterpret_cast<unsigned char*>(p) - g_smem;
  if (off < 0 || static_cast<size_t>(off) >= linearnexus::mma::g_smem_bytes) {
    std::fprintf(stderr, "cluster_peer: address outside shared memory\n");
    std::abort();
  }
  return reinterpret_cast<float*>(g_cluster_smem[rank] + off);
}

}  // namespace
}  // namespace cuda
}  // namespace linearnexus
