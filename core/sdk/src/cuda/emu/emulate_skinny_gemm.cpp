// skinny_gemm.cu's kernel run on the CPU (run.sh makes skinny_gemm_emu.cpp of it) against a float64
// reference, with the launcher's own configuration (config_for for an H100: 132 SMs, sm_90; or a
// small SM count, which picks the LM head's "many tiles" configuration on a small N) or an explicit
// one, through make_params and skinny_smem_bytes as the launcher calls them:
//   y = act(xn W^T + bias) + residual,  xn = x (bf16), or with the prologue bf16(norm(x)) where the
//   reference norm is RMSNorm / LayerNorm in float64 rounded to bf16 as the kernel rounds its input.
// Shared memory starts as all-ones bytes (NaN), y as NaN, and x's columns past K as NaN, so a read of
// what was never written, an output never written or a read past K shows.
// Tolerance per element: |y - ref| <= 2^-8 |ref| (bf16 output: its unit roundoff; 1e-6 |ref| fp32) +
// 2e-5 sum_k |xn_k w_k| (fp32 accumulation over <= 3072 terms, and the output's rounding of it) + with the prologue 4 x 2^-8 max_k |xn_k w_k| (the kernel's
// fp32 norm may round a few of the 768 values to the other bf16 neighbour than float64 does).
#include "skinny_gemm_emu.cpp"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <vector>

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
thread_local unsigned char* g_smem;
pthread_barrier_t g_block_bar;
pthread_barrier_t g_warp_bar[64];  // 8 CTAs of 8 warps at once
float g_shfl_buf[64][32];
std::mutex g_atomic_mu;
namespace linearnexus {
namespace mma {
WarpXchg g_xchg[64];
size_t g_smem_bytes;
thread_local std::vector<CpAsyncCopy> g_cp_open;
thread_local std::deque<std::vector<CpAsyncCopy>> g_cp_groups;
}  // namespace mma
namespace cuda {
unsigned char* g_cluster_smem[8];
pthread_barrier_t g_cluster_bar;
}  // namespace cuda
}  // namespace linearnexus
using namespace linearnexus::cuda;
using bf16 = __nv_bfloat16;

