// The skinny matmul's contact with the hardware (skinny_gemm.cu): 16-byte and streaming loads,
// the swapped-operand mma, programmatic dependent launch and a cluster's distributed shared memory,
// each a small __device__ function. The CPU emulator (core/sdk/src/cuda/emu/run.sh) swaps this header
// for emu/skinny_gemm_hw_emu.h, which implements the same functions on scripts/cuda_emu's shim.h and
// mma_emu.h, so the kernels' own indexing is what the emulator checks.
#pragma once

#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <cstdint>

namespace linearnexus {
namespace cuda {
namespace {

// W is read exactly once: no L1 allocation; the L2 fetches whole 128-byte lines.
__device__ __forceinline__ uint4 load_stream(const __nv_bfloat16* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// x was written by the previous kernel (maybe still finishing under PDL): a plain coherent load (also
// of the normalised rows in shared memory, through a generic address).
__device__ __forceinline__ uint4 load_x(const __nv_bfloat16* p) { return *reinterpret_cast<const uint4*>(p); }

// c += A B for A 16 x 16 bf16 (a0..a3), B 16 x 8 bf16 (b0, b1), c 16 x 8 fp32 (PTX's fragment layout,
// linearnexus/cuda/mma.cuh's comment). Not volatile: the compiler may schedule it around the loads.
__device__ __forceinline__ void mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Programmatic dependent launch (sm_90; no-ops when the launch did not ask for it).
__device__ __forceinline__ void let_dependents_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_predecessor() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// The greedy head's grid-wide handshake: a CTA's partials made visible to the whole grid before it
// takes its ticket (the CTA that takes the last one reduces them), read past L1.
__device__ __forceinline__ void publish_to_grid() { __threadfence(); }
__device__ __forceinline__ unsigned take_ticket(unsigned* counter) { return atomicAdd(counter, 1u); }
__device__ __forceinline__ float load_from_grid(const float* p) { return __ldcg(p); }
__device__ __forceinline__ int load_from_grid(const int* p) { return __ldcg(p); }

// A cluster's barrier, and CTA `rank`'s copy of this CTA's shared-memory address p (sm_90: the
// launchers use clusters only there; elsewhere unreachable).
__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#endif
}
__device__ __forceinline__ float* cluster_peer(float* p, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  return rank == 0 ? p : nullptr;
#endif
}

}  // namespace
}  // namespace cuda
}  // namespace linearnexus
