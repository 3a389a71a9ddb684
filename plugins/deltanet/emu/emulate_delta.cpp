// delta_chunk.cu's and delta_chunk_bwd.cu's kernels on the CPU (run.sh ports them, with mma_emu.h for
// mma.cuh) against a float64 sequential reference of the delta rule, per (batch, head):
//   S_t = exp(g_t) (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,   o_t = q_t S_t   (S_{-1} = s0 or 0)
// fed the values the kernels read (bf16 inputs rounded). Checks o and the final state, then the
// backward kernels against that recurrence run backwards (itself checked against central differences
// at a few entries): dq, dk, dv, dbeta, dg, ds0 for L = <dO, o> + <dstate, state>.
#include "delta_chunk_emu.cpp"
#include "delta_chunk_bwd_emu.cpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <thread>

thread_local dim3 threadIdx, blockIdx;
thread_local unsigned char* g_smem;
pthread_barrier_t g_block_bar;
pthread_barrier_t g_warp_bar[32];
float g_shfl_buf[32][32];
std::mutex g_atomic_mu;
namespace linearnexus {
namespace mma {
WarpXchg g_xchg[32];
size_t g_smem_bytes;
thread_local std::vector<CpAsyncCopy> g_cp_open;
thread_local std::deque<std::vector<CpAsyncCopy>> g_cp_groups;
}  // namespace mma
}  // namespace linearnexus
using namespace linearnexus::deltanet::cuda;
using linearnexus::mma::g_smem_bytes;

// Runs fn as every thread of every block of `grid`, one block after the other; shared memory starts
// as all-ones bytes (NaN in bf16 and fp32), so a read of what was never written shows.
void launch(dim3 grid, size_t smem_bytes, const std::function<void()>& fn) {
  auto* smem = static_cast<unsigned char*>(::operator new(smem_bytes, std::align_val_t(16)));
  g_smem_bytes = smem_bytes;
  pthread_barrier_init(&g_block_bar, nullptr, kThreads);
  for (int w = 0; w < kThreads / 32; ++w) pthread_barrier_init(&g_warp_bar[w], nullptr, 32);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(smem, 0xff, smem_bytes);
        std::vector<std::thread> th;
        for (int t = 0; t < kThreads; ++t)
          th.emplace_back([&, t] {
            threadIdx = dim3(t);
            blockIdx = dim3(x, y, z);
            g_smem = smem;
            fn();
          });
        for (auto& t : th) t.join();
      }
  pthread_barrier_destroy(&g_block_bar);
  for (int w = 0; w < kThreads / 32; ++w) pthread_barrier_destroy(&g_warp_bar[w]);
  ::operator delete(smem, std::align_val_t(16));
}

struct Case {
  int64_t B, T, H, D;
  bool s0;
  std::string decay;  // none (deltanet) | gated (gated_deltanet's range) | strong
  int pad;            // extra elements per packed [q | k | v] row (4: rows not 16-byte aligned)
  unsigned seed;
};

using Vec = std::vector<double>;

// The reference on (q, k, v) packed in rows of `row`, beta and g [B, T, H], s0 [B, H, D, D].
struct Ref {
  int64_t B, T, H, D, row;
  bool gated;
  void forward(const Vec& X, const Vec& beta, const Vec& g, const Vec* s0, Vec& O, Vec& SF, Vec* hist) const {
    O.assign(B * T * H * D, 0.0), SF.assign(B * H * D * D, 0.0);
    if (hist) hist->assign(B * H * (T + 1) * D * D, 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        Vec S(D * D, 0.0), r(D);
        if (s0) std::copy(s0->begin() + (b * H + h) * D * D, s0->begin() + (b * H + h + 1) * D * D, S.begin());
        for (int64_t t = 0; t <= T; ++t) {
          if (hist) std::copy(S.begin(), S.end(), hist->begin() + ((b * H + h) * (T + 1) + t) * D * D);
          if (t == T) break;
          const double *q = X.data() + (b * T + t) * row + h * D, *k = q + H * D, *v = k + H * D;
          const double a = gated ? std::exp(g[(b * T + t) * H + h]) : 1.0, bt = beta[(b * T + t) * H + h];
          for (int64_t j = 0; j < D; ++j) {
            r[j] = 0;
            for (int64_t i = 0; i < D; ++i) r[j] += k[i] * S[i * D + j];
          }
          for (int64_t i = 0; i < D; ++i)
            for (int64_t j = 0; j < D; ++j) S[i * D + j] = a * (S[i * D + j] - bt * k[i] * r[j]) + bt * k[i] * v[j];
          for (int64_t j = 0; j < D; ++j) {
            double o = 0;
            for (int64_t i = 0; i < D; ++i) o += q[i] * S[i * D + j];
            O[((b * T + t) * H + h) * D + j] = o;
          }
        }
        std::copy(S.begin(), S.end(), SF.begin() + (b * H + h) * D * D);
      }
  }
};