namespace {

// The grid, one cluster (S CTAs, all their threads at once) after the other.
template <int T, int MP, bool NORM, bool ARGMAX = false>
void run_kernel(const Params& p, const SkinnyGemmConfig& c) {
  const int S = c.splits, threads = c.warps * 32;
  const int64_t ctas = ceil_div(ceil_div(p.N, kTileN), c.tiles) * S;
  const size_t bytes = skinny_smem_bytes(T, MP, c.warps, c.kpw, NORM);
  linearnexus::mma::g_smem_bytes = bytes;
  std::vector<unsigned char*> smem(S);
  for (auto& s : smem) s = static_cast<unsigned char*>(::operator new(bytes, std::align_val_t(16)));
  pthread_barrier_t cta_bar[8];
  for (int64_t cl = 0; cl < ctas / S; ++cl) {
    for (int r = 0; r < S; ++r) {
      std::memset(smem[r], 0xff, bytes);
      g_cluster_smem[r] = smem[r];
      pthread_barrier_init(&cta_bar[r], nullptr, threads);
    }
    for (int w = 0; w < S * c.warps; ++w) pthread_barrier_init(&g_warp_bar[w], nullptr, 32);
    pthread_barrier_init(&g_cluster_bar, nullptr, S * threads);
    std::vector<std::thread> th;
    for (int i = 0; i < S * threads; ++i)
      th.emplace_back([&, i] {
        const int r = i / threads;
        threadIdx = dim3(i % threads);
        blockIdx = dim3(static_cast<unsigned>(cl * S + r));
        blockDim = dim3(threads);
        gridDim = dim3(static_cast<unsigned>(ctas));
        g_smem = smem[r];
        g_warp_base = r * c.warps;
        g_cta_bar = &cta_bar[r];
        skinny_gemm_kernel<T, MP, NORM, ARGMAX>(p);
      });
    for (auto& t : th) t.join();
    for (int r = 0; r < S; ++r) pthread_barrier_destroy(&cta_bar[r]);
    for (int w = 0; w < S * c.warps; ++w) pthread_barrier_destroy(&g_warp_bar[w]);
    pthread_barrier_destroy(&g_cluster_bar);
  }
  for (auto& s : smem) ::operator delete(s, std::align_val_t(16));
}

template <bool NORM, bool ARGMAX = false>
void dispatch(const Params& p, const SkinnyGemmConfig& c) {
  const bool wide = p.M > 8;
  if (c.tiles == 1) return wide ? run_kernel<1, 16, NORM, ARGMAX>(p, c) : run_kernel<1, 8, NORM, ARGMAX>(p, c);
  if (c.tiles == 2) return wide ? run_kernel<2, 16, NORM, ARGMAX>(p, c) : run_kernel<2, 8, NORM, ARGMAX>(p, c);
  return wide ? run_kernel<4, 16, NORM, ARGMAX>(p, c) : run_kernel<4, 8, NORM, ARGMAX>(p, c);
}

enum class Norm { None, RMS, Layer };
enum class Dt { None, F32, BF16 };

struct Case {
  const char* name;
  int64_t M, K, N;
  Norm norm = Norm::None;
  Dt x = Dt::BF16, norm_w = Dt::F32;  // x's dtype (fp32 / bf16 with a norm), the norm's weights'
  bool norm_bias = true;              // LayerNorm's bias
  Dt bias = Dt::None, residual = Dt::None;
  bool gelu = false;
  int64_t ldx_pad = 0;           // x rows K + ldx_pad apart (NaN between)
  SkinnyGemmConfig config = {};  // tiles 0: config_for(sms, 9, N, K)
  int sms = 132;
  int tie = -1;  // greedy head cases: copy the winning row of W to row tie (a lower index): an exact tie
};

double stored(Dt d, double v) {
  return d == Dt::BF16 ? __bfloat162float(__float2bfloat16(static_cast<float>(v))) : static_cast<float>(v);
}

// A buffer of n values in dtype d (what the kernel reads), and their values in double.
struct Buf {
  std::vector<unsigned char> bytes;
  std::vector<double> v;
  Buf(Dt d, const std::vector<double>& vals) : v(vals.size()) {
    bytes.resize(vals.size() * (d == Dt::BF16 ? 2 : 4) + 16);
    for (size_t i = 0; i < vals.size(); ++i) {
      v[i] = std::isnan(vals[i]) ? vals[i] : stored(d, vals[i]);
      if (d == Dt::BF16)
        reinterpret_cast<bf16*>(data())[i] = __float2bfloat16(static_cast<float>(vals[i]));
      else
        reinterpret_cast<float*>(data())[i] = static_cast<float>(vals[i]);
    }
  }
  void* data() {  // 16-byte aligned
    const uintptr_t a = reinterpret_cast<uintptr_t>(bytes.data());
    return bytes.data() + (16 - a % 16) % 16;
  }
};

double gelu(double v) { return 0.5 * v * (1 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

// Runs one case; returns the worst |y - ref| / tolerance (<= 1: pass).
double run_case(const Case& k, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  const int64_t M = k.M, K = k.K, N = k.N, ldx = K + k.ldx_pad;
  const bool norm = k.norm != Norm::None;
  std::vector<double> xv(M * ldx, std::nan("")), wv(N * K), nwv(K), nbv(K), bv(N), rv(M * N);
  for (int64_t m = 0; m < M; ++m) {
    const double shift = norm ? 2.0 * nd(rng) : 0.0, scale = norm ? std::exp(nd(rng)) : 1.0;  // rows' own mean / scale
    for (int64_t i = 0; i < K; ++i) xv[m * ldx + i] = shift + scale * nd(rng);
  }
  for (auto& v : wv) v = nd(rng) / std::sqrt(static_cast<double>(K));
  for (auto& v : nwv) v = 1.0 + 0.2 * nd(rng);
  for (auto& v : nbv) v = 0.2 * nd(rng);
  for (auto& v : bv) v = 0.2 * nd(rng);
  for (auto& v : rv) v = nd(rng);
  Buf x(k.x, xv), w(Dt::BF16, wv), nw(k.norm_w, nwv), nb(k.norm_w, nbv), b(k.bias == Dt::None ? Dt::F32 : k.bias, bv),
      r(k.residual == Dt::None ? Dt::F32 : k.residual, rv);
  const Dt yd = k.residual == Dt::None ? Dt::BF16 : k.residual;
  Buf y(yd, std::vector<double>(M * N, std::nan("")));

  SkinnyGemmArgs a;
  a.x = x.data(), a.w = w.data(), a.y = y.data();
  a.bias = k.bias == Dt::None ? nullptr : b.data();
  a.residual = k.residual == Dt::None ? nullptr : r.data();
  a.bias_dtype = k.bias == Dt::BF16 ? DType::BF16 : DType::F32;
  a.residual_dtype = k.residual == Dt::BF16 ? DType::BF16 : DType::F32;
  a.y_dtype = yd == Dt::BF16 ? DType::BF16 : DType::F32;
  a.M = M, a.N = N, a.K = K, a.ldx = ldx;
  a.gelu = k.gelu;
  if (norm) {
    a.norm_w = nw.data();
    a.norm_b = k.norm == Norm::Layer && k.norm_bias ? nb.data() : nullptr;
    a.x_dtype = k.x == Dt::BF16 ? DType::BF16 : DType::F32;
    a.norm_dtype = k.norm_w == Dt::BF16 ? DType::BF16 : DType::F32;
    a.layer_norm = k.norm == Norm::Layer;
    a.norm_eps = 1e-5f;
  }
  const SkinnyGemmConfig c = k.config.tiles > 0 ? k.config : config_for(k.sms, 9, N, K);
  if (!config_valid(c, M, K, norm, 9)) {
    std::printf("%-44s config %d/%d/%d/%ld not valid\n", k.name, c.tiles, c.warps, c.splits, (long)c.kpw);
    return 1e30;
  }
  const Params p = make_params(a, c);
  if (norm)
    dispatch<true>(p, c);
  else
    dispatch<false>(p, c);

  // The reference: xn (bf16-rounded norm or x itself) in double.
  double worst = 0, max_err = 0, max_ref = 0;
  std::vector<double> xn(K);
  for (int64_t m = 0; m < M; ++m) {
    const double* xr = &x.v[m * ldx];
    double mean = 0, ss = 0;
    if (k.norm == Norm::Layer) {
      for (int64_t i = 0; i < K; ++i) mean += xr[i];
      mean /= K;
    }
    for (int64_t i = 0; i < K; ++i) ss += (xr[i] - mean) * (xr[i] - mean);
    const double rs = 1.0 / std::sqrt(ss / K + 1e-5);
    for (int64_t i = 0; i < K; ++i) {
      double v = xr[i];
      if (norm) {
        v = (xr[i] - mean) * rs * nw.v[i] + (a.norm_b ? nb.v[i] : 0.0);
        v = stored(Dt::BF16, v);
      }
      xn[i] = v;
    }
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, abs_sum = 0, abs_max = 0;
      for (int64_t i = 0; i < K; ++i) {
        const double t = xn[i] * w.v[n * K + i];
        s += t, abs_sum += std::abs(t), abs_max = std::max(abs_max, std::abs(t));
      }
      if (a.bias) s += b.v[n];
      if (k.gelu) s = gelu(s);
      if (a.residual) s += r.v[m * N + n];
      const double got = y.v.empty() ? 0
                                     : (yd == Dt::BF16 ? __bfloat162float(reinterpret_cast<bf16*>(y.data())[m * N + n])
                                                       : reinterpret_cast<float*>(y.data())[m * N + n]);
      const double tol = (yd == Dt::BF16 ? std::ldexp(1.0, -8) : 1e-6) * std::abs(s) + 2e-5 * abs_sum +
                         (norm ? 4 * std::ldexp(1.0, -8) * abs_max : 0.0) + 1e-30;
      const double err = std::isnan(got) ? 1e30 : std::abs(got - s);
      worst = std::max(worst, err / tol);
      max_err = std::max(max_err, err);
      max_ref = std::max(max_ref, std::abs(s));
    }
  }
  std::printf("%-44s M %2ld K %4ld N %5ld cfg %d/%d/%d/%-2ld  max|err|/max|ref| %.2e  worst err/tol %.3f  %s\n", k.name,
              (long)M, (long)K, (long)N, c.tiles, c.warps, c.splits, (long)c.kpw, max_err / max_ref, worst,
              worst <= 1 ? "ok" : "FAIL");
  return worst;
}

}  // namespace

// The greedy head (ARGMAX) against the same kernel writing y (checked above against float64): the
// token must be the first index of the maximum of that y (bf16, as the plain path's logits) and the
// log-prob log_softmax(y)[token] (double) within 1e-5. With `tie`, W's winning row is copied to a
// lower row first, so the maximum is reached twice and the lower index must win.
bool run_head_case(Case k, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  const int64_t M = k.M, K = k.K, N = k.N;
  std::vector<double> xv(M * K), wv(N * K), nwv(K), nbv(K);
  for (int64_t m = 0; m < M; ++m) {
    const double shift = 2.0 * nd(rng), scale = std::exp(nd(rng));
    for (int64_t i = 0; i < K; ++i) xv[m * K + i] = shift + scale * nd(rng);
  }
  for (auto& v : wv) v = 3 * nd(rng) / std::sqrt(static_cast<double>(K));  // peaked logits, as a trained head
  for (auto& v : nwv) v = 1.0 + 0.2 * nd(rng);
  for (auto& v : nbv) v = 0.2 * nd(rng);
  const SkinnyGemmConfig c = config_for(k.sms, 9, N, K);
  bool ok = true;
  for (int pass = 0; pass < (k.tie >= 0 ? 2 : 1); ++pass) {
    Buf x(k.x, xv), w(Dt::BF16, wv), nw(k.norm_w, nwv), nb(k.norm_w, nbv);
    Buf y(Dt::BF16, std::vector<double>(M * N, std::nan("")));
    SkinnyGemmArgs a;
    a.x = x.data(), a.w = w.data(), a.y = y.data();
    a.M = M, a.N = N, a.K = K, a.ldx = K;
    a.norm_w = nw.data();
    a.norm_b = k.norm == Norm::Layer ? nb.data() : nullptr;
    a.x_dtype = k.x == Dt::BF16 ? DType::BF16 : DType::F32;
    a.norm_dtype = k.norm_w == Dt::BF16 ? DType::BF16 : DType::F32;
    a.layer_norm = k.norm == Norm::Layer;
    dispatch<true>(make_params(a, c), c);  // y: the plain path's logits
    std::vector<unsigned char> ws(skinny_greedy_workspace_bytes(N) + 16, 0);
    std::vector<int64_t> token(M, -7);
    std::vector<float> logp(M, std::nanf(""));
    a.token = token.data(), a.logp = logp.data();
    a.workspace = ws.data() + (16 - reinterpret_cast<uintptr_t>(ws.data()) % 16) % 16;
    for (int launch = 0; launch < 2; ++launch) {  // twice: the ticket must be back at 0
      std::fill(token.begin(), token.end(), -7);
      dispatch<true, true>(make_params(a, c), c);
      for (int64_t m = 0; m < M; ++m) {
        const bf16* yr = reinterpret_cast<const bf16*>(y.data()) + m * N;
        int64_t best = 0;
        double mx = -1e300, se = 0;
        for (int64_t n = 0; n < N; ++n)
          if (__bfloat162float(yr[n]) > mx) mx = __bfloat162float(yr[n]), best = n;
        for (int64_t n = 0; n < N; ++n) se += std::exp(__bfloat162float(yr[n]) - mx);
        const double ref_logp = -std::log(se), err = std::abs(logp[m] - ref_logp);
        const bool good = token[m] == best && err <= 1e-5;
        ok = ok && good;
        if (m == 0 || !good)
          std::printf(
              "%-44s M %2ld K %4ld N %5ld cfg %d/%d/%d/%-2ld  row %2ld token %6ld (y's argmax %6ld) logp %.6f "
              "err %.1e%s  %s\n",
              k.name, (long)M, (long)K, (long)N, c.tiles, c.warps, c.splits, (long)c.kpw, (long)m, (long)token[m],
              (long)best, logp[m], err, pass ? " (tie)" : "", good ? "ok" : "FAIL");
        if (pass == 1 && m == 0 && best != k.tie) std::printf("  tie case: y's argmax is not the copied row\n");
      }
    }
    if (k.tie >= 0 && pass == 0) {  // copy row 0's winner to row `tie`, so that row 0 has an exact tie
      const int64_t win = token[0];
      if (win <= k.tie) break;
      std::copy(wv.begin() + win * K, wv.begin() + (win + 1) * K, wv.begin() + k.tie * K);
    }
  }
  return ok;
}

int main(int argc, char** argv) {
  // quick: fewer explicit configurations, no LM head; norm: the prologue's cases alone (quick); head:
  // the greedy head's cases alone (quick).
  const std::string mode = argc > 1 ? argv[1] : "";
  const bool quick = mode == "quick" || mode == "norm" || mode == "head";
  std::vector<Case> cases;
  // The matmul alone (the existing kernel): odd shapes, the epilogues, explicit configurations of
  // every kind (tiles 1 / 2 / 4, warps 1 / 3 / 8, clusters of 2, 3 and 8 CTAs), gpt-small's shapes.
  for (int64_t M : {1, 5, 8, 9, 16}) {
    cases.push_back({"plain odd K, N % 16 == 1, fp32 bias", M, 200, 33, Norm::None, Dt::BF16, Dt::F32, true, Dt::F32});
    cases.push_back(
        {"plain bf16 bias, fp32 residual", M, 776, 101, Norm::None, Dt::BF16, Dt::F32, true, Dt::BF16, Dt::F32});
  }
  cases.push_back(
      {"plain K < 32, strided x", 3, 24, 17, Norm::None, Dt::BF16, Dt::F32, true, Dt::None, Dt::None, false, 8});
  cases.push_back(
      {"plain gelu, bf16 residual", 7, 96, 40, Norm::None, Dt::BF16, Dt::F32, true, Dt::F32, Dt::BF16, true});
  const int64_t nkb = (1000 + 31) / 32;
  for (int tiles : {1, 2, 4})
    for (int warps : {1, 3, 8})
      for (int splits : {1, 2, 3, 8}) {
        if (quick && (warps == 3 || splits == 3)) continue;
        const int64_t kpw = (nkb + warps * splits - 1) / (warps * splits);
        cases.push_back({"plain explicit config",
                         (tiles + warps + splits) % 2 ? 5 : 13,
                         1000,
                         77,
                         Norm::None,
                         Dt::BF16,
                         Dt::F32,
                         true,
                         Dt::F32,
                         Dt::F32,
                         false,
                         0,
                         {tiles, warps, splits, kpw}});
      }
  for (int64_t M : {1, 16}) {
    cases.push_back({"gpt-small qkv 768 -> 2304", M, 768, 2304});
    cases.push_back(
        {"gpt-small up 768 -> 3072, gelu", M, 768, 3072, Norm::None, Dt::BF16, Dt::F32, true, Dt::F32, Dt::None, true});
    cases.push_back({"gpt-small down 3072 -> 768 (cluster), residual", M, 3072, 768, Norm::None, Dt::BF16, Dt::F32,
                     true, Dt::None, Dt::F32});
  }
  cases.push_back({"head-like config (8 SMs: many tiles)",
                   3,
                   768,
                   1000,
                   Norm::None,
                   Dt::BF16,
                   Dt::F32,
                   true,
                   Dt::None,
                   Dt::None,
                   false,
                   0,
                   {},
                   8});
  // The norm prologue.
  for (int64_t M : {1, 3, 8, 9, 16}) {
    cases.push_back({"rms fp32 x -> qkv 768 -> 2304", M, 768, 2304, Norm::RMS, Dt::F32});
    cases.push_back({"layer fp32 x + bias -> fc 768 -> 3072, bias, gelu", M, 768, 3072, Norm::Layer, Dt::F32, Dt::F32,
                     true, Dt::F32, Dt::None, true});
  }
  cases.push_back(
      {"layer bf16 x, bf16 weights, no norm bias", 5, 768, 2304, Norm::Layer, Dt::BF16, Dt::BF16, false, Dt::BF16});
  cases.push_back({"rms bf16 x, strided rows, fp32 residual", 4, 256, 130, Norm::RMS, Dt::BF16, Dt::F32, true, Dt::None,
                   Dt::F32, false, 24});
  cases.push_back({"layer -> head-like config (8 SMs: many tiles)",
                   2,
                   768,
                   1000,
                   Norm::Layer,
                   Dt::F32,
                   Dt::F32,
                   true,
                   Dt::None,
                   Dt::None,
                   false,
                   0,
                   {},
                   8});
  cases.push_back({"rms -> head-like config, 16 rows",
                   16,
                   768,
                   520,
                   Norm::RMS,
                   Dt::F32,
                   Dt::F32,
                   true,
                   Dt::None,
                   Dt::None,
                   false,
                   0,
                   {},
                   8});
  for (int splits : {2, 3, 8})
    for (int warps : {1, 3}) {
      const int64_t kpw = (nkb + warps * splits - 1) / (warps * splits);
      cases.push_back({"layer, cluster split (each CTA's k span)",
                       splits == 3 ? 11 : 6,
                       1000,
                       77,
                       Norm::Layer,
                       Dt::F32,
                       Dt::F32,
                       true,
                       Dt::F32,
                       Dt::F32,
                       false,
                       0,
                       {2, warps, splits, kpw}});
    }
  if (!quick) cases.push_back({"rms -> gpt-small LM head 768 -> 50257", 1, 768, 50257, Norm::RMS, Dt::F32});
  std::vector<Case> heads;  // the greedy head (final norm -> LM head -> argmax and log-prob)
  heads.push_back({"greedy head, rms, 8 SMs (many tiles)",
                   1,
                   768,
                   1000,
                   Norm::RMS,
                   Dt::F32,
                   Dt::F32,
                   true,
                   Dt::None,
                   Dt::None,
                   false,
                   0,
                   {},
                   8});
  heads.push_back({"greedy head, layer, 8 SMs, 3 rows",
                   3,
                   768,
                   1000,
                   Norm::Layer,
                   Dt::F32,
                   Dt::F32,
                   true,
                   Dt::None,
                   Dt::None,
                   false,
                   0,
                   {},
                   8});
  heads.push_back({"greedy head, rms bf16, 16 rows, N % 16 == 1", 16, 256, 529, Norm::RMS, Dt::BF16, Dt::BF16});
  heads.push_back({"greedy head, exact tie across CTAs",
                   2,
                   256,
                   700,
                   Norm::RMS,
                   Dt::F32,
                   Dt::F32,
                   true,
                   Dt::None,
                   Dt::None,
                   false,
                   0,
                   {},
                   8,
                   3});
  if (!quick) heads.push_back({"greedy head, gpt-small LM head 768 -> 50257", 1, 768, 50257, Norm::RMS, Dt::F32});
  int fails = 0;
  unsigned seed = 1;
  if (mode == "head") {
    for (const auto& h : heads) fails += !run_head_case(h, seed++);
    std::printf("%d of %zu head cases failed\n", fails, heads.size());
    return fails ? 1 : 0;
  }
  size_t ran = 0;
  for (const auto& c : cases) {
    ++seed;
    if (mode == "norm" && c.norm == Norm::None) continue;
    fails += run_case(c, seed) > 1;
    ++ran;
  }
  int head_fails = 0;
  for (const auto& h : heads) head_fails += !run_head_case(h, seed++);
  std::printf("%d of %zu cases failed, %d of %zu greedy head cases\n", fails, ran, head_fails, heads.size());
  fails += head_fails;
  return fails ? 1 : 0;
}
