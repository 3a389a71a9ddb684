// The CUDA backward kernel run on the CPU (run.sh makes kernel_emu.cpp from selective_scan_bwd.cu)
// against a float64 sequential reference of the scan and its gradient: every output of ScanGrads.
#include "kernel_emu.cpp"
#include <cstdio>
#include <random>
thread_local dim3 threadIdx, blockIdx;
thread_local float* g_smem;
pthread_barrier_t g_block_bar;
pthread_barrier_t g_warp_bar[32];
float g_warp_buf[32][32];
std::mutex g_atomic_mu;
using namespace linearnexus::mamba::cuda;
using namespace linearnexus::mamba::cuda::emu;

double relerr(const std::vector<float>& a, const std::vector<double>& b) {
  double n = 0, d = 0;
  for (size_t i = 0; i < b.size(); ++i) n += (a[i] - b[i]) * (a[i] - b[i]), d += b[i] * b[i];
  return std::sqrt(n / std::max(d, 1e-300));
}

template <int K, bool RC>
int run(int64_t B, int64_t T, int64_t D, int64_t N, bool gate, bool dsT_on, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  const int64_t E = 2 * N + 3;
  std::vector<float> u(B * T * D), dt(B * T * D), bias(D), A(D * N), bc(B * T * E), Dk(D), zz(B * T * 2 * D),
      s0(B * D * N), dout(B * T * D), dsT(B * D * N);
  for (auto& x : u) x = nd(rng);
  for (auto& x : dt) x = 0.5f * nd(rng);
  for (auto& x : bias) x = 0.5f * nd(rng) - 2.5f;
  for (int64_t d = 0; d < D; ++d)
    for (int64_t n = 0; n < N; ++n) A[d * N + n] = -std::exp(0.3f * nd(rng)) * (n + 1);
  for (auto& x : bc) x = nd(rng);
  for (auto& x : Dk) x = nd(rng);
  for (auto& x : zz) x = nd(rng);
  for (auto& x : s0) x = 0.5f * nd(rng);
  for (auto& x : dout) x = nd(rng);
  for (auto& x : dsT) x = nd(rng);
  auto Bm = [&](int64_t b, int64_t t, int64_t n) { return (double)bc[(b * T + t) * E + 3 + n]; };
  auto Cm = [&](int64_t b, int64_t t, int64_t n) { return (double)bc[(b * T + t) * E + 3 + N + n]; };
  auto Z = [&](int64_t b, int64_t t, int64_t d) { return gate ? (double)zz[(b * T + t) * 2 * D + D + d] : 0.0; };
  const int64_t chunks = (T + 63) / 64;
  std::vector<float> kept(B * chunks * D * N);
  // reference
  std::vector<double> rdu(B * T * D), rddt(B * T * D), rdz(B * T * D), rdA(B * D * N, 0), rdD(B * D, 0), rdb(B * D, 0),
      rdB(B * T * N, 0), rdC(B * T * N, 0), rds0(B * D * N);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) {
      std::vector<double> hs((T + 1) * N), del(T), ys(T);
      for (int64_t n = 0; n < N; ++n) hs[n] = s0[(b * D + d) * N + n];
      for (int64_t t = 0; t < T; ++t) {
        if (t % 64 == 0)
          for (int64_t n = 0; n < N; ++n) kept[((b * chunks + t / 64) * D + d) * N + n] = (float)hs[t * N + n];
        const double x = dt[(b * T + t) * D + d] + bias[d];
        del[t] = x > 20 ? x : std::log1p(std::exp(x));
        double y = Dk[d] * u[(b * T + t) * D + d];
        for (int64_t n = 0; n < N; ++n) {
          hs[(t + 1) * N + n] =
              std::exp(del[t] * A[d * N + n]) * hs[t * N + n] + del[t] * u[(b * T + t) * D + d] * Bm(b, t, n);
          y += Cm(b, t, n) * hs[(t + 1) * N + n];
        }
        ys[t] = y;
      }
      std::vector<double> G(N);
      for (int64_t n = 0; n < N; ++n) G[n] = dsT_on ? dsT[(b * D + d) * N + n] : 0;
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t r = (b * T + t) * D + d;
        const double z = Z(b, t, d), sg = 1 / (1 + std::exp(-z)), o = dout[r];
        const double dy = gate ? o * z * sg : o;
        if (gate) rdz[r] = o * ys[t] * sg * (1 + z * (1 - sg));
        double ddu = 0, ddl = 0;
        for (int64_t n = 0; n < N; ++n) {
          G[n] += Cm(b, t, n) * dy;
          const double a = std::exp(del[t] * A[d * N + n]);
          rdC[(b * T + t) * N + n] += dy * hs[(t + 1) * N + n];
          rdB[(b * T + t) * N + n] += G[n] * del[t] * u[r];
          ddu += G[n] * Bm(b, t, n);
          ddl += G[n] * hs[t * N + n] * a * A[d * N + n];
          rdA[(b * D + d) * N + n] += G[n] * hs[t * N + n] * a * del[t];
          G[n] *= a;
        }
        const double x = dt[r] + bias[d];
        rdu[r] = ddu * del[t] + Dk[d] * dy;
        rddt[r] = (ddu * u[r] + ddl) / (1 + std::exp(-x));
        rdb[b * D + d] += rddt[r];
        rdD[b * D + d] += dy * u[r];
      }
      for (int64_t n = 0; n < N; ++n) rds0[(b * D + d) * N + n] = G[n];
    }
  // kernel
  ScanArgs a;
  a.B = B, a.T = T, a.D = D, a.N = N, a.dtype = DType::F32;
  a.u = u.data(), a.u_row = D, a.dt = dt.data(), a.dt_row = D, a.dt_bias = bias.data(), a.softplus = true,
  a.A = A.data();
  a.Bm = bc.data() + 3, a.B_row = E, a.Cm = bc.data() + 3 + N, a.C_row = E, a.Dskip = Dk.data();
  a.z = gate ? zz.data() + D : nullptr, a.z_row = 2 * D;
  std::vector<float> du(B * T * D), ddt(B * T * D), dz(B * T * D), dA(B * D * N), dD(B * D), db(B * D),
      dB(B * T * N, 0), dC(B * T * N, 0), ds0(B * D * N);
  ScanGrads g;
  g.dout = dout.data(), g.dout_row = D, g.dsT = dsT_on ? dsT.data() : nullptr, g.du = du.data(), g.ddt = ddt.data();
  g.dz = gate ? dz.data() : nullptr, g.dz_row = D, g.dA = dA.data(), g.dDskip = dD.data(), g.dbias = db.data(),
  g.dB = dB.data(), g.dC = dC.data(), g.ds0 = ds0.data();
  const int64_t NP = (N + K - 1) / K * K;
  std::vector<float> smem(4 * 64 * NP + 3 * kThreads * K + 2 * NP * 32 + NP * kThreads, NAN);
  pthread_barrier_init(&g_block_bar, nullptr, kThreads);
  for (int w = 0; w < kThreads / 32; ++w) pthread_barrier_init(&g_warp_bar[w], nullptr, 32);
  for (unsigned by = 0; by < B; ++by)
    for (unsigned bx = 0; bx < (D + 31) / 32; ++bx) {
      std::fill(smem.begin(), smem.end(), NAN);
      std::vector<std::thread> th;
      for (int t = 0; t < kThreads; ++t)
        th.emplace_back([&, t] {
          threadIdx = dim3(t);
          blockIdx = dim3(bx, by);
          g_smem = smem.data();
          scan_backward_kernel<float, K, RC>(a, kept.data(), g);
        });
      for (auto& x : th) x.join();
    }
  double e[] = {relerr(du, rdu), relerr(ddt, rddt), gate ? relerr(dz, rdz) : 0,
                relerr(dA, rdA), relerr(dD, rdD),   relerr(db, rdb),
                relerr(dB, rdB), relerr(dC, rdC),   relerr(ds0, rds0)};
  const char* nm[] = {"du", "ddt", "dz", "dA", "dD", "dbias", "dB", "dC", "ds0"};
  std::printf("K%d rc%d B%ld T%ld D%ld N%ld gate%d dsT%d:", K, RC, B, T, D, N, gate, dsT_on);
  int bad = 0;
  for (int i = 0; i < 9; ++i) {
    std::printf(" %s %.1e", nm[i], e[i]);
    bad += !(e[i] < 1e-4);
  }
  std::printf(bad ? "  FAIL\n" : "  ok\n");
  return bad;
}
int main() {
  int bad = 0;
  bad += run<2, false>(2, 100, 40, 5, true, true, 1);
  bad += run<2, true>(1, 192, 33, 16, true, true, 2);
  bad += run<4, false>(2, 37, 40, 5, true, false, 3);
  bad += run<2, false>(1, 7, 10, 1, false, true, 4);
  bad += run<4, false>(1, 130, 32, 16, true, true, 5);
  bad += run<2, false>(1, 1000, 20, 64, true, true, 6);  // 16 chunks, the last partial; d_state 64
  return bad;
}
