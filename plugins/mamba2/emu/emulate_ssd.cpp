// ssd_chunk.cu's two kernels run on the CPU (run.sh makes kernel_emu.cpp from it, with mma_emu.h for
// mma.cuh) against a float64 sequential reference of the recurrence, per (batch, head):
//   S_t = exp(g_t) S_{t-1} + (dt_t B_t)^T x_t,   y_t = C_t S_t        (S_{-1} = s0 or 0)
// fed the values the kernel reads (bf16 inputs rounded). Checks y and the final state, then the
// backward kernels (ssd_chunk_bwd.cu) against that recurrence run backwards (itself checked against
// central differences at a few entries): dx, dB, dC, ddt, dg, ds0 for L = <dy, y> + <dstate, state>.
#include "ssd_chunk_emu.cpp"
#include "ssd_chunk_bwd_emu.cpp"

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
using namespace linearnexus::mamba2::cuda;
using namespace linearnexus::mma;
using bf16 = __nv_bfloat16;

// Runs fn as every thread of every block of `grid`, one block after the other; shared memory starts
// as all-ones bytes (NaN in bf16 and fp32), so a read of what was never written shows.
void launch(dim3 grid, size_t smem_bytes, const std::function<void()>& fn) {
  auto* smem =
      static_cast<unsigned char*>(::operator new(smem_bytes, std::align_val_t(16)));  // exact: ASan sees overruns
  g_smem_bytes = smem_bytes;
  pthread_barrier_init(&g_block_bar, nullptr, kSsdThreads);
  for (int w = 0; w < kSsdThreads / 32; ++w) pthread_barrier_init(&g_warp_bar[w], nullptr, 32);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        std::memset(smem, 0xff, smem_bytes);
        std::vector<std::thread> th;
        for (int t = 0; t < kSsdThreads; ++t)
          th.emplace_back([&, t] {
            threadIdx = dim3(t);
            blockIdx = dim3(x, y, z);
            g_smem = smem;
            fn();
          });
        for (auto& t : th) t.join();
      }
  pthread_barrier_destroy(&g_block_bar);
  for (int w = 0; w < kSsdThreads / 32; ++w) pthread_barrier_destroy(&g_warp_bar[w]);
  ::operator delete(smem, std::align_val_t(16));
}

struct Case {
  int64_t B, T, H, G, N, P;
  bool bf16_in, s0, dt;
  std::string decay;  // strong | weak | exact (entries in {-1, 0, 1}, g = 0: every step exact)
  int pad;            // extra elements per row of the packed [x | B | C] rows (4: rows not 16-byte aligned)
  unsigned seed;
};