template <typename In>
In round_in(double v, double* back) {
  if constexpr (std::is_same<In, bf16>::value) {
    const In x = __float2bfloat16_rn(static_cast<float>(v));
    *back = __bfloat162float(x);
    return x;
  } else {
    *back = static_cast<float>(v);
    return static_cast<float>(v);
  }
}

// ||k - r|| / ||r|| and max |k - r| / max |r| (NaN: infinite).
void err(const std::function<double(size_t)>& get, const Vec& r, double& rel, double& mx) {
  double n = 0, d = 0, m = 0, rm = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    const double e = get(i) - r[i];
    n += e * e, d += r[i] * r[i], m = std::max(m, std::abs(e)), rm = std::max(rm, std::abs(r[i]));
    if (std::isnan(get(i))) m = INFINITY;
  }
  rel = std::sqrt(n / std::max(d, 1e-300)), mx = m / std::max(rm, 1e-300);
}

template <typename In>
int run(const Case& c) {
  const int64_t B = c.B, T = c.T, H = c.H, D = c.D, NC = (T + kChunk - 1) / kChunk, row = 3 * H * D + c.pad;
  const bool gated = c.decay != "none";
  std::mt19937 rng(c.seed);
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> ud;
  // q, k L2-normalised per head (q also scaled by D^-1/2), v normal: as the block feeds them.
  std::vector<In> X(B * T * row);
  Vec Xd(B * T * row, 0.0);
  for (int64_t bt = 0; bt < B * T; ++bt)
    for (int part = 0; part < 3; ++part)
      for (int64_t h = 0; h < H; ++h) {
        Vec x(D);
        double n2 = 0;
        for (auto& e : x) e = nd(rng), n2 += e * e;
        const double scale = part == 0 ? 1 / std::sqrt(n2 * D) : part == 1 ? 1 / std::sqrt(n2) : 1.0;
        for (int64_t d = 0; d < D; ++d) {
          const int64_t i = bt * row + part * H * D + h * D + d;
          X[i] = round_in<In>(x[d] * scale, &Xd[i]);
        }
      }
  std::vector<float> beta(B * T * H), g(B * T * H, 0.f), s0(c.s0 ? B * H * D * D : 0);
  for (int64_t i = 0; i < B * T * H; ++i) {
    const int64_t b = i / (T * H), t = i / H % T;
    beta[i] = static_cast<float>(1 / (1 + std::exp(-nd(rng))));
    if (c.decay == "gated") g[i] = static_cast<float>(-(1 + 15 * ud(rng)) * std::exp(-6.9 + 4.6 * ud(rng)));
    if (c.decay == "strong") g[i] = static_cast<float>(-0.5 - 3 * ud(rng));
    if (i % 37 == 5 || (b == 1 && t < 7)) beta[i] = 0.f, g[i] = 0.f;  // padding: writes nothing, decays nothing
  }
  for (auto& v : s0) v = static_cast<float>(0.3 * nd(rng));
  const Vec beta_d(beta.begin(), beta.end()), g_d(g.begin(), g.end()), s0_d(s0.begin(), s0.end());
  const Ref ref{B, T, H, D, row, gated};
  Vec ro, rS, hist;
  ref.forward(Xd, beta_d, g_d, c.s0 ? &s0_d : nullptr, ro, rS, &hist);

  // The forward kernels, as delta_forward launches them.
  DeltaArgs a;
  a.B = B, a.T = T, a.H = H, a.D = D;
  a.dtype = std::is_same<In, bf16>::value ? DType::BF16 : DType::F32;
  a.q = X.data(), a.k = X.data() + H * D, a.v = X.data() + 2 * H * D, a.q_row = a.k_row = a.v_row = row;
  a.beta = beta.data(), a.beta_row = H, a.g = gated ? g.data() : nullptr, a.g_row = H;
  a.s0 = c.s0 ? s0.data() : nullptr;
  const bool vec = std::is_same<In, bf16>::value && row % 8 == 0;
  const bf16 nan16{0xffff};
  std::vector<float> gc(B * H * T, NAN);
  std::vector<bf16> ainv(B * H * T * kChunk, nan16), w(B * H * T * D, nan16), u(w), vn(w),
      hs(B * H * NC * D * D, nan16);
  DeltaSaved s;
  s.gc = gc.data(), s.ainv = ainv.data(), s.w = w.data(), s.u = u.data(), s.vn = vn.data(), s.h = hs.data();
  std::vector<In> o(B * T * H * D);
  std::vector<float> state(B * H * D * D, NAN);
  const dim3 cgrid(NC, H, B), sgrid(D / kVTile, H, B);
  auto pk = D == 64 ? delta_prep_kernel<In, 64> : delta_prep_kernel<In, 128>;
  auto sk = D == 64 ? delta_state_kernel<In, 64> : delta_state_kernel<In, 128>;
  auto ok = D == 64 ? delta_output_kernel<In, 64> : delta_output_kernel<In, 128>;
  if (NC > 0) launch(cgrid, prep_smem_bytes(D), [&] { pk(a, s, vec); });
  launch(sgrid, state_smem_bytes(D), [&] { sk(a, s, vec, state.data()); });
  if (NC > 0) launch(cgrid, output_smem_bytes(D), [&] { ok(a, s, vec, o.data()); });
  double eo, mo, es, ms;
  err([&](size_t i) { return static_cast<double>(to_f(o[i])); }, ro, eo, mo);
  err([&](size_t i) { return static_cast<double>(state[i]); }, rS, es, ms);

  // The backward: L = <dO, o> + <dstate, state>.
  std::vector<In> dO(B * T * H * D);
  Vec dO_d(dO.size());
  for (size_t i = 0; i < dO.size(); ++i) dO[i] = round_in<In>(nd(rng), &dO_d[i]);
  std::vector<float> dstate(c.s0 ? B * H * D * D : 0);
  for (auto& v : dstate) v = static_cast<float>(nd(rng));
  // Reference gradients: the recurrence run backwards, Sh the adjoint of S_t.
  Vec rdX(B * T * row, 0.0), rdbeta(B * T * H, 0.0), rdg(B * T * H, 0.0), rds0(B * H * D * D);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      Vec Sh(D * D, 0.0), r(D), kSh(D), dP(D * D);
      for (size_t i = 0; i < dstate.size() / (B * H); ++i) Sh[i] = dstate[(b * H + h) * D * D + i];
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t x0 = (b * T + t) * row + h * D, th = (b * T + t) * H + h;
        const double *q = Xd.data() + x0, *k = q + H * D, *v = k + H * D;
        double *dq = rdX.data() + x0, *dk = dq + H * D, *dv = dk + H * D;
        const double* St = hist.data() + ((b * H + h) * (T + 1) + t + 1) * D * D;
        const double* P = St - D * D;
        const double* dot = dO_d.data() + th * D;
        const double al = gated ? std::exp(g_d[th]) : 1.0, bt = beta_d[th];
        for (int64_t i = 0; i < D; ++i) {
          double s = 0;
          for (int64_t j = 0; j < D; ++j) s += St[i * D + j] * dot[j], Sh[i * D + j] += q[i] * dot[j];
          dq[i] = s;
        }
        for (int64_t j = 0; j < D; ++j) {
          r[j] = kSh[j] = 0;
          for (int64_t i = 0; i < D; ++i) r[j] += k[i] * P[i * D + j], kSh[j] += k[i] * Sh[i * D + j];
        }
        double db = 0, da = 0;
        for (int64_t j = 0; j < D; ++j)
          dv[j] = bt * kSh[j], db += kSh[j] * (v[j] - al * r[j]), da -= bt * kSh[j] * r[j];
        for (int64_t i = 0; i < D; ++i) {
          double shv = 0, shr = 0, pk = 0;
          for (int64_t j = 0; j < D; ++j)
            shv += Sh[i * D + j] * v[j], shr += Sh[i * D + j] * r[j], pk += P[i * D + j] * kSh[j],
                da += Sh[i * D + j] * P[i * D + j];
          dk[i] = bt * shv - al * bt * (shr + pk);
        }
        rdbeta[th] = db, rdg[th] = al * da;
        for (int64_t i = 0; i < D; ++i)
          for (int64_t j = 0; j < D; ++j) Sh[i * D + j] = al * (Sh[i * D + j] - bt * k[i] * kSh[j]);
      }
      std::copy(Sh.begin(), Sh.end(), rds0.begin() + (b * H + h) * D * D);
    }
  // The reference's own gradient against central differences of the reference forward, a few entries.
  double fd_worst = 0;
  {
    auto loss = [&](const Vec& XX, const Vec& BB, const Vec& GG, const Vec& S0) {
      Vec O, SF;
      ref.forward(XX, BB, GG, c.s0 ? &S0 : nullptr, O, SF, nullptr);
      double L = 0;
      for (size_t i = 0; i < O.size(); ++i) L += O[i] * dO_d[i];
      for (size_t i = 0; i < dstate.size(); ++i) L += SF[i] * dstate[i];
      return L;
    };
    std::mt19937 pick(c.seed + 99);
    for (int trial = 0; trial < 3; ++trial) {
      const int64_t bt = pick() % (B * T), h = pick() % H, d = pick() % D, part = pick() % 3;
      const double eps = 1e-6;
      auto check = [&](double analytic, auto perturb) {
        const double fd = (perturb(eps) - perturb(-eps)) / (2 * eps);
        fd_worst = std::max(fd_worst, std::abs(fd - analytic) / std::max(1.0, std::abs(analytic)));
      };
      const int64_t xi = bt * row + part * H * D + h * D + d;
      check(rdX[xi], [&](double e) {
        auto XX = Xd;
        XX[xi] += e;
        return loss(XX, beta_d, g_d, s0_d);
      });
      check(rdbeta[bt * H + h], [&](double e) {
        auto BB = beta_d;
        BB[bt * H + h] += e;
        return loss(Xd, BB, g_d, s0_d);
      });
      if (gated)
        check(rdg[bt * H + h], [&](double e) {
          auto GG = g_d;
          GG[bt * H + h] += e;
          return loss(Xd, beta_d, GG, s0_d);
        });
      if (c.s0)
        check(rds0[(bt / T * H + h) * D * D + d * D + (d * 7) % D], [&](double e) {
          auto S0 = s0_d;
          S0[(bt / T * H + h) * D * D + d * D + (d * 7) % D] += e;
          return loss(Xd, beta_d, g_d, S0);
        });
    }
  }
  // The backward kernels, as delta_backward launches them.
  std::vector<float> dq(B * T * H * D, NAN), dk(dq), dv(dq), dbeta(B * T * H, NAN), dg(B * T * H, NAN),
      ds0(B * H * D * D, NAN);
  std::vector<bf16> dvl(B * H * T * D, nan16), dvn(dvl), dw(dvl), dh(B * H * NC * D * D, nan16);
  DeltaGrads gr;
  gr.dout = dO.data(), gr.dstate = c.s0 ? dstate.data() : nullptr, gr.dq = dq.data(), gr.dk = dk.data();
  gr.dv = dv.data(), gr.dbeta = dbeta.data(), gr.dg = gated ? dg.data() : nullptr, gr.ds0 = ds0.data();
  gr.dvl = dvl.data(), gr.dvn = dvn.data(), gr.dw = dw.data(), gr.dh = dh.data();
  auto lk = D == 64 ? delta_dvlocal_kernel<In, 64> : delta_dvlocal_kernel<In, 128>;
  auto rk = D == 64 ? delta_dstate_kernel<In, 64> : delta_dstate_kernel<In, 128>;
  auto gk = D == 64 ? delta_grad_kernel<In, 64> : delta_grad_kernel<In, 128>;
  auto wk = D == 64 ? delta_wy_kernel<In, 64> : delta_wy_kernel<In, 128>;
  if (NC > 0) launch(cgrid, dvlocal_smem_bytes(D), [&] { lk(a, s, gr, vec); });
  launch(sgrid, dstate_smem_bytes(D), [&] { rk(a, s, gr, vec); });
  if (NC > 0) launch(cgrid, grad_smem_bytes(D), [&] { gk(a, s, gr, vec); });
  if (NC > 0) launch(cgrid, wy_smem_bytes(D), [&] { wk(a, s, gr, vec); });
  struct GradErr {
    const char* name;
    double rel, mx;
  };
  std::vector<GradErr> ge;
  auto gerr = [&](const char* name, const std::function<double(size_t)>& get, const Vec& r) {
    GradErr x{name, 0, 0};
    err(get, r, x.rel, x.mx);
    ge.push_back(x);
  };
  auto part = [&](int p) {  // the reference's gradient of q (0), k (1) or v (2) as [B, T, H, D]
    Vec r(B * T * H * D);
    for (int64_t i = 0; i < B * T * H * D; ++i) r[i] = rdX[(i / (H * D)) * row + p * H * D + i % (H * D)];
    return r;
  };
  gerr(
      "dq", [&](size_t i) { return double(dq[i]); }, part(0));
  gerr(
      "dk", [&](size_t i) { return double(dk[i]); }, part(1));
  gerr(
      "dv", [&](size_t i) { return double(dv[i]); }, part(2));
  gerr(
      "dbeta", [&](size_t i) { return double(dbeta[i]); }, rdbeta);
  if (gated)
    gerr(
        "dg", [&](size_t i) { return double(dg[i]); }, rdg);
  gerr(
      "ds0", [&](size_t i) { return double(ds0[i]); }, rds0);
  const double tol_rel = 1e-2, tol_max = 3e-2, gtol_rel = 2e-2, gtol_max = 5e-2;
  bool good = eo <= tol_rel && es <= tol_rel && mo <= tol_max && ms <= tol_max && fd_worst < 1e-4;
  for (const auto& x : ge) good = good && x.rel <= gtol_rel && x.mx <= gtol_max;
  std::printf("B%ld T%4ld H%ld D%3ld %s s0 %d %-6s pad %d vec %d: o rel %.2e max %.2e | state rel %.2e max %.2e  %s\n",
              B, T, H, D, a.dtype == DType::BF16 ? "bf16" : "fp32", c.s0, c.decay.c_str(), c.pad, vec, eo, mo, es, ms,
              good ? "ok" : "FAIL");
  std::printf("    grads (rel / max):");
  for (const auto& x : ge) std::printf(" %s %.1e/%.1e", x.name, x.rel, x.mx);
  std::printf("   reference vs central differences %.1e\n", fd_worst);
  std::fflush(stdout);
  return good ? 0 : 1;
}

