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
#include <cooperative_groups.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels.h"

namespace linearnexus {
namespace cuda {
namespace {

constexpr int kTileN = 16;     // output features per tile: the mma's 16 A rows
constexpr int kBlockK = 32;    // k a warp covers per load: 4 lanes x 8 bf16, two k16 mmas
constexpr int kMaxWarps = 8;   // warps of a CTA (the K split inside it)
constexpr int kMaxSplits = 8;  // CTAs of a cluster (portable cluster size)

struct Params {
  const __nv_bfloat16* x;  // [M, ldx]
  const __nv_bfloat16* w;  // [N, K]
  const void* bias;        // [N] or null
  const void* residual;    // [M, N] or null
  void* y;                 // [M, N]
  int64_t M, N, K, ldx;
  int64_t kpw;  // k blocks per warp
  int splits;   // S: CTAs of a cluster along K
  bool bias_bf16, residual_bf16, y_bf16;
  bool gelu;  // gelu_tanh after the bias, before the residual
};

// W is read exactly once: no L1 allocation; the L2 fetches whole 128-byte lines.
__device__ __forceinline__ uint4 load_stream(const __nv_bfloat16* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

// x was written by the previous kernel (maybe still finishing under PDL): a plain coherent load.
__device__ __forceinline__ uint4 load_x(const __nv_bfloat16* p) { return *reinterpret_cast<const uint4*>(p); }

// c += A B for A 16 x 16 bf16 (a0..a3), B 16 x 8 bf16 (b0, b1), c 16 x 8 fp32 (PTX's fragment layout).
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

// T: tiles of 16 features per warp (a CTA's tiles; every warp of the CTA covers all T over its k
// range); MP: x rows padded to 8 or 16 (one or two mma columns blocks).
template <int T, int MP>
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
  for (int64_t kb0 = kb_begin; kb0 < kb_end; kb0 += G) {
    if (kb0 != kb_begin) load_w(kb0);
    uint4 b[G][MP / 8];  // x rows g (+ 8), the same k
#pragma unroll
    for (int i = 0; i < G; ++i)
#pragma unroll
      for (int h = 0; h < MP / 8; ++h) {
        const int64_t m = g + 8 * h, k = (kb0 + i) * kBlockK + 8 * t;
        b[i][h] = m < p.M && kb0 + i < kb_end && k < p.K ? load_x(p.x + m * p.ldx + k) : make_uint4(0, 0, 0, 0);
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
  extern __shared__ float smem[];
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
    if (S > 1)
      cta_sum[m * LD + nl] = s;
    else if (m < p.M && n0 + nl < p.N)
      epilogue(p, m, n0 + nl, s);
  }
  if (S == 1) return;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // The cluster's CTAs each finish a share of the tile from all S partial sums (ranks in order).
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  for (int i = rank * blockDim.x + threadIdx.x; i < kOut; i += S * blockDim.x) {
    const int m = i / (kTileN * T), nl = i % (kTileN * T);
    if (m >= p.M || n0 + nl >= p.N) continue;
    float s = 0.f;
    for (int r = 0; r < S; ++r) s += cluster.map_shared_rank(cta_sum, r)[m * LD + nl];
    epilogue(p, m, n0 + nl, s);
  }
  cluster.sync();  // no CTA leaves while another reads its shared memory
#endif
}

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

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <int T, int MP>
cudaError_t launch(const Params& p, int ctas, int warps, bool pdl, cudaStream_t stream) {
  constexpr int LD = kTileN * T + 4;
  const size_t smem = static_cast<size_t>(warps + 1) * MP * LD * sizeof(float);
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
    skinny_gemm_kernel<T, MP><<<cfg.gridDim, cfg.blockDim, smem, stream>>>(p);
    return cudaGetLastError();
  }
  return cudaLaunchKernelEx(&cfg, skinny_gemm_kernel<T, MP>, p);
}

}  // namespace

SkinnyGemmConfig skinny_gemm_config(int64_t M, int64_t N, int64_t K) {
  (void)M;
  const DeviceInfo d = device_info();
  const int64_t tiles = ceil_div(N, kTileN), nkb = ceil_div(K, kBlockK);
  SkinnyGemmConfig c;
  // Few tiles (gpt-small's blocks: 48-192): one a CTA and about 3 k blocks (3 KiB of W) a warp, the
  // most CTAs and loads in flight. Many (the LM head: 3142): two a CTA and 6 k blocks a warp of 4.
  // Measured on an H100 (docs/benchmarks.md, the sweep of bench_skinny_gemm): the head at M = 1 took
  // 28.8 us so (80% of 3.35 TB/s) against 34.3 us with 4 tiles and 3 k blocks a warp of 8; at M = 16
  // both ~35.5 us. The small matrices had no better configuration than the first rule's.
  const bool many = tiles >= 6 * d.sms;
  c.tiles = many ? 2 : 1;
  const int64_t parts = std::max<int64_t>(1, ceil_div(nkb, many ? 6 : 3));
  c.warps = static_cast<int>(std::min<int64_t>(parts, kMaxWarps));
  const int64_t ctas = ceil_div(tiles, c.tiles);
  c.splits = 1;
  if (d.major >= 9 && ctas < 2 * d.sms)
    c.splits = static_cast<int>(std::min<int64_t>(kMaxSplits, ceil_div(parts, c.warps)));
  c.kpw = ceil_div(nkb, static_cast<int64_t>(c.warps) * c.splits);
  return c;
}

bool skinny_gemm_supported(int64_t M, int64_t K, int64_t ldx, const void* x, const void* w) {
  auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  return M >= 1 && M <= 16 && K >= 8 && K % 8 == 0 && ldx % 8 == 0 && ldx >= K && aligned(x) && aligned(w);
}

cudaError_t skinny_gemm(const SkinnyGemmArgs& a, cudaStream_t stream) {
  if (a.N == 0) return cudaSuccess;
  if (!skinny_gemm_supported(a.M, a.K, a.ldx, a.x, a.w) || a.N < 0) return cudaErrorInvalidValue;
  SkinnyGemmConfig c = skinny_gemm_config(a.M, a.N, a.K);
  if (a.config.tiles > 0) c = a.config;  // an explicit configuration (benchmarks' sweeps)
  if ((c.tiles != 1 && c.tiles != 2 && c.tiles != 4) || c.warps < 1 || c.warps > kMaxWarps || c.splits < 1 ||
      c.splits > kMaxSplits || c.kpw < 1 || (c.splits > 1 && device_info().major < 9) ||
      c.kpw * c.warps * c.splits < ceil_div(a.K, kBlockK))  // the warps must cover K
    return cudaErrorInvalidValue;
  Params p;
  p.x = static_cast<const __nv_bfloat16*>(a.x);
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
  const int ctas = static_cast<int>(ceil_div(ceil_div(a.N, kTileN), c.tiles)) * c.splits;
  const bool wide = a.M > 8;
  switch (c.tiles) {
    case 1:
      return wide ? launch<1, 16>(p, ctas, c.warps, a.pdl, stream) : launch<1, 8>(p, ctas, c.warps, a.pdl, stream);
    case 2:
      return wide ? launch<2, 16>(p, ctas, c.warps, a.pdl, stream) : launch<2, 8>(p, ctas, c.warps, a.pdl, stream);
    default:
      return wide ? launch<4, 16>(p, ctas, c.warps, a.pdl, stream) : launch<4, 8>(p, ctas, c.warps, a.pdl, stream);
  }
}

}  // namespace cuda
}  // namespace linearnexus
