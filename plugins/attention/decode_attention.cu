// Split-KV single-query attention for the decode step (FlashDecoding's scheme; launcher and math in
// decode_attention_cuda.h).
//
// What it replaces: the static decode step attended with SDPA over the WHOLE cache [B, Hkv, L, D]
// (L = max_len; the columns after the new token masked by an additive bias), after
// repeat_interleave had copied K and V to [B, H, L, D] for GQA. Per layer and row that reads
// 2 L Hkv D + 2 L H D elements, writes 2 L H D (the copies; none for MHA) and computes all L columns
// whatever the context. Here each CTA takes one (row, KV head, up to 8 of the query heads sharing
// it, chunk of <= 256 columns), reads the slot on the device and stops at it: 2 (s + 1) Hkv D
// elements of K and V read once for the G = H / Hkv heads (no copies), s + 1 bytes of padding, and
// (D + 2) fp32 partials per (row, head, split) written and read back by the merge. gpt-small
// (MHA, H = 12, D = 64, bf16), context 128 in a 640-column cache: 0.39 MB a layer and a row against
// SDPA's 1.97 MB. Chunks spread over CTAs so B * Hkv * splits fills the multiprocessors even at
// B = 1; the launch is the same at every slot (CTAs past the slot return at once), so a CUDA graph
// captured at one position replays at all of them.
//
// Per CTA (128 threads): LANES = D / VEC threads hold one key row, VEC = 16 bytes of elements each
// (8 bf16 or 4 fp32: one 16-byte load), RPI = 128 / LANES rows at a time, and each thread issues
// the loads of kAhead = 4 rows before it uses the first (few CTAs per SM at B = 1: latency-bound).
//   1. scores[g][r] = q_g . k_r / sqrt(D) for the chunk's rows r <= slot (warp shuffles sum the
//      LANES partial dots), -inf for padding;
//   2. per head: m = max, p = exp(scores - m), l = sum p (one warp a head);
//   3. o_g = sum_r p[g][r] v_r: each thread sums its rows for its d-slice, then shuffles and shared
//      memory sum the row groups.
// One split: o_g / l written in q's dtype. Several: (o_g, m, l) in fp32 to the workspace, and the
// merge kernel (one CTA per (row, head), a thread per d) rescales by exp(m - max m) and divides.
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "decode_attention_cuda.h"

