// decode_attention.cu run on the CPU (run.sh makes kernel_emu.cpp of it) through its own launcher,
// decode_attention(), against a float64 reference: softmax attention of each query head over the
// visible keys of its KV head (columns j <= slot, not padding), from the inputs as the kernel's
// dtype holds them. Columns after the slot and padding columns hold NaN, so a read of one shows.
// Tolerance, per element: fp32 |o - ref| <= 2e-5; bf16 |o - ref| <= 2^-8 |ref| + 2e-5 (the sums are
// fp32 either way; rounding the output to bf16, 8 significant bits, moves it by up to 2^-8 |o|).
#include "kernel_emu.cpp"

#include <algorithm>
#include <cstdio>
#include <random>

thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;
thread_local int g_shared_next;
std::mutex g_mu;
std::vector<std::unique_ptr<float[]>> g_shared;
pthread_barrier_t g_block_bar;
pthread_barrier_t g_warp_bar[32];
float g_warp_buf[32][32];

using namespace linearnexus::attention::cuda;

namespace {

struct Case {
  int64_t B, H, Hkv, D, L, slot, pad, chunk;  // pad: row 1's left padding (columns 0 .. pad - 1)
};

float val(float x) { return x; }
float val(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
T enc(float x);
template <>
float enc<float>(float x) {
  return x;
}
template <>
__nv_bfloat16 enc<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}

double g_max_err[2] = {0, 0};  // the largest |o - ref| seen, fp32 and bf16

template <typename T>
int run(const Case& c, unsigned seed) {
  constexpr bool bf16 = sizeof(T) == 2;
  const int64_t B = c.B, H = c.H, Hkv = c.Hkv, D = c.D, L = c.L, G = H / Hkv, QH = H + Hkv;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // q: the first H heads of a [B, H + Hkv, D] buffer, as the block's rotated q and k come; the
  // caches [B, Hkv, L, D] contiguous; key_padding [B, L].
  std::vector<T> q(B * QH * D), k(B * Hkv * L * D), v(B * Hkv * L * D);
  std::vector<uint8_t> pad(B * L, 1);
  for (int64_t j = 0; j < c.pad; ++j) pad[1 * L + j] = 0;
  for (auto& x : q) x = enc<T>(1.5f * nd(rng));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t j = 0; j < L; ++j) {
        const bool hidden = j > c.slot || !pad[b * L + j];  // must never be read (v of padding neither)
        for (int64_t d = 0; d < D; ++d) {
          const int64_t i = ((b * Hkv + h) * L + j) * D + d;
          k[i] = enc<T>(hidden ? nan : nd(rng));
          v[i] = enc<T>(hidden ? nan : nd(rng));
        }
      }
  const int64_t slot = c.slot;

  DecodeAttentionArgs a;
  a.B = B, a.H = H, a.Hkv = Hkv, a.L = L, a.D = D, a.bf16 = bf16;
  a.q = q.data(), a.q_sb = QH * D, a.q_sh = D;
  a.k = k.data(), a.v = v.data();
  a.k_sb = a.v_sb = Hkv * L * D, a.k_sh = a.v_sh = L * D, a.k_sl = a.v_sl = D;
  a.key_padding = pad.data(), a.pad_sb = L;
  a.slot = &slot;
  a.chunk = c.chunk;
  const DecodeAttentionPlan plan = decode_attention_plan(a);
  std::vector<float> ws(std::max<int64_t>(1, decode_attention_workspace_floats(a, plan)), nan);
  std::vector<T> out(B * H * D, enc<T>(nan));
  const cudaError_t rc = decode_attention(a, plan, ws.data(), out.data(), nullptr);

  double max_err = 0, worst = 0;  // worst: the largest error over its allowance
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t hk = h / G;
      std::vector<double> s(L, -INFINITY), o(D, 0.0);
      double m = -INFINITY, l = 0;
      for (int64_t j = 0; j <= slot; ++j) {
        if (!pad[b * L + j]) continue;
        double dot = 0;
        for (int64_t d = 0; d < D; ++d)
          dot += double(val(q[(b * QH + h) * D + d])) * val(k[((b * Hkv + hk) * L + j) * D + d]);
        s[j] = dot / std::sqrt(double(D));
        m = std::max(m, s[j]);
      }
      for (int64_t j = 0; j <= slot; ++j) {
        if (!pad[b * L + j]) continue;
        const double p = std::exp(s[j] - m);
        l += p;
        for (int64_t d = 0; d < D; ++d) o[d] += p * val(v[((b * Hkv + hk) * L + j) * D + d]);
      }
      for (int64_t d = 0; d < D; ++d) {
        const double ref = o[d] / l, got = val(out[(b * H + h) * D + d]);
        const double err = std::isnan(got) ? INFINITY : std::abs(got - ref);
        const double allow = bf16 ? std::ldexp(std::abs(ref), -8) + 2e-5 : 2e-5;
        max_err = std::max(max_err, err);
        worst = std::max(worst, err / allow);
      }
    }
  g_max_err[bf16] = std::max(g_max_err[bf16], max_err);
  const bool ok = rc == cudaSuccess && worst <= 1.0;
  std::printf(
      "%s B%ld H%ld Hkv%ld D%3ld L%ld slot%3ld pad%3ld chunk%3ld splits%ld: max |o - ref| %.2e (%.2f of the "
      "tolerance)  %s\n",
      bf16 ? "bf16" : "fp32", (long)B, (long)H, (long)Hkv, (long)D, (long)L, (long)slot, (long)c.pad, (long)plan.chunk,
      (long)plan.splits, max_err, worst, ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}

int both(const Case& c, unsigned seed) { return run<float>(c, seed) + run<__nv_bfloat16>(c, seed + 1000); }

}  // namespace

int main() {
  int bad = 0;
  unsigned seed = 1;
  // The brief's grid: B = 2, H = 4, Hkv = 2 (GQA, G = 2) and 4 (MHA), D = 64 and 128, L = 300, the
  // slot at 0, 37 and 299, row 1 left-padded (20 columns, 130 at slot 299: whole chunks of padding),
  // the launcher's own chunking (64 columns, 5 splits) and 256 (2 splits).
  for (int64_t Hkv : {2, 4})
    for (int64_t D : {64, 128})
      for (int64_t slot : {0, 37, 299}) {
        const int64_t pad = slot == 299 ? 130 : std::min<int64_t>(20, slot);
        bad += both({2, 4, Hkv, D, 300, slot, pad, 0}, seed++);
        if (slot > 0 && Hkv == 2) bad += both({2, 4, Hkv, D, 300, slot, pad, 256}, seed++);
      }
  // One split covers the cache (L <= 256): the split kernel normalises and writes o itself.
  for (int64_t D : {64, 128}) bad += both({2, 4, 2, D, 200, 150, 20, 256}, seed++);
  // G = 3 (a CTA of 4 heads, 3 used), G = 16 (two CTAs of 8 heads per KV head), 32-column chunks.
  bad += both({2, 6, 2, 64, 300, 299, 40, 0}, seed++);
  bad += both({1, 16, 1, 128, 300, 200, 0, 0}, seed++);
  bad += both({2, 4, 2, 128, 300, 170, 33, 32}, seed++);
  std::printf("max |o - ref|: fp32 %.2e, bf16 %.2e; %s\n", g_max_err[0], g_max_err[1],
              bad ? "FAILED" : "all cases within tolerance");
  return bad ? 1 : 0;
}