template <typename In>
int run(const Case& k) {
  const int64_t B = k.B, T = k.T, H = k.H, G = k.G, N = k.N, P = k.P, NC = (T + kChunk - 1) / kChunk;
  const int64_t row = H * P + 2 * G * N + k.pad;  // rows like mamba2's xBC: [x | B | C]
  std::mt19937 rng(k.seed);
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> ud;
  const bool exact = k.decay == "exact";
  auto draw = [&](double scale) {
    if (!exact) return scale * nd(rng);
    const double u = ud(rng);
    return u < 0.1 ? 1.0 : u < 0.2 ? -1.0 : 0.0;
  };
  std::vector<In> xbc(B * T * row);
  std::vector<double> xbc_d(B * T * row);  // what the kernel reads, in double
  for (size_t i = 0; i < xbc.size(); ++i) {
    const double v = draw(1.0);
    if constexpr (std::is_same<In, bf16>::value)
      xbc[i] = __float2bfloat16_rn(static_cast<float>(v)), xbc_d[i] = __bfloat162float(xbc[i]);
    else
      xbc[i] = static_cast<float>(v), xbc_d[i] = xbc[i];
  }
  std::vector<float> dt(B * T * H), g(B * T * H), s0(k.s0 ? B * H * N * P : 0);
  std::vector<double> Ah(H);
  for (auto& a : Ah)
    a = k.decay == "strong" ? 1 + 15 * ud(rng) : k.decay == "medium" ? 0.02 + 0.1 * ud(rng) : 1e-5 + 1e-4 * ud(rng);
  for (int64_t i = 0; i < B * T * H; ++i) {
    dt[i] = exact || !k.dt ? 1.f : static_cast<float>(0.05 + ud(rng));
    if (i % 37 == 5) dt[i] = 0.f;  // some tokens write nothing (as padding does)
    g[i] = exact ? 0.f : static_cast<float>(-dt[i] * Ah[i % H]);
  }
  for (auto& s : s0) s = exact ? static_cast<float>(draw(1)) : static_cast<float>(0.5 * nd(rng));
  // The reference, on the values the kernel reads, in double: per (b, h) the states S_0 .. S_T.
  std::vector<double> dt_d(dt.begin(), dt.end()), g_d(g.begin(), g.end()), s0_d(s0.begin(), s0.end());
  if (!k.dt) std::fill(dt_d.begin(), dt_d.end(), 1.0);
  const int64_t xo = 0, bo = H * P, co = H * P + G * N;  // offsets of x, B, C in a row
  auto forward_ref = [&](const std::vector<double>& X, const std::vector<double>& DT, const std::vector<double>& GG,
                         const std::vector<double>& S0, std::vector<double>& Y, std::vector<double>& SF,
                         std::vector<double>* hist) {
    Y.assign(B * T * H * P, 0.0), SF.assign(B * H * N * P, 0.0);
    if (hist) hist->assign(B * H * (T + 1) * N * P, 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        const int64_t gr = h / (H / G);
        std::vector<double> S(N * P, 0.0);
        if (k.s0)
          for (int64_t i = 0; i < N * P; ++i) S[i] = S0[(b * H + h) * N * P + i];
        for (int64_t t = 0; t <= T; ++t) {
          if (hist) std::copy(S.begin(), S.end(), hist->begin() + ((b * H + h) * (T + 1) + t) * N * P);
          if (t == T) break;
          const double* r = X.data() + (b * T + t) * row;
          const double a = std::exp(GG[(b * T + t) * H + h]), d = DT[(b * T + t) * H + h];
          for (int64_t n = 0; n < N; ++n)
            for (int64_t p = 0; p < P; ++p)
              S[n * P + p] = a * S[n * P + p] + d * r[bo + gr * N + n] * r[xo + h * P + p];
          for (int64_t p = 0; p < P; ++p) {
            double y = 0;
            for (int64_t n = 0; n < N; ++n) y += r[co + gr * N + n] * S[n * P + p];
            Y[((b * T + t) * H + h) * P + p] = y;
          }
        }
        for (int64_t i = 0; i < N * P; ++i) SF[(b * H + h) * N * P + i] = S[i];
      }
  };
  std::vector<double> ry, rS, hist;
  forward_ref(xbc_d, dt_d, g_d, s0_d, ry, rS, &hist);
  // The kernels, as ssd_forward launches them.
  SsdArgs a;
  a.B = B, a.T = T, a.H = H, a.G = G, a.N = N, a.P = P;
  a.dtype = std::is_same<In, bf16>::value ? DType::BF16 : DType::F32;
  a.x = xbc.data(), a.x_row = row, a.Bm = xbc.data() + H * P, a.B_row = row, a.Cm = xbc.data() + H * P + G * N;
  a.C_row = row, a.dt = k.dt ? dt.data() : nullptr, a.dt_row = H, a.g = g.data(), a.g_row = H;
  a.s0 = k.s0 ? s0.data() : nullptr;
  const bool vec = std::is_same<In, bf16>::value && row % 8 == 0;  // xbc is 16-byte aligned (vector)
  std::vector<bf16> entering(B * H * NC * N * P, bf16{0xffff});
  std::vector<In> y(B * T * H * P);
  std::vector<float> state(B * H * N * P, NAN);
  const size_t out_smem = (2 * kChunk * (N + 8) + (N + kChunk) * (P + 8)) * 2 + 2 * kChunk * 4;
  auto sk = N == 64 ? ssd_pass_kernel<In, 64, false> : ssd_pass_kernel<In, 128, false>;
  auto ok = N == 64 ? ssd_output_kernel<In, 64> : ssd_output_kernel<In, 128>;
  PassArgs pa;
  pa.k = a.Bm, pa.k_row = a.B_row, pa.v = a.x, pa.v_row = a.x_row, pa.init = a.s0, pa.kept = entering.data();
  pa.last = state.data();
  launch(dim3(P / kPTile, H, B), pass_smem_bytes(N), [&] { sk(a, pa, vec); });
  if (NC > 0) launch(dim3(NC, H, B), out_smem, [&] { ok(a, vec, entering.data(), y.data()); });
  // Errors: ||k - r|| / ||r|| and max |k - r| / max |r|.
  auto err = [](auto get, const std::vector<double>& r, double& rel, double& mx) {
    double n = 0, d = 0, m = 0, rm = 0;
    for (size_t i = 0; i < r.size(); ++i) {
      const double e = get(i) - r[i];
      n += e * e, d += r[i] * r[i], m = std::max(m, std::abs(e)), rm = std::max(rm, std::abs(r[i]));
      if (std::isnan(get(i))) m = INFINITY;
    }
    rel = std::sqrt(n / std::max(d, 1e-300)), mx = m / std::max(rm, 1e-300);
  };
  double ey, my, es, ms;
  err([&](size_t i) { return static_cast<double>(to_f(y[i])); }, ry, ey, my);
  err([&](size_t i) { return static_cast<double>(state[i]); }, rS, es, ms);
  // The backward: L = <dy, y> + <dstate, state>.
  std::vector<In> dyv(B * T * H * P);
  std::vector<double> dy_d(dyv.size());
  for (size_t i = 0; i < dyv.size(); ++i) {
    const double v = draw(1.0);
    if constexpr (std::is_same<In, bf16>::value)
      dyv[i] = __float2bfloat16_rn(static_cast<float>(v)), dy_d[i] = __bfloat162float(dyv[i]);
    else
      dyv[i] = static_cast<float>(v), dy_d[i] = dyv[i];
  }
  std::vector<float> dstate(k.s0 ? B * H * N * P : 0);
  for (auto& v : dstate) v = static_cast<float>(draw(1.0));
  // Reference gradients: the recurrence run backwards, Sh the adjoint of S_t.
  std::vector<double> rdx(B * T * H * P), rdB(B * T * G * N, 0.0), rdC(B * T * G * N, 0.0), rddt(B * T * H),
      rdg(B * T * H), rds0(B * H * N * P);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t gr = h / (H / G);
      std::vector<double> Sh(N * P, 0.0);
      for (size_t i = 0; i < dstate.size() / (B * H); ++i) Sh[i] = dstate[(b * H + h) * N * P + i];
      for (int64_t t = T - 1; t >= 0; --t) {
        const double* r = xbc_d.data() + (b * T + t) * row;
        const double* St = hist.data() + ((b * H + h) * (T + 1) + t + 1) * N * P;
        const double* Sp = St - N * P;
        const double* dyt = dy_d.data() + ((b * T + t) * H + h) * P;
        const int64_t th = (b * T + t) * H + h;
        const double a = std::exp(g_d[th]), d = dt_d[th];
        double ddt = 0, dg = 0;
        for (int64_t n = 0; n < N; ++n) {
          double dc = 0;
          for (int64_t p = 0; p < P; ++p) dc += St[n * P + p] * dyt[p], Sh[n * P + p] += r[co + gr * N + n] * dyt[p];
          rdC[(b * T + t) * G * N + gr * N + n] += dc;
        }
        for (int64_t p = 0; p < P; ++p) {
          double s = 0;
          for (int64_t n = 0; n < N; ++n) s += r[bo + gr * N + n] * Sh[n * P + p];
          rdx[((b * T + t) * H + h) * P + p] = d * s;
          ddt += s * r[xo + h * P + p];
        }
        for (int64_t n = 0; n < N; ++n) {
          double s = 0;
          for (int64_t p = 0; p < P; ++p) s += Sh[n * P + p] * r[xo + h * P + p], dg += Sh[n * P + p] * Sp[n * P + p];
          rdB[(b * T + t) * G * N + gr * N + n] += d * s;
        }
        rddt[th] = ddt, rdg[th] = a * dg;
        for (auto& v : Sh) v *= a;
      }
      for (int64_t i = 0; i < N * P; ++i) rds0[(b * H + h) * N * P + i] = Sh[i];
    }
  // The reference's own gradient against central differences of the reference forward, a few entries.
  double fd_worst = 0;
  {
    auto loss = [&](const std::vector<double>& X, const std::vector<double>& DT, const std::vector<double>& GG,
                    const std::vector<double>& S0) {
      std::vector<double> Y, SF;
      forward_ref(X, DT, GG, S0, Y, SF, nullptr);
      double L = 0;
      for (size_t i = 0; i < Y.size(); ++i) L += Y[i] * dy_d[i];
      for (size_t i = 0; i < dstate.size(); ++i) L += SF[i] * dstate[i];
      return L;
    };
    std::mt19937 pick(k.seed + 99);
    const int64_t bt = B * T;
    for (int trial = 0; trial < 4; ++trial) {
      const int64_t t = pick() % bt, h = pick() % H, p = pick() % P, n = pick() % N, gr = h / (H / G);
      const double eps = 1e-6;
      auto check = [&](double analytic, auto perturb) {
        const double fd = (perturb(eps) - perturb(-eps)) / (2 * eps);
        fd_worst = std::max(fd_worst, std::abs(fd - analytic) / std::max(1.0, std::abs(analytic)));
      };
      check(rdx[(t * H + h) * P + p], [&](double e) {
        auto X = xbc_d;
        X[t * row + xo + h * P + p] += e;
        return loss(X, dt_d, g_d, s0_d);
      });
      check(rdB[t * G * N + gr * N + n], [&](double e) {
        auto X = xbc_d;
        X[t * row + bo + gr * N + n] += e;
        return loss(X, dt_d, g_d, s0_d);
      });
      check(rdC[t * G * N + gr * N + n], [&](double e) {
        auto X = xbc_d;
        X[t * row + co + gr * N + n] += e;
        return loss(X, dt_d, g_d, s0_d);
      });
      check(rdg[t * H + h], [&](double e) {
        auto GG = g_d;
        GG[t * H + h] += e;
        return loss(xbc_d, dt_d, GG, s0_d);
      });
      if (k.dt)
        check(rddt[t * H + h], [&](double e) {
          auto DT = dt_d;
          DT[t * H + h] += e;
          return loss(xbc_d, DT, g_d, s0_d);
        });
      if (k.s0)
        check(rds0[(t % B * H + h) * N * P + n * P + p], [&](double e) {
          auto S0 = s0_d;
          S0[(t % B * H + h) * N * P + n * P + p] += e;
          return loss(xbc_d, dt_d, g_d, S0);
        });
    }
  }
  // The backward kernels, as ssd_backward launches them.
  std::vector<In> dx(B * T * H * P);
  std::vector<float> dB(B * T * G * N, 0.f), dC(B * T * G * N, 0.f), ddt(B * T * H, NAN), dg(B * T * H, NAN),
      ds0(B * H * N * P, NAN);
  std::vector<bf16> dkept(B * H * NC * N * P, bf16{0xffff});
  SsdGrads gr;
  gr.dy = dyv.data(), gr.dstate = k.s0 ? dstate.data() : nullptr, gr.dx = dx.data(), gr.dB = dB.data();
  gr.dC = dC.data(), gr.ddt = k.dt ? ddt.data() : nullptr, gr.dg = dg.data(), gr.ds0 = ds0.data();
  auto rk = N == 64 ? ssd_pass_kernel<In, 64, true> : ssd_pass_kernel<In, 128, true>;
  auto gk = N == 64 ? ssd_grad_kernel<In, 64> : ssd_grad_kernel<In, 128>;
  PassArgs ra;
  ra.k = a.Cm, ra.k_row = a.C_row, ra.v = dyv.data(), ra.v_row = H * P, ra.init = gr.dstate, ra.kept = dkept.data();
  ra.last = ds0.data();
  launch(dim3(P / kPTile, H, B), pass_smem_bytes(N), [&] { rk(a, ra, vec); });
  if (NC > 0) launch(dim3(NC, H, B), grad_smem_bytes(N, P), [&] { gk(a, gr, vec, entering.data(), dkept.data()); });
  struct GradErr {
    const char* name;
    double rel, mx;
  };
  std::vector<GradErr> ge;
  auto gerr = [&](const char* name, auto get, const std::vector<double>& r) {
    GradErr x{name, 0, 0};
    err(get, r, x.rel, x.mx);
    ge.push_back(x);
  };
  gerr(
      "dx", [&](size_t i) { return static_cast<double>(to_f(dx[i])); }, rdx);
  gerr(
      "dB", [&](size_t i) { return static_cast<double>(dB[i]); }, rdB);
  gerr(
      "dC", [&](size_t i) { return static_cast<double>(dC[i]); }, rdC);
  if (k.dt)
    gerr(
        "ddt", [&](size_t i) { return static_cast<double>(ddt[i]); }, rddt);
  gerr(
      "dg", [&](size_t i) { return static_cast<double>(dg[i]); }, rdg);
  gerr(
      "ds0", [&](size_t i) { return static_cast<double>(ds0[i]); }, rds0);
  const double tol_rel = exact ? 0 : 1e-2, tol_max = exact ? 0 : 3e-2;
  const double gtol_rel = exact ? 0 : 2e-2, gtol_max = exact ? 0 : 5e-2;
  bool good = ey <= tol_rel && es <= tol_rel && my <= tol_max && ms <= tol_max && fd_worst < 1e-4;
  for (const auto& x : ge) good = good && x.rel <= gtol_rel && x.mx <= gtol_max;
  std::printf(
      "B%ld T%4ld H%ld G%ld N%3ld P%3ld %s s0 %d dt %d %-6s pad %d vec %d: y rel %.2e max %.2e | state rel %.2e max %.2e  %s\n",
      B, T, H, G, N, P, a.dtype == DType::BF16 ? "bf16" : "fp32", k.s0, k.dt, k.decay.c_str(), k.pad, vec, ey, my, es,
      ms, good ? "ok" : "FAIL");
  std::printf("    grads (rel / max):");
  for (const auto& x : ge) std::printf(" %s %.1e/%.1e", x.name, x.rel, x.mx);
  std::printf("   reference vs central differences %.1e\n", fd_worst);
  std::fflush(stdout);
  return good ? 0 : 1;
}