namespace linearnexus {
namespace attention {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMinChunk = 64;
constexpr int kAhead = 4;  // key / value rows each thread loads before using the first (latency)
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void st(float* p, float x) { *p = x; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float x) { *p = __float2bfloat16(x); }

// 16 bytes of T from p (16-byte aligned) as N floats.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  static constexpr int N = 4;
  __device__ __forceinline__ static void load(const float* p, float* out) {
    const float4 r = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = r.x, out[1] = r.y, out[2] = r.z, out[3] = r.w;
  }
};
template <>
struct Vec<__nv_bfloat16> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void load(const __nv_bfloat16* p, float* out) {
    const uint4 r = __ldg(reinterpret_cast<const uint4*>(p));
    const unsigned w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // element 2i is the low half of word i; a bf16 is fp32's top half
      out[2 * i] = __uint_as_float(w[i] << 16);
      out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};

__device__ __forceinline__ int64_t slot_of(const DecodeAttentionArgs& a) {
  const int64_t s = *a.slot;
  return s < 0 ? 0 : (s >= a.L ? a.L - 1 : s);
}

// Grid (splits, Hkv * tiles, B); tiles = ceil(G / GT) groups of GT query heads per KV head.
// q [B, H, D], k / v [B, Hkv, L, D] strided -> out [B, H, D] (splits == 1) or ws [B, H, splits, D + 2]
// (the unnormalised o, then m and l).
template <typename T, int D, int GT>
__global__ void __launch_bounds__(kThreads)
    decode_split_kernel(const DecodeAttentionArgs a, int64_t chunk, int64_t splits, float* ws, T* out) {
  constexpr int V = Vec<T>::N, LANES = D / V, RPI = kThreads / LANES;
  static_assert(LANES <= 32 && 32 % LANES == 0, "a key row within one warp");
  __shared__ float scores[GT][kMaxChunk];
  __shared__ float red[kWarps][GT][D];
  __shared__ float stat_m[GT];
  __shared__ float stat_l[GT];

  const int64_t split = blockIdx.x, b = blockIdx.z, G = a.H / a.Hkv, tiles = (G + GT - 1) / GT;
  const int64_t hkv = blockIdx.y / tiles, tile = blockIdx.y % tiles, h0 = hkv * G + tile * GT;
  const int gn = static_cast<int>(G - tile * GT < GT ? G - tile * GT : GT);  // heads in this tile
  const int64_t slot = slot_of(a), c0 = split * chunk;
  if (c0 > slot) return;  // a chunk after the new token: nothing to read
  // This CTA takes the rows c0 .. c0 + n - 1.
  const int64_t n = chunk < slot + 1 - c0 ? chunk : slot + 1 - c0;

  const int tid = threadIdx.x, li = tid % LANES, rg = tid / LANES, d0 = li * V, warp = tid / 32, lane = tid % 32;
  const T* k = static_cast<const T*>(a.k) + b * a.k_sb + hkv * a.k_sh + c0 * a.k_sl + d0;
  const T* v = static_cast<const T*>(a.v) + b * a.v_sb + hkv * a.v_sh + c0 * a.v_sl + d0;
  const uint8_t* pad = a.key_padding ? a.key_padding + b * a.pad_sb + c0 : nullptr;
  const T* q = static_cast<const T*>(a.q) + b * a.q_sb + h0 * a.q_sh + d0;
  const float scale = rsqrtf(static_cast<float>(D));

  // 1. Scores. Every thread runs the same number of iterations (the shuffles need the whole warp).
  float qr[GT][V];
#pragma unroll
  for (int g = 0; g < GT; ++g)
#pragma unroll
    for (int i = 0; i < V; ++i) qr[g][i] = g < gn ? to_f(q[g * a.q_sh + i]) * scale : 0.f;
  for (int64_t r0 = 0; r0 < n; r0 += RPI * kAhead) {
    float kk[kAhead][V];
    bool live[kAhead];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {  // the loads first: kAhead rows in flight per thread
      const int64_t r = r0 + u * RPI + rg;
      live[u] = r < n && (!pad || pad[r]);
      if (live[u]) {
        Vec<T>::load(k + r * a.k_sl, kk[u]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) kk[u][i] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t r = r0 + u * RPI + rg;
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        // Both conditions are uniform over the CTA: a row left for some thread, a head in the tile.
        if (r0 + u * RPI < n && g < gn) {
          float s = 0.f;
#pragma unroll
          for (int i = 0; i < V; ++i) s += qr[g][i] * kk[u][i];
#pragma unroll
          for (int off = LANES / 2; off > 0; off >>= 1) s += __shfl_xor_sync(kFull, s, off);
          if (li == 0 && r < n) scores[g][r] = live[u] ? s : neg_inf();
        }
      }
    }
  }
  __syncthreads();

  // 2. Softmax statistics, one warp per head; padding gives p = 0, a chunk of padding only l = 0.
  for (int g = warp; g < gn; g += kWarps) {
    float m = neg_inf();
    for (int64_t r = lane; r < n; r += 32) m = fmaxf(m, scores[g][r]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, off));
    float l = 0.f;
    for (int64_t r = lane; r < n; r += 32) {
      const float p = m == neg_inf() ? 0.f : __expf(scores[g][r] - m);
      scores[g][r] = p;
      l += p;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(kFull, l, off);
    if (lane == 0) stat_m[g] = m, stat_l[g] = l;
  }
  __syncthreads();

  // 3. o_g = sum_r p[g][r] v_r over this thread's rows (rg, rg + RPI, ...) and d-slice. With p = 0
  // for a row of padding, its V (never read) counts as 0.
  float acc[GT][V];
#pragma unroll
  for (int g = 0; g < GT; ++g)
#pragma unroll
    for (int i = 0; i < V; ++i) acc[g][i] = 0.f;
  for (int64_t r0 = rg; r0 < n; r0 += RPI * kAhead) {
    float vv[kAhead][V];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {  // the loads first; rows of padding only (all p = 0) not read
      const int64_t r = r0 + u * RPI;
      bool any = false;
#pragma unroll
      for (int g = 0; g < GT; ++g) any = any || (g < gn && r < n && scores[g][r] != 0.f);
      if (any) {
        Vec<T>::load(v + r * a.v_sl, vv[u]);
      } else {
#pragma unroll
        for (int i = 0; i < V; ++i) vv[u][i] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t r = r0 + u * RPI;
#pragma unroll
      for (int g = 0; g < GT; ++g) {
        const float p = g < gn && r < n ? scores[g][r] : 0.f;
#pragma unroll
        for (int i = 0; i < V; ++i) acc[g][i] += p * vv[u][i];
      }
    }
  }
  // The row groups of one d-slice: lanes LANES apart in a warp (shuffles), then the warps (shared).
#pragma unroll
  for (int off = LANES; off < 32; off <<= 1)
#pragma unroll
    for (int g = 0; g < GT; ++g)
#pragma unroll
      for (int i = 0; i < V; ++i) acc[g][i] += __shfl_xor_sync(kFull, acc[g][i], off);
  if (lane < LANES)
#pragma unroll
    for (int g = 0; g < GT; ++g)
#pragma unroll
      for (int i = 0; i < V; ++i) red[warp][g][d0 + i] = acc[g][i];
  __syncthreads();
  for (int e = tid; e < gn * D; e += kThreads) {
    const int g = e / D, d = e % D;
    float s = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[w][g][d];
    const int64_t bh = b * a.H + h0 + g;
    if (splits == 1) {
      const float l = stat_l[g];
      st(out + bh * D + d, l > 0.f ? s / l : 0.f);
    } else {
      float* part = ws + (bh * splits + split) * (D + 2);
      part[d] = s;
      if (d == 0) part[D] = stat_m[g], part[D + 1] = stat_l[g];
    }
  }
}

// One CTA per (row, head) = blockIdx.x, a thread per d: the splits up to the slot's, each weighted
// by exp(m_s - max m), o = sum w_s o_s / sum w_s l_s in out's dtype. ws [B, H, splits, D + 2].
template <typename T, int D>
__global__ void __launch_bounds__(D)
    decode_merge_kernel(const DecodeAttentionArgs a, int64_t chunk, int64_t splits, const float* ws, T* out) {
  const int64_t bh = blockIdx.x, d = threadIdx.x;
  const int64_t live = slot_of(a) / chunk + 1, n = live < splits ? live : splits;
  const float* part = ws + bh * splits * (D + 2);
  float M = neg_inf();
  for (int64_t s = 0; s < n; ++s) M = fmaxf(M, part[s * (D + 2) + D]);
  float num = 0.f, den = 0.f;
  for (int64_t s = 0; s < n; ++s) {
    const float m = part[s * (D + 2) + D];
    if (m == neg_inf()) continue;  // a chunk of padding only
    const float w = __expf(m - M);
    num += w * part[s * (D + 2) + d];
    den += w * part[s * (D + 2) + D + 1];
  }
  st(out + bh * D + d, den > 0.f ? num / den : 0.f);
}

// Query heads per CTA for G = H / Hkv: the smallest of 1, 2, 4, 8 that holds G (8 past that).
int heads_per_cta(int64_t G) { return G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8; }

template <typename T, int D>
cudaError_t launch(const DecodeAttentionArgs& a, const DecodeAttentionPlan& p, float* ws, T* out, cudaStream_t st) {
  const int64_t G = a.H / a.Hkv;
  const int gt = heads_per_cta(G);
  const dim3 grid(static_cast<unsigned>(p.splits), static_cast<unsigned>(a.Hkv * ((G + gt - 1) / gt)),
                  static_cast<unsigned>(a.B));
  switch (gt) {
    case 1:
      decode_split_kernel<T, D, 1><<<grid, kThreads, 0, st>>>(a, p.chunk, p.splits, ws, out);
      break;
    case 2:
      decode_split_kernel<T, D, 2><<<grid, kThreads, 0, st>>>(a, p.chunk, p.splits, ws, out);
      break;
    case 4:
      decode_split_kernel<T, D, 4><<<grid, kThreads, 0, st>>>(a, p.chunk, p.splits, ws, out);
      break;
    default:
      decode_split_kernel<T, D, 8><<<grid, kThreads, 0, st>>>(a, p.chunk, p.splits, ws, out);
  }
  if (p.splits > 1)
    decode_merge_kernel<T, D><<<static_cast<unsigned>(a.B * a.H), D, 0, st>>>(a, p.chunk, p.splits, ws, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_d(const DecodeAttentionArgs& a, const DecodeAttentionPlan& p, float* ws, void* out,
                     cudaStream_t st) {
  if (a.D == 64) return launch<T, 64>(a, p, ws, static_cast<T*>(out), st);
  return launch<T, 128>(a, p, ws, static_cast<T*>(out), st);
}

}  // namespace

bool decode_attention_supports(int64_t D) { return D == 64 || D == 128; }

DecodeAttentionPlan decode_attention_plan(const DecodeAttentionArgs& a) {
  DecodeAttentionPlan p;
  p.chunk = a.chunk;
  if (p.chunk <= 0) {
    const int64_t G = a.Hkv > 0 ? a.H / a.Hkv : 1, gt = heads_per_cta(G);
    const int64_t ctas = a.B * a.Hkv * ((G + gt - 1) / gt), waves = 2 * static_cast<int64_t>(a.sms);
    const int64_t want = ctas >= waves ? 1 : (waves + ctas - 1) / ctas;  // splits over the whole cache
    p.chunk = ((a.L + want - 1) / want + 31) / 32 * 32;
    p.chunk = p.chunk < kMinChunk ? kMinChunk : p.chunk;
  }
  p.chunk = p.chunk > kMaxChunk ? kMaxChunk : p.chunk;
  p.splits = a.L > 0 ? (a.L + p.chunk - 1) / p.chunk : 0;
  return p;
}

int64_t decode_attention_workspace_floats(const DecodeAttentionArgs& a, const DecodeAttentionPlan& p) {
  return p.splits > 1 ? a.B * a.H * p.splits * (a.D + 2) : 0;
}

cudaError_t decode_attention(const DecodeAttentionArgs& a, const DecodeAttentionPlan& p, float* ws, void* out,
                             cudaStream_t stream) {
  if (a.B == 0 || a.H == 0) return cudaSuccess;
  if (!decode_attention_supports(a.D) || a.Hkv <= 0 || a.H % a.Hkv != 0 || a.L <= 0 || p.chunk <= 0 ||
      p.chunk > kMaxChunk || p.splits != (a.L + p.chunk - 1) / p.chunk || (p.splits > 1 && !ws) || !a.slot)
    return cudaErrorInvalidValue;
  if (a.bf16) return launch_d<__nv_bfloat16>(a, p, ws, out, stream);
  return launch_d<float>(a, p, ws, out, stream);
}

}  // namespace cuda
}  // namespace attention
}  // namespace linearnexus