int main(int argc, char** argv) {
  const std::vector<std::pair<bool, Case>> cases = {
      // {bf16 inputs, case}
      {false, {2, 150, 2, 64, true, "gated", 8, 1}},    // fp32, two batch rows (row 1 left-padded), T % 64 != 0
      {true, {2, 150, 2, 64, true, "gated", 8, 2}},     // the same in bf16 (cp.async loads)
      {true, {1, 150, 2, 128, false, "none", 8, 3}},    // deltanet, head dim 128, no s0
      {false, {1, 130, 2, 128, true, "strong", 0, 4}},  // strong decays, fp32, head dim 128
      {true, {1, 5, 2, 64, true, "gated", 8, 5}},       // shorter than a chunk
      {false, {1, 64, 2, 64, false, "none", 0, 6}},     // exactly one chunk
      {true, {2, 200, 1, 64, true, "strong", 4, 7}},    // rows not 16-byte aligned: plain loads
      {true, {1, 100, 1, 128, true, "gated", 8, 8}},
  };
  int bad = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (argc > 1 && std::to_string(i) != argv[1]) continue;
    bad += cases[i].first ? run<bf16>(cases[i].second) : run<float>(cases[i].second);
  }
  std::printf(bad ? "%d FAILED\n" : "all passed\n", bad);
  return bad;
}
