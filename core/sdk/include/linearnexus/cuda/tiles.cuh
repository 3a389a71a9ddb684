#pragma once
// Shared-memory operand tiles of the mma.sync chunk kernels (mamba2's SSD, deltanet's delta rule): a
// global operand into bf16 shared memory (cp.async where it can), and the fragments of 16x16 tiles of it
// by ldmatrix. Built on mma.cuh's primitives only, so the plugins' CPU emulators port this header as it
// is (emu/run.sh), with mma.cuh swapped for scripts/cuda_emu/mma_emu.h.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include <linearnexus/cuda/mma.cuh>

namespace linearnexus {
namespace mma {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void store2(float* p, float a, float b) {
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
}
__device__ __forceinline__ void store2(bf16* p, float a, float b) {
  *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(a, b);
}

// The fragments of one 16x16 operand tile from shared memory (bf16, row stride ld elements), by
// ldmatrix.x4 (mma.cuh gives the layouts). Row-major [m][k] tile at (m0, k0) -> the A fragment.
__device__ __forceinline__ void a_frag(uint32_t (&r)[4], const bf16* s, int ld, int m0, int k0, int lane) {
  ldmatrix_x4(r, s + (m0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + k0 + (lane >> 4) * 8);
}
// A stored transposed, [k][m], tile at (k0, m0) -> the A fragment.
__device__ __forceinline__ void a_frag_t(uint32_t (&r)[4], const bf16* s, int ld, int k0, int m0, int lane) {
  ldmatrix_x4_trans(r, s + (k0 + (lane & 7) + (lane >> 4) * 8) * ld + m0 + ((lane >> 3) & 1) * 8);
}
// B stored [n][k], tile at (n0, k0) -> {b0, b1} of n-tile n0 .. n0+7, then {b0, b1} of n0+8 .. n0+15.
__device__ __forceinline__ void b_frag(uint32_t (&r)[4], const bf16* s, int ld, int n0, int k0, int lane) {
  ldmatrix_x4(r, s + (n0 + (lane & 7) + (lane >> 4) * 8) * ld + k0 + ((lane >> 3) & 1) * 8);
}
// B stored [k][n], tile at (k0, n0) -> the same two n-tiles.
__device__ __forceinline__ void b_frag_t(uint32_t (&r)[4], const bf16* s, int ld, int k0, int n0, int lane) {
  ldmatrix_x4_trans(r, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8);
}

// The block's `Threads` threads copy rows x cols (cols % 8 == 0) of an operand whose rows are `row`
// elements apart -> bf16 shared memory (row stride ld); rows at or past `valid` are zeros (the tail
// chunk). bf16 with `vec` (16-byte aligned rows) goes by cp.async, to be waited for by the caller;
// anything else by loads + rounding.
template <int Threads, typename In>
__device__ void load_tile(bf16* dst, int ld, const In* src, int64_t row, int valid, int rows, int cols, bool vec) {
  const int per_row = cols / 8;
  for (int i = threadIdx.x; i < rows * per_row; i += Threads) {
    const int r = i / per_row, c = (i % per_row) * 8;
    bf16* d = dst + r * ld + c;
    if (r >= valid) {
      *reinterpret_cast<uint4*>(d) = make_uint4(0u, 0u, 0u, 0u);
      continue;
    }
    const In* s = src + r * row + c;
    if constexpr (std::is_same<In, bf16>::value) {
      if (vec) {
        cp_async_16(d, s);
        continue;
      }
    }
    uint4 v;
    v.x = pack_bf16x2(to_f(s[0]), to_f(s[1]));
    v.y = pack_bf16x2(to_f(s[2]), to_f(s[3]));
    v.z = pack_bf16x2(to_f(s[4]), to_f(s[5]));
    v.w = pack_bf16x2(to_f(s[6]), to_f(s[7]));
    *reinterpret_cast<uint4*>(d) = v;
  }
}

}  // namespace mma
}  // namespace linearnexus
