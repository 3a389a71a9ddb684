// The warp-level tensor-core and copy primitives of the chunk kernels (mamba2's ssd_chunk.cu first),
// each one inline-PTX instruction in a small __device__ function. They are the kernels' only contact
// with the hardware's fragment layouts: a plugin's CPU emulator (plugins/mamba2/emu/run.sh) swaps this
// header for scripts/cuda_emu/mma_emu.h, which implements the same functions from the PTX ISA's
// documented layouts (a warp-wide exchange), so the kernel's own indexing is what the emulator checks.
//
// Fragments (PTX ISA, mma.m16n8k16 with .bf16 operands; g = lane >> 2, t = lane % 4):
//   A 16x16 row-major, 4 regs of 2 bf16:  a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B 16x8 (k x n),   2 regs of 2 bf16:   b0 (k 2t..2t+1, n g)  b1 (k 2t+8..2t+9, n g)
//   C/D 16x8 fp32,    4 floats:           c0 c1 (g, 2t..2t+1)  c2 c3 (g+8, 2t..2t+1)
// The lower-indexed element of a pair is in the low 16 bits.
// ldmatrix .x4: lanes 8i..8i+7 give the row addresses (16 bytes each) of 8x8 matrix i; register i of
// lane l gets matrix i's elements (l/4, 2(l%4)..+1), with .trans those of the transposed matrix.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace linearnexus {
namespace mma {

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; `row` is this lane's row address (see above).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row)));
}

// d += a b: one m16n8k16 tile, bf16 operands, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as one register of two bf16 (round to nearest even), `lo` in the low half.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// 16 bytes global -> shared without passing through registers; visible after cp_async_wait and a
// barrier. Both addresses 16-byte aligned.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most `Pending` of this thread's committed groups are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
}

// exp(x) for x <= 0 (every exponent the kernels form is clamped to <= 0 first).
__device__ __forceinline__ float exp_nonpos(float x) { return __expf(x); }

}  // namespace mma
}  // namespace linearnexus
