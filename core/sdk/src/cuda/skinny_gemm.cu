// The skinny bf16 matmul of decoding (launcher and contract in kernels.h):
//   y[M, N] = x[M, K] W[N, K]^T (+ bias[N]) (+ residual[M, N]),   M = 1..16, fp32 accumulation.
//
// Why: at one token a step every Linear is a matrix-vector product (M = batch rows <= 16) that
// reads its whole weight once for a few hundred FLOPs a byte less than a GEMM needs; its time is
// the weight's bytes over DRAM bandwidth plus fixed costs. cuBLAS picks GEMM tiles for these
// shapes (M padded to 64+, few CTAs on short-and-wide matrices). Here W streams once, in 16-byte
// loads that skip L1, through every SM; bias and residual join the epilogue (no extra pass).
//
// How: the math runs on tensor cores with the operands swapped, y^T = W x^T: mma.m16n8k16's A is
// 16 rows of W, its B is 8 rows of x (M <= 8: one mma per 16 k; M <= 16: two). Since a dot product
// may sum k in any order, lane (g, t) = (lane / 4, lane % 4) loads 8 consecutive k of W's rows g
// and g + 8 and of x's row g as one uint4 each, and the same permutation of k is given to A and B
// (the first mma takes k 8t + 0..3 of the 32-wide k block, the second 8t + 4..7): no shuffles, no
// shared-memory staging of W or x.
//   A CTA owns T tiles of 16 output features (n) and its warps split K; a cluster of S CTAs (Hopper)
// splits K further where N is short (3072 x 768: 48 tiles for 132 SMs). Warps' partial sums meet
// in shared memory, CTAs' through distributed shared memory; the sum is in a fixed order
// (deterministic) and needs no workspace, atomics or second kernel.
//   With programmatic dependent launch the kernel lets its successor start early and issues its
// first weight loads before waiting on its predecessor (x, residual): weights never depend on it.
//   The norm prologue (NORM, LINEARNEXUS_DECODE_FUSION): the matmul's input is RMSNorm / LayerNorm
// of x's M <= 16 rows, so a decode step's norm -> Linear pairs (ln1 -> qkv, ln2 -> fc, the final norm
// -> the LM head) are one kernel each instead of two. Each CTA normalises the rows itself (a warp a
// row: 16 x 768 values read from L2, cheaper than a launch) into shared memory as bf16, only the k
// range its warps cover, while its first weight loads are in flight; the main loop then reads x
// from there. The normalised values are rms_norm.cu's to the bit (same per-lane order, butterfly
// and rsqrtf) and rounded to bf16 as the unfused path's next matmul input is.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels.h"
#include "skinny_gemm_hw.cuh"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kTileN = 16;     // output features per tile: the mma's 16 A rows
constexpr int kBlockK = 32;    // k a warp covers per load: 4 lanes x 8 bf16, two k16 mmas
constexpr int kMaxWarps = 8;   // warps of a CTA (the K split inside it)
constexpr int kMaxSplits = 8;  // CTAs of a cluster (portable cluster size)

struct Params {
  const __nv_bfloat16* x;  // [M, ldx]; NORM: unused
  const void* nx;          // NORM: [M, ldx] fp32 or bf16, the rows before the norm
  const void* nw;          // NORM: [K] the norm's weight (fp32 or bf16)
  const void* nb;          // NORM: [K] LayerNorm's bias (nw's dtype) or null
  const __nv_bfloat16* w;  // [N, K]
  const void* bias;        // [N] or null
  const void* residual;    // [M, N] or null
  void* y;                 // [M, N]
  int64_t M, N, K, ldx;
  int64_t kpw;  // k blocks per warp
  int splits;   // S: CTAs of a cluster along K
  bool bias_bf16, residual_bf16, y_bf16;
  bool gelu;  // gelu_tanh after the bias, before the residual
  bool nx_bf16, nw_bf16;
  bool layer_norm;  // NORM: (x - mean) rstd w + b; else RMSNorm x rstd w
  float eps;
  // ARGMAX (the greedy head): no y; each CTA's per-row max of its bf16-rounded outputs, the max's first
  // index and sum exp(v - max) go to part_* [CTAs][16], and the last CTA to finish reduces them.
  float *part_max, *part_sum;
  int* part_idx;
  unsigned* ticket;  // CTAs finished; the last one resets it to 0
  int64_t* token;    // [M]: argmax_n y[m, n]
  float* logp;       // [M]: log softmax(y[m])[token]
};