int main(int argc, char** argv) {
  const std::vector<std::pair<bool, Case>> cases = {
      // {bf16 inputs, case}: exact arithmetic first (any layout slip is an error > 0), then the brief's sizes.
      {false, {2, 150, 4, 2, 64, 64, false, true, true, "exact", 8, 1}},
      {true, {2, 150, 4, 2, 128, 64, true, true, true, "exact", 8, 2}},
      {false, {2, 150, 4, 2, 64, 64, false, true, true, "strong", 8, 3}},
      {false, {2, 150, 4, 2, 64, 64, false, false, true, "weak", 8, 4}},
      {true, {2, 150, 4, 2, 128, 64, true, true, true, "strong", 8, 5}},
      {true, {2, 150, 4, 2, 128, 64, true, false, true, "weak", 8, 6}},
      {false, {2, 150, 4, 2, 128, 64, false, true, true, "weak", 8, 7}},
      {true, {2, 150, 4, 2, 64, 64, true, true, true, "strong", 8, 8}},
      {true, {1, 64, 4, 1, 64, 96, true, true, true, "strong", 4, 9}},      // one whole chunk, P 96, rows not aligned
      {false, {1, 5, 2, 2, 128, 32, false, true, false, "strong", 0, 10}},  // shorter than a chunk, no dt
      {true, {1, 200, 4, 4, 64, 32, true, false, true, "weak", 0, 11}},
      {false, {2, 150, 4, 2, 64, 64, false, true, true, "medium", 8, 12}},
      {true, {2, 150, 4, 2, 128, 64, true, true, true, "medium", 8, 13}},
  };
  int bad = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (argc > 1 && std::to_string(i) != argv[1]) continue;
    bad += cases[i].first ? run<bf16>(cases[i].second) : run<float>(cases[i].second);
  }
  std::printf(bad ? "%d FAILED\n" : "all passed\n", bad);
  return bad;
}
