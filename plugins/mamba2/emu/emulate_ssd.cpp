// ssd_chunk.cu's two kernels run on the CPU (run.sh makes kernel_emu.cpp from it, with mma_emu.h for
// mma.cuh) against a float64 sequential reference of the recurrence, per (batch, head):
//   S_t = exp(g_t) S_{t-1} + (dt_t B_t)^T x_t,   y_t = C_t S_t        (S_{-1} = s0 or 0)
// fed the values the kernel reads (bf16 inputs rounded). Checks y and the final state.
#include "kernel_emu.cpp"

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <thread>

thread_local dim3 threadIdx, blockIdx;
thread_local unsigned char* g_smem;
pthread_barrier_t g_block_bar;
pthread_barrier_t g_warp_bar[32];
float g_shfl_buf[32][32];
namespace linearnexus {
namespace mamba2 {
namespace cuda {
WarpXchg g_xchg[32];
size_t g_smem_bytes;
thread_local std::vector<CpAsyncCopy> g_cp_open;
thread_local std::deque<std::vector<CpAsyncCopy>> g_cp_groups;
}  // namespace cuda
}  // namespace mamba2
}  // namespace linearnexus
using namespace linearnexus::mamba2::cuda;
using bf16 = __nv_bfloat16;

// Runs fn as every thread of every block of `grid`, one block after the other; shared memory starts
// as all-ones bytes (NaN in bf16 and fp32), so a read of what was never written shows.
void launch(dim3 grid, size_t smem_bytes, const std::function<void()>& fn) {
  unsigned char* smem = static_cast<unsigned char*>(std::aligned_alloc(128, (smem_bytes + 127) / 128 * 128));
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
  std::free(smem);
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
  for (auto& a : Ah) a = k.decay == "strong" ? 1 + 15 * ud(rng) : 1e-5 + 1e-4 * ud(rng);
  for (int64_t i = 0; i < B * T * H; ++i) {
    dt[i] = exact || !k.dt ? 1.f : static_cast<float>(0.05 + ud(rng));
    if (i % 37 == 5) dt[i] = 0.f;  // some tokens write nothing (as padding does)
    g[i] = exact ? 0.f : static_cast<float>(-dt[i] * Ah[i % H]);
  }
  for (auto& s : s0) s = exact ? static_cast<float>(draw(1)) : static_cast<float>(0.5 * nd(rng));
  // The reference.
  std::vector<double> ry(B * T * H * P), rS(B * H * N * P);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t gr = h / (H / G);
      std::vector<double> S(N * P, 0.0);
      if (k.s0)
        for (int64_t i = 0; i < N * P; ++i) S[i] = s0[(b * H + h) * N * P + i];
      for (int64_t t = 0; t < T; ++t) {
        const double* r = xbc_d.data() + (b * T + t) * row;
        const double a = std::exp(static_cast<double>(g[(b * T + t) * H + h])),
                     d = k.dt ? dt[(b * T + t) * H + h] : 1.0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t p = 0; p < P; ++p) S[n * P + p] = a * S[n * P + p] + d * r[H * P + gr * N + n] * r[h * P + p];
        for (int64_t p = 0; p < P; ++p) {
          double y = 0;
          for (int64_t n = 0; n < N; ++n) y += r[H * P + G * N + gr * N + n] * S[n * P + p];
          ry[((b * T + t) * H + h) * P + p] = y;
        }
      }
      for (int64_t i = 0; i < N * P; ++i) rS[(b * H + h) * N * P + i] = S[i];
    }
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
  const size_t state_smem = (2 * kChunk * (N + 8) + kChunk * (kPTile + 8)) * 2 + 3 * kChunk * 4;
  const size_t out_smem = (2 * kChunk * (N + 8) + (N + kChunk) * (P + 8)) * 2 + 2 * kChunk * 4;
  auto sk = N == 64 ? ssd_state_kernel<In, 64> : ssd_state_kernel<In, 128>;
  auto ok = N == 64 ? ssd_output_kernel<In, 64> : ssd_output_kernel<In, 128>;
  launch(dim3(P / kPTile, H, B), state_smem, [&] { sk(a, vec, entering.data(), state.data()); });
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
  const double tol_rel = exact ? 0 : 1e-2, tol_max = exact ? 0 : 3e-2;
  const bool good = ey <= tol_rel && es <= tol_rel && my <= tol_max && ms <= tol_max;
  std::printf(
      "B%ld T%4ld H%ld G%ld N%3ld P%3ld %s s0 %d dt %d %-6s pad %d vec %d: y rel %.2e max %.2e | state rel %.2e max %.2e  %s\n",
      B, T, H, G, N, P, a.dtype == DType::BF16 ? "bf16" : "fp32", k.s0, k.dt, k.decay.c_str(), k.pad, vec, ey, my, es,
      ms, good ? "ok" : "FAIL");
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
  };
  int bad = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (argc > 1 && std::to_string(i) != argv[1]) continue;
    bad += cases[i].first ? run<bf16>(cases[i].second) : run<float>(cases[i].second);
  }
  std::printf(bad ? "%d FAILED\n" : "all passed\n", bad);
  return bad;
}