__device__ __forceinline__ float load_as_float(const void* p, int64_t i, bool bf16) {
  return bf16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]) : static_cast<const float*>(p)[i];
}

// y[m, n] = act(acc + bias[n]) + residual[m, n] in y's dtype.
__device__ __forceinline__ void epilogue(const Params& p, int64_t m, int64_t n, float v) {
  if (p.bias) v += load_as_float(p.bias, n, p.bias_bf16);
  if (p.gelu) v = 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
  if (p.residual) v += load_as_float(p.residual, m * p.N + n, p.residual_bf16);
  if (p.y_bf16)
    static_cast<__nv_bfloat16*>(p.y)[m * p.N + n] = __float2bfloat16(v);
  else
    static_cast<float*>(p.y)[m * p.N + n] = v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// The norm prologue: rows m of x normalised over all K, written as bf16 for k in [k0, k_end) to
// xs[m * ldn + k - k0]; one warp a row. RMSNorm's arithmetic is rms_norm.cu's (lanes sum k = lane,
// lane + 32, ... in order, then the butterfly), so its output is the unfused kernel's to the bit.
__device__ void normalise_rows(const Params& p, __nv_bfloat16* xs, int64_t ldn, int64_t k0, int64_t k_end, int lane,
                               int warp, int warps) {
  for (int64_t m = warp; m < p.M; m += warps) {
    const int64_t row = m * p.ldx;
    float mean = 0.f;
    if (p.layer_norm) {
      float s = 0.f;
      for (int64_t k = lane; k < p.K; k += 32) s += load_as_float(p.nx, row + k, p.nx_bf16);
      mean = warp_sum(s) / static_cast<float>(p.K);
    }
    float ss = 0.f;
    for (int64_t k = lane; k < p.K; k += 32) {
      const float v = load_as_float(p.nx, row + k, p.nx_bf16) - mean;
      ss += v * v;
    }
    // rms_norm.cu divides by C; the same division here (not a multiply by 1/C) keeps its bits.
    const float rs = rsqrtf(warp_sum(ss) / static_cast<float>(p.K) + p.eps);
    for (int64_t k = k0 + lane; k < k_end; k += 32) {
      float v = (load_as_float(p.nx, row + k, p.nx_bf16) - mean) * rs * load_as_float(p.nw, k, p.nw_bf16);
      if (p.nb) v += load_as_float(p.nb, k, p.nw_bf16);
      xs[m * ldn + (k - k0)] = __float2bfloat16(v);
    }
  }
}

// The greedy head's epilogue: vals [M][ld] holds the CTA's outputs (bf16-rounded, -inf past N) for
// features n0 .. n0 + width - 1. Per row: the CTA's partial (max, first index of it, sum exp(v - max));
// the last CTA to finish merges all CTAs' (deterministic: lanes stride over CTAs in order, then a
// butterfly; ties go to the lower index, as argmax's first occurrence) into the token and its log-prob
// -log sum_n exp(y_n - max). flag: an int of shared memory.
__device__ void greedy_partials_and_reduce(const Params& p, const float* vals, int ld, int width, int64_t n0, int* flag,
                                           int lane, int warp, int warps) {
  const int cta = blockIdx.x, ctas = gridDim.x;
  if (threadIdx.x < p.M) {
    const int m = threadIdx.x;
    float mx = -INFINITY, se = 0.f;
    int arg = -1;
    for (int j = 0; j < width; ++j)
      if (vals[m * ld + j] > mx) mx = vals[m * ld + j], arg = static_cast<int>(n0 + j);
    for (int j = 0; j < width; ++j) se += expf(vals[m * ld + j] - mx);  // exp(-inf) = 0 past N
    p.part_max[cta * 16 + m] = mx, p.part_sum[cta * 16 + m] = se, p.part_idx[cta * 16 + m] = arg;
    publish_to_grid();  // visible to the last CTA before this CTA's ticket
  }
  __syncthreads();
  if (threadIdx.x == 0) *flag = take_ticket(p.ticket) == static_cast<unsigned>(ctas - 1);
  __syncthreads();
  if (!*flag) return;
  for (int m = warp; m < p.M; m += warps) {
    float mx = -INFINITY;
    int arg = 0x7fffffff;
    for (int c = lane; c < ctas; c += 32) {
      const float v = load_from_grid(p.part_max + c * 16 + m);
      const int i = load_from_grid(p.part_idx + c * 16 + m);
      if (v > mx || (v == mx && i < arg)) mx = v, arg = i;
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float v = __shfl_xor_sync(0xffffffffu, mx, off);
      const int i = __shfl_xor_sync(0xffffffffu, arg, off);
      if (v > mx || (v == mx && i < arg)) mx = v, arg = i;
    }
    float se = 0.f;
    for (int c = lane; c < ctas; c += 32)
      se += load_from_grid(p.part_sum + c * 16 + m) * expf(load_from_grid(p.part_max + c * 16 + m) - mx);
    se = warp_sum(se);
    if (lane == 0) p.token[m] = arg, p.logp[m] = -logf(se);
  }
  if (threadIdx.x == 0) *p.ticket = 0;  // the next launch (a replayed graph) counts from 0
}

// The norm prologue's row stride (bf16 elements) for a CTA's k span (a multiple of 32): rows g and
// g + 1 then start 64 bytes apart mod 128, so an 8-lane phase of uint4 loads hits 32 distinct banks.
__host__ __device__ inline int64_t norm_row_stride(int64_t span) { return span % 64 == 0 ? span + 32 : span; }

// Shared memory of a launch: the warps' and the CTA's partial tiles [warps + 1][MP][16 T + 4] fp32,
// then (NORM) the normalised rows [MP][norm_row_stride(warps kpw 32)] bf16.
__host__ __device__ inline size_t skinny_smem_bytes(int T, int MP, int warps, int64_t kpw, bool norm) {
  const size_t partials = static_cast<size_t>(warps + 1) * MP * (kTileN * T + 4) * sizeof(float);
  return partials + (norm ? static_cast<size_t>(MP * norm_row_stride(warps * kpw * kBlockK)) * 2 : 0);
}

// T: tiles of 16 features per warp (a CTA's tiles; every warp of the CTA covers all T over its k
// range); MP: x rows padded to 8 or 16 (one or two mma columns blocks); NORM: the norm prologue;
// ARGMAX: the greedy head's epilogue (no cluster split).
template <int T, int MP, bool NORM, bool ARGMAX = false>
__global__ void __launch_bounds__(kMaxWarps * 32) skinny_gemm_kernel(const Params p) {
  constexpr int G = 4 / T;            // k blocks loaded before the mmas: 8 uint4 of W a lane in flight
  constexpr int LD = kTileN * T + 4;  // row stride of a partial [MP][16 T] tile: fragment stores hit 32 banks
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int S = p.splits;
  const int rank = blockIdx.x % S;  // the cluster's CTAs are consecutive in x
  const int64_t n0 = static_cast<int64_t>(blockIdx.x / S) * (kTileN * T);
  const int64_t nkb = (p.K + kBlockK - 1) / kBlockK;
  const int64_t kb_begin = static_cast<int64_t>(rank * warps + warp) * p.kpw;
  const int64_t kb_end = kb_begin + p.kpw < nkb ? kb_begin + p.kpw : nkb;

  let_dependents_launch();

  float acc[T][MP / 8][4];
#pragma unroll
  for (int j = 0; j < T; ++j)
#pragma unroll
    for (int h = 0; h < MP / 8; ++h) acc[j][h][0] = acc[j][h][1] = acc[j][h][2] = acc[j][h][3] = 0.f;

  const __nv_bfloat16* wrow[T][2];  // this lane's W rows n0 + 16 j + g (+ 8) at k = 8 t; null past N
#pragma unroll
  for (int j = 0; j < T; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + kTileN * j + g + 8 * h;
      wrow[j][h] = n < p.N ? p.w + n * p.K + 8 * t : nullptr;
    }
  uint4 a[T][G][2];  // W rows n0 + 16 j + g (+ 8), k = 32 (kb0 + i) + 8 t .. + 7
  auto load_w = [&](int64_t kb0) {
#pragma unroll
    for (int i = 0; i < G; ++i) {
      const bool k_ok = kb0 + i < kb_end && (kb0 + i) * kBlockK + 8 * t < p.K;
#pragma unroll
      for (int j = 0; j < T; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          a[j][i][h] = k_ok && wrow[j][h] ? load_stream(wrow[j][h] + (kb0 + i) * kBlockK) : make_uint4(0, 0, 0, 0);
    }
  };
  load_w(kb_begin);        // the weights need nothing from the previous kernel: in flight before the wait
  wait_for_predecessor();  // x and residual may be its outputs
  extern __shared__ float smem[];
  // NORM: this CTA's k span [k_cta, k_cta + span) of the normalised rows, [MP][ldn] bf16 after the partials.
  const int64_t span = static_cast<int64_t>(warps) * p.kpw * kBlockK, k_cta = rank * span, ldn = norm_row_stride(span);
  __nv_bfloat16* xs = reinterpret_cast<__nv_bfloat16*>(smem + (warps + 1) * MP * (kTileN * T + 4));
  if constexpr (NORM) {
    normalise_rows(p, xs, ldn, k_cta, k_cta + span < p.K ? k_cta + span : p.K, lane, warp, warps);
    __syncthreads();
  }
  for (int64_t kb0 = kb_begin; kb0 < kb_end; kb0 += G) {
    if (kb0 != kb_begin) load_w(kb0);
    uint4 b[G][MP / 8];  // x rows g (+ 8), the same k
#pragma unroll
    for (int i = 0; i < G; ++i)
#pragma unroll
      for (int h = 0; h < MP / 8; ++h) {
        const int64_t m = g + 8 * h, k = (kb0 + i) * kBlockK + 8 * t;
        const __nv_bfloat16* src = NORM ? xs + m * ldn + (k - k_cta) : p.x + m * p.ldx + k;
        b[i][h] = m < p.M && kb0 + i < kb_end && k < p.K ? load_x(src) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
    for (int j = 0; j < T; ++j)
#pragma unroll
      for (int i = 0; i < G; ++i)
#pragma unroll
        for (int h = 0; h < MP / 8; ++h) {
          mma(acc[j][h], a[j][i][0].x, a[j][i][1].x, a[j][i][0].y, a[j][i][1].y, b[i][h].x, b[i][h].y);
          mma(acc[j][h], a[j][i][0].z, a[j][i][1].z, a[j][i][0].w, a[j][i][1].w, b[i][h].z, b[i][h].w);
        }
  }

  // Warps' partials [warps][MP][LD] (element [m][nl] = y^T tile row nl, column m), then the CTA's sum
  // [MP][LD]. Lane (g, t) holds rows nl = 16 j + g (c0, c1) and + 8 (c2, c3), columns m = 8 h + 2 t (+1).
  float* mine = smem + warp * MP * LD;
#pragma unroll
  for (int j = 0; j < T; ++j)
#pragma unroll
    for (int h = 0; h < MP / 8; ++h) {
      const int m = 8 * h + 2 * t, nl = kTileN * j + g;
      mine[m * LD + nl] = acc[j][h][0];
      mine[(m + 1) * LD + nl] = acc[j][h][1];
      mine[m * LD + nl + 8] = acc[j][h][2];
      mine[(m + 1) * LD + nl + 8] = acc[j][h][3];
    }
  __syncthreads();
  float* cta_sum = smem + warps * MP * LD;
  constexpr int kOut = MP * kTileN * T;  // [m][nl], nl fastest: coalesced stores of y's rows
  for (int i = threadIdx.x; i < kOut; i += blockDim.x) {
    const int m = i / (kTileN * T), nl = i % (kTileN * T);
    float s = 0.f;
    for (int w = 0; w < warps; ++w) s += smem[w * MP * LD + m * LD + nl];
    if (ARGMAX) {  // y rounded to bf16 as the logits the plain path reads
      const bool in = m < p.M && n0 + nl < p.N;
      cta_sum[m * LD + nl] =
          in ? __bfloat162float(__float2bfloat16(p.bias ? s + load_as_float(p.bias, n0 + nl, p.bias_bf16) : s))
             : -INFINITY;
    } else if (S > 1)
      cta_sum[m * LD + nl] = s;
    else if (m < p.M && n0 + nl < p.N)
      epilogue(p, m, n0 + nl, s);
  }
  if (ARGMAX) {
    __syncthreads();
    greedy_partials_and_reduce(p, cta_sum, LD, kTileN * T, n0, reinterpret_cast<int*>(smem), lane, warp, warps);
    return;
  }
  if (S == 1) return;
  // The cluster's CTAs each finish a share of the tile from all S partial sums (ranks in order).
  cluster_sync();
  for (int i = rank * blockDim.x + threadIdx.x; i < kOut; i += S * blockDim.x) {
    const int m = i / (kTileN * T), nl = i % (kTileN * T);
    if (m >= p.M || n0 + nl >= p.N) continue;
    float s = 0.f;
    for (int r = 0; r < S; ++r) s += cluster_peer(cta_sum, r)[m * LD + nl];
    epilogue(p, m, n0 + nl, s);
  }
  cluster_sync();  // no CTA leaves while another reads its shared memory
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr size_t kMaxSmem = 48 * 1024;  // without opting in to more (a function attribute)

// The launcher's configuration for a device of `sms` SMs of compute capability `major` (the
// emulator asks for an H100's).
SkinnyGemmConfig config_for(int sms, int major, int64_t N, int64_t K) {
  const int64_t tiles = ceil_div(N, kTileN), nkb = ceil_div(K, kBlockK);
  SkinnyGemmConfig c;
  // Few tiles (gpt-small's blocks: 48-192): one a CTA and about 3 k blocks (3 KiB of W) a warp, the
  // most CTAs and loads in flight. Many (the LM head: 3142): two a CTA and 6 k blocks a warp of 4.
  // Measured on an H100 (docs/benchmarks.md, the sweep of bench_skinny_gemm): the head at M = 1 took
  // 28.8 us so (80% of 3.35 TB/s) against 34.3 us with 4 tiles and 3 k blocks a warp of 8; at M = 16
  // both ~35.5 us. The small matrices had no better configuration than the first rule's.
  const bool many = tiles >= 6 * sms;
  c.tiles = many ? 2 : 1;
  const int64_t parts = std::max<int64_t>(1, ceil_div(nkb, many ? 6 : 3));
  c.warps = static_cast<int>(std::min<int64_t>(parts, kMaxWarps));
  const int64_t ctas = ceil_div(tiles, c.tiles);
  c.splits = 1;
  if (major >= 9 && ctas < 2 * sms)
    c.splits = static_cast<int>(std::min<int64_t>(kMaxSplits, ceil_div(parts, c.warps)));
  c.kpw = ceil_div(nkb, static_cast<int64_t>(c.warps) * c.splits);
  return c;
}

// Whether configuration c can run a K-deep matmul of M rows (norm: with the prologue) on `major`.
bool config_valid(const SkinnyGemmConfig& c, int64_t M, int64_t K, bool norm, int major) {
  if ((c.tiles != 1 && c.tiles != 2 && c.tiles != 4) || c.warps < 1 || c.warps > kMaxWarps || c.splits < 1 ||
      c.splits > kMaxSplits || c.kpw < 1 || (c.splits > 1 && major < 9) ||
      c.kpw * c.warps * c.splits < ceil_div(K, kBlockK))  // the warps must cover K
    return false;
  return skinny_smem_bytes(c.tiles, M > 8 ? 16 : 8, c.warps, c.kpw, norm) <= kMaxSmem;
}

int64_t grid_ctas(int64_t N, const SkinnyGemmConfig& c) { return ceil_div(ceil_div(N, kTileN), c.tiles) * c.splits; }

Params make_params(const SkinnyGemmArgs& a, const SkinnyGemmConfig& c) {
  Params p;
  // The greedy head's workspace: part_max, part_sum [CTAs][16] fp32, part_idx [CTAs][16], the ticket.
  const int64_t parts = grid_ctas(a.N, c) * 16;
  p.part_max = static_cast<float*>(a.workspace);
  p.part_sum = p.part_max ? p.part_max + parts : nullptr;
  p.part_idx = p.part_max ? reinterpret_cast<int*>(p.part_sum + parts) : nullptr;
  p.ticket = p.part_max ? reinterpret_cast<unsigned*>(p.part_idx + parts) : nullptr;
  p.token = a.token;
  p.logp = a.logp;
  p.x = static_cast<const __nv_bfloat16*>(a.x);
  p.nx = a.x;
  p.nw = a.norm_w;
  p.nb = a.norm_b;
  p.w = static_cast<const __nv_bfloat16*>(a.w);
  p.bias = a.bias;
  p.residual = a.residual;
  p.y = a.y;
  p.M = a.M, p.N = a.N, p.K = a.K, p.ldx = a.ldx;
  p.kpw = c.kpw;
  p.splits = c.splits;
  p.bias_bf16 = a.bias_dtype == DType::BF16;
  p.residual_bf16 = a.residual_dtype == DType::BF16;
  p.y_bf16 = a.y_dtype == DType::BF16;
  p.gelu = a.gelu;
  p.nx_bf16 = a.x_dtype == DType::BF16;
  p.nw_bf16 = a.norm_dtype == DType::BF16;
  p.layer_norm = a.layer_norm;
  p.eps = a.norm_eps;
  return p;
}

}  // namespace

// part_max, part_sum and part_idx of at most one CTA a 16-feature tile, and the ticket.
size_t skinny_greedy_workspace_bytes(int64_t N) { return static_cast<size_t>(ceil_div(N, kTileN)) * 16 * 12 + 16; }

namespace {

// ---- launchers

struct DeviceInfo {
  int sms = 0, major = 0;
};

DeviceInfo device_info() {
  // Queried once per device (the launcher runs inside captured decode steps too).
  static DeviceInfo cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return {132, 9};
  DeviceInfo& d = cache[dev];
  if (d.sms == 0) {
    cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev);
  }
  return d;
}

template <int T, int MP, bool NORM, bool ARGMAX>
cudaError_t launch(const Params& p, int ctas, int warps, bool pdl, cudaStream_t stream) {
  const size_t smem = skinny_smem_bytes(T, MP, warps, p.kpw, NORM);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(ctas));
  cfg.blockDim = dim3(static_cast<unsigned>(warps * 32));
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attrs[2];
  int n = 0;
  if (p.splits > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = static_cast<unsigned>(p.splits);
    attrs[n].val.clusterDim.y = attrs[n].val.clusterDim.z = 1;
    ++n;
  }
  if (pdl) {
    attrs[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attrs[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attrs;
  cfg.numAttrs = static_cast<unsigned>(n);
  if (n == 0) {
    skinny_gemm_kernel<T, MP, NORM, ARGMAX><<<cfg.gridDim, cfg.blockDim, smem, stream>>>(p);
    return cudaGetLastError();
  }
  return cudaLaunchKernelEx(&cfg, skinny_gemm_kernel<T, MP, NORM, ARGMAX>, p);
}

template <bool NORM, bool ARGMAX = false>
cudaError_t launch_tiles(const Params& p, const SkinnyGemmConfig& c, int ctas, bool pdl, cudaStream_t stream) {
  const bool wide = p.M > 8;
  switch (c.tiles) {
    case 1:
      return wide ? launch<1, 16, NORM, ARGMAX>(p, ctas, c.warps, pdl, stream)
                  : launch<1, 8, NORM, ARGMAX>(p, ctas, c.warps, pdl, stream);
    case 2:
      return wide ? launch<2, 16, NORM, ARGMAX>(p, ctas, c.warps, pdl, stream)
                  : launch<2, 8, NORM, ARGMAX>(p, ctas, c.warps, pdl, stream);
    default:
      return wide ? launch<4, 16, NORM, ARGMAX>(p, ctas, c.warps, pdl, stream)
                  : launch<4, 8, NORM, ARGMAX>(p, ctas, c.warps, pdl, stream);
  }
}

}  // namespace

SkinnyGemmConfig skinny_gemm_config(int64_t M, int64_t N, int64_t K) {
  (void)M;
  const DeviceInfo d = device_info();
  return config_for(d.sms, d.major, N, K);
}

bool skinny_gemm_supported(int64_t M, int64_t K, int64_t ldx, const void* x, const void* w) {
  auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  return M >= 1 && M <= 16 && K >= 8 && K % 8 == 0 && ldx % 8 == 0 && ldx >= K && aligned(x) && aligned(w);
}

bool skinny_norm_gemm_supported(int64_t M, int64_t N, int64_t K, int64_t ldx, const void* w) {
  if (!(M >= 1 && M <= 16 && K >= 8 && K % 8 == 0 && ldx >= K && reinterpret_cast<uintptr_t>(w) % 16 == 0))
    return false;
  return config_valid(skinny_gemm_config(M, N, K), M, K, /*norm=*/true, device_info().major);
}

cudaError_t skinny_gemm(const SkinnyGemmArgs& a, cudaStream_t stream) {
  if (a.N == 0) return cudaSuccess;
  const bool norm = a.norm_w != nullptr, greedy = a.token != nullptr;
  if (a.N < 0 || (norm ? !skinny_norm_gemm_supported(a.M, a.N, a.K, a.ldx, a.w)
                       : !skinny_gemm_supported(a.M, a.K, a.ldx, a.x, a.w) || a.x_dtype != DType::BF16))
    return cudaErrorInvalidValue;
  if (greedy && (!norm || !a.logp || !a.workspace || a.residual || a.gelu)) return cudaErrorInvalidValue;
  SkinnyGemmConfig c = skinny_gemm_config(a.M, a.N, a.K);
  if (a.config.tiles > 0) c = a.config;  // an explicit configuration (benchmarks' sweeps)
  if (greedy && c.splits > 1) c.splits = 1, c.kpw = ceil_div(ceil_div(a.K, kBlockK), c.warps);  // no clusters
  if (!config_valid(c, a.M, a.K, norm, device_info().major)) return cudaErrorInvalidValue;
  const Params p = make_params(a, c);
  const int ctas = static_cast<int>(grid_ctas(a.N, c));
  if (greedy) return launch_tiles<true, true>(p, c, ctas, a.pdl, stream);
  return norm ? launch_tiles<true>(p, c, ctas, a.pdl, stream) : launch_tiles<false>(p, c, ctas, a.pdl, stream);
}

}  // namespace cuda
}  // namespace linearnexus
