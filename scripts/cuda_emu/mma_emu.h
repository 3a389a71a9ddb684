// The CPU versions of mma.cuh's helpers (run.sh puts this header in its place): each follows the PTX
// ISA's documented layouts and is a warp-wide exchange (every lane writes its operands to a per-warp
// buffer, a barrier, every lane reads what the hardware would deliver to it, a barrier).
//   ldmatrix.x4 (.trans): lanes 8i..8i+7 give the row addresses of 8x8 b16 matrix i; register i of
//     lane l = matrix i's elements (l/4, 2(l%4)) and (l/4, 2(l%4)+1), low half first; with .trans,
//     those of the transposed matrix, i.e. the elements (2(l%4), l/4) and (2(l%4)+1, l/4).
//   mma.m16n8k16.row.col.f32.bf16.bf16.f32 (g = lane >> 2, t = lane % 4):
//     A: a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//     B: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//     C/D: c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
//   The products of bf16 are exact; the 16-term sum is formed in double and rounded once to fp32
//   (the hardware's internal order and rounding are unspecified: within fp32 rounding of this).
//   cp.async: a copy is queued, not done; cp.async.wait_group N performs this thread's committed
//   groups but the N newest, so a read before its wait sees the shared memory's old contents (NaN).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "shim.h"

namespace linearnexus {
namespace mma {

struct WarpXchg {
  const __nv_bfloat16* rows[32];
  uint32_t a[32][4], b[32][2];
};
extern WarpXchg g_xchg[];  // a slot per warp (shim.h's warp_slot)
extern size_t g_smem_bytes;

inline float bf16_lo(uint32_t r) { return bf16_bits_to_float(static_cast<uint16_t>(r & 0xffffu)); }
inline float bf16_hi(uint32_t r) { return bf16_bits_to_float(static_cast<uint16_t>(r >> 16)); }
inline uint32_t pack_bits(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

inline void ldmatrix_emu(uint32_t (&r)[4], const __nv_bfloat16* row, bool trans) {
  const int lane = threadIdx.x % 32, w = warp_slot();
  if (reinterpret_cast<uintptr_t>(row) & 15 || row < reinterpret_cast<const __nv_bfloat16*>(g_smem) ||
      row + 8 > reinterpret_cast<const __nv_bfloat16*>(g_smem + g_smem_bytes)) {
    std::fprintf(stderr, "ldmatrix: row address misaligned or outside shared memory\n");
    std::abort();
  }
  g_xchg[w].rows[lane] = row;
  warp_sync();
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat16* const* m = g_xchg[w].rows + 8 * i;  // matrix i's 8 row addresses
    const int r0 = lane / 4, c0 = 2 * (lane % 4);
    if (!trans)
      r[i] = pack_bits(m[r0][c0].bits, m[r0][c0 + 1].bits);
    else
      r[i] = pack_bits(m[c0][r0].bits, m[c0 + 1][r0].bits);
  }
  warp_sync();
}
inline void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* row) { ldmatrix_emu(r, row, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* row) { ldmatrix_emu(r, row, true); }

inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const int lane = threadIdx.x % 32, w = warp_slot();
  WarpXchg& x = g_xchg[w];
  for (int i = 0; i < 4; ++i) x.a[lane][i] = a[i];
  x.b[lane][0] = b0, x.b[lane][1] = b1;
  warp_sync();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const uint32_t* al = x.a[l];
    A[g][2 * t] = bf16_lo(al[0]), A[g][2 * t + 1] = bf16_hi(al[0]);
    A[g + 8][2 * t] = bf16_lo(al[1]), A[g + 8][2 * t + 1] = bf16_hi(al[1]);
    A[g][2 * t + 8] = bf16_lo(al[2]), A[g][2 * t + 9] = bf16_hi(al[2]);
    A[g + 8][2 * t + 8] = bf16_lo(al[3]), A[g + 8][2 * t + 9] = bf16_hi(al[3]);
    B[2 * t][g] = bf16_lo(x.b[l][0]), B[2 * t + 1][g] = bf16_hi(x.b[l][0]);
    B[2 * t + 8][g] = bf16_lo(x.b[l][1]), B[2 * t + 9][g] = bf16_hi(x.b[l][1]);
  }
  warp_sync();
  const int g = lane >> 2, t = lane & 3;
  for (int e = 0; e < 4; ++e) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    double s = 0;
    for (int k = 0; k < 16; ++k) s += static_cast<double>(A[row][k]) * B[k][col];
    d[e] = static_cast<float>(d[e] + s);
  }
}

inline uint32_t pack_bf16x2(float lo, float hi) { return pack_bits(bf16_bits_rn(lo), bf16_bits_rn(hi)); }

struct CpAsyncCopy {
  void* dst;
  const void* src;
};
extern thread_local std::vector<CpAsyncCopy> g_cp_open;
extern thread_local std::deque<std::vector<CpAsyncCopy>> g_cp_groups;
inline void cp_async_16(void* smem, const void* gmem) {
  if ((reinterpret_cast<uintptr_t>(smem) | reinterpret_cast<uintptr_t>(gmem)) & 15) {
    std::fprintf(stderr, "cp.async: misaligned address\n");
    std::abort();
  }
  g_cp_open.push_back({smem, gmem});
}
inline void cp_async_commit() {
  g_cp_groups.push_back(std::move(g_cp_open));
  g_cp_open.clear();
}
template <int Pending>
inline void cp_async_wait() {
  while (g_cp_groups.size() > static_cast<size_t>(Pending)) {
    for (const auto& c : g_cp_groups.front()) std::memcpy(c.dst, c.src, 16);
    g_cp_groups.pop_front();
  }
}

inline float exp_nonpos(float x) {
  if (!(x <= 0.f)) {
    std::fprintf(stderr, "exp of a positive number: %g\n", x);
    std::abort();
  }
  return std::exp(x);
}

}  // namespace mma
}  // namespace linearnexus
