#include "linearnexus/chunked_scan.h"

#include <limits>
#include <vector>

namespace linearnexus {

ParamSpec chunk_size_spec(const std::string& default_size, double max_size, const std::string& note) {
  return {"chunk_size", ParamType::Int,
          default_size, "tokens per chunk of the training / prefill form" + (note.empty() ? "" : " " + note),
          {},           1,
          max_size};
}

ParamSpec scan_spec() {
  return {"scan",
          ParamType::String,
          "chunk",
          "training/prefill form: chunk, or the token-by-token reference (tests)",
          {"chunk", "recurrent"}};
}

namespace {

at::Tensor f32(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

// Pad dim 2 (time) of x [B, H, T, ...] with zeros up to N * n and view it as [B, H, N, n, ...].
at::Tensor chunks_of(const at::Tensor& x, int64_t n, int64_t N) {
  const int64_t pad = N * n - x.size(2);
  auto y = x;
  if (pad > 0) {
    std::vector<int64_t> p(2 * (x.dim() - 2), 0);  // constant_pad_nd pads from the last dim backwards
    p.back() = pad;
    y = at::constant_pad_nd(x, p);
  }
  std::vector<int64_t> shape{x.size(0), x.size(1), N, n};
  for (int64_t d = 3; d < x.dim(); ++d) shape.push_back(x.size(d));
  return y.reshape(shape);
}

// exp(b_i - b_j) for i >= j (i including j when `diagonal`), 0 elsewhere; b [..., n] cumulative
// log-decays (non-increasing), so every exponent formed is <= 0. -> [..., n, n]
at::Tensor pair_decay(const at::Tensor& b, bool diagonal) {
  const int64_t n = b.size(-1);
  auto keep = at::ones({n, n}, b.options().dtype(at::kBool)).tril(diagonal ? 0 : -1);
  auto diff = b.unsqueeze(-1) - b.unsqueeze(-2);  // b_i - b_j
  return diff.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity()).exp();
}

// Pairwise products with a decay per channel, for each y in ys: [..., n, n] with entries
//   sum_K x_i exp(cx_i - cy_j) y_j   for j <= i (j < i unless `diagonal`), 0 elsewhere;
// x, cx, y, cy [..., n, K]. The decay does not factor out of the sum without exp(-cy) (which
// overflows under strong decays), so the [n, n, K] product is formed; the callers' cx_i - cy_j
// are <= 0 on the kept pairs.
std::vector<at::Tensor> decayed_pairs(const at::Tensor& x, const at::Tensor& cx, const std::vector<at::Tensor>& ys,
                                      const at::Tensor& cy, bool diagonal) {
  const int64_t n = x.size(-2);
  auto drop = at::ones({n, n}, x.options().dtype(at::kBool)).tril(diagonal ? 0 : -1).logical_not().unsqueeze(-1);
  auto diff = cx.unsqueeze(-2) - cy.unsqueeze(-3);  // [..., n, n, K]: cx_i - cy_j
  auto xd = x.unsqueeze(-2) * diff.masked_fill(drop, -std::numeric_limits<float>::infinity()).exp();
  std::vector<at::Tensor> out;
  for (const auto& y : ys) out.push_back((xd * y.unsqueeze(-3)).sum(-1));
  return out;
}

// b [B, H, N, n, ...] cumulative over dim 3 -> the same sums one token earlier (0 for the first).
at::Tensor exclusive(const at::Tensor& b) {
  const int64_t n = b.size(3);
  return at::cat({at::zeros_like(b.narrow(3, 0, 1)), b.narrow(3, 0, n - 1)}, 3);
}

struct ScanDims {
  int64_t B, H, T, K, V;
};

// Every scan starts alike: the dims of q [B, H, T, K] and v [B, H, T, V]; S is the entering state
// in fp32, zeros when undefined.
ScanDims start_scan(const at::Tensor& q, const at::Tensor& v, at::Tensor& S) {
  ScanDims d{q.size(0), q.size(1), q.size(2), q.size(3), v.size(3)};
  if (!S.defined()) S = at::zeros({d.B, d.H, d.K, d.V}, q.options().dtype(at::kFloat));
  S = f32(S);
  return d;
}

// The chunked forms start alike: the dims and entering state (start_scan), n tokens per chunk in N
// chunks, and q, k, v in fp32 as [B, H, N, n, ...] (chunk() does the same to their other inputs).
struct Chunks {
  ScanDims d;
  int64_t n = 0, N = 0;
  at::Tensor q, k, v;
  at::Tensor chunk(const at::Tensor& x) const { return chunks_of(f32(x), n, N); }
};

Chunks start_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& S, int64_t chunk) {
  Chunks c;
  c.d = start_scan(q, v, S);
  if (c.d.T == 0) return c;
  c.n = std::min(chunk, c.d.T), c.N = (c.d.T + c.n - 1) / c.n;
  c.q = c.chunk(q), c.k = c.chunk(k), c.v = c.chunk(v);
  return c;
}

// The recurrent forms' outputs, one [B, H, V] per step -> [B, H, T, V] in q's dtype.
at::Tensor stack_steps(const std::vector<at::Tensor>& out, const at::Tensor& q, const ScanDims& d) {
  if (out.empty()) return at::empty({d.B, d.H, 0, d.V}, q.options());
  return at::stack(out, 2).to(q.scalar_type());
}

// The states entering the chunks of an affine recurrence over chunks, S_{i+1} = M_i S_i + R_i, with
// M [B, H, N, K, K] (or its diagonal, [B, H, N, K or 1, 1]) and R [B, H, N, K, V]; S enters chunk 0 and
// is left as the state after the last one. -> [B, H, N, K, V].
// On a GPU, and on the CPU past kLoopChunks chunks, a scan over chunks (Hillis-Steele: log2 N rounds,
// each composing every chunk's transition with the one `off` chunks before it): ~4 log2 N batched ops
// instead of 2 N small ones. A loop step is a few tiny kernels each waiting on the host; T = 16384 in
// chunks of 64 made 256 steps, forward and again in backward, and GLA's chunks of 16 made 1024. On the
// CPU (2 threads, C = 256, docs/benchmarks.md) the scan took T = 16384 from 5.1 to 2.7 s for
// gated_deltanet and from 18 to 1.2 s for gla, but its [K, K] products (log2 N per chunk) made
// T = 1024 (16 chunks) ~25% slower than the loop, hence the loop there. Every M here is a product of
// per-token transitions of norm <= 1, so the composed products stay bounded.
constexpr int64_t kLoopChunks = 32;

at::Tensor entering_states(const at::Tensor& M, const at::Tensor& R, at::Tensor& S) {
  const int64_t N = R.size(2);
  const bool diagonal = M.size(-1) == 1;
  auto apply = [&](const at::Tensor& m, const at::Tensor& x) { return diagonal ? m * x : at::matmul(m, x); };
  if (!S.is_cuda() && N <= kLoopChunks) {
    std::vector<at::Tensor> entering;
    for (int64_t i = 0; i < N; ++i) {
      entering.push_back(S);
      S = apply(M.select(2, i), S) + R.select(2, i);
    }
    return at::stack(entering, 2);
  }
  auto P = M, Q = R;  // after round r: the composition of chunks max(0, i - 2^r + 1) .. i
  for (int64_t off = 1; off < N; off *= 2) {
    auto later_P = P.narrow(2, off, N - off), earlier_P = P.narrow(2, 0, N - off);
    auto later_Q = Q.narrow(2, off, N - off), earlier_Q = Q.narrow(2, 0, N - off);
    auto next_Q = apply(later_P, earlier_Q) + later_Q;
    auto next_P = apply(later_P, earlier_P);
    P = at::cat({P.narrow(2, 0, off), next_P}, 2);
    Q = at::cat({Q.narrow(2, 0, off), next_Q}, 2);
  }
  auto after = apply(P, S.unsqueeze(2)) + Q;  // the state after each chunk: [B, H, N, K, V]
  auto entering = at::cat({S.unsqueeze(2), after.narrow(2, 0, N - 1)}, 2);
  S = after.select(2, N - 1);
  return entering;
}

}  // namespace

// q, k [B, H, T, K]; v [B, H, T, V]; g [B, H, T, K or 1]; S [B, H, K, V]. Per chunk of n tokens,
// with b the cumulative log-decay from the chunk's start (b_i = g_1 + ... + g_i) and S0 entering:
//   o_i = sum_{j <= i} (q_i * exp(b_i - b_j)) . k_j v_j  +  (q_i * exp(b_i)) S0
//   S   = exp(b_n) * S0 + sum_j (k_j * exp(b_n - b_j))^T v_j
at::Tensor decay_scan_chunked(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                              const at::Tensor& g_in, at::Tensor& S, int64_t chunk) {
  // Padding tokens have k = 0 (no input) and g = 0 (no decay): the state passes them unchanged.
  const auto ch = start_chunked(q_in, k_in, v_in, S, chunk);
  const auto [B, H, T, K, V] = ch.d;
  if (T == 0) return at::empty({B, H, 0, V}, v_in.options());
  const int64_t n = ch.n, N = ch.N;
  const auto &q = ch.q, &k = ch.k, &v = ch.v;
  auto b = ch.chunk(g_in).cumsum(3);  // [B, H, N, n, K or 1]
  // One decay per head factors out of the dot product: a matmul. A decay per key channel does not
  // (without exp(-b), which overflows under strong decays): hence GLA's small chunks.
  auto A = g_in.size(3) == 1 ? at::matmul(q, k.transpose(-1, -2)) * pair_decay(b.squeeze(-1), true)
                             : decayed_pairs(q, b, {k}, b, true)[0];  // [B, H, N, n, n]
  auto o = at::matmul(A, v);                                          // inside each chunk: [B, H, N, n, V]
  auto b_last = b.select(3, n - 1);                                   // [B, H, N, K or 1]
  auto k_end = k * (b_last.unsqueeze(3) - b).exp();                   // k_j exp(b_n - b_j)
  auto U = at::matmul(k_end.transpose(-1, -2), v);                    // each chunk's own state: [B, H, N, K, V]
  auto carry = b_last.exp().unsqueeze(-1);                            // [B, H, N, K or 1, 1]
  auto entering = entering_states(carry, U, S);                       // S_{i+1} = carry_i S_i + U_i
  o = o + at::matmul(q * b.exp(), entering);                          // from the entering states
  return o.reshape({B, H, N * n, V}).narrow(2, 0, T).to(q_in.scalar_type());
}

at::Tensor decay_scan_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& g,
                                at::Tensor& S) {
  const auto d = start_scan(q, v, S);
  // unbind, not select: select's backward would allocate a full [B, H, T, ...] gradient per step.
  auto qs = f32(q).unbind(2), ks = f32(k).unbind(2), vs = f32(v).unbind(2), gs = f32(g).unbind(2);
  std::vector<at::Tensor> out;
  for (size_t t = 0; t < qs.size(); ++t) {
    S = gs[t].exp().unsqueeze(-1) * S + ks[t].unsqueeze(-1) * vs[t].unsqueeze(-2);  // [B, H, K, V]
    out.push_back(at::matmul(qs[t].unsqueeze(-2), S).squeeze(-2));                  // [B, H, V]
  }
  return stack_steps(out, q, d);
}

// The UT transform per chunk (S0 entering, b the cumulative log-decay inside the chunk, all [n]):
//   L = strictly-lower((beta k) k^T * exp(b_i - b_j)),  Tm = (I + L)^-1        (one triangular solve)
//   u = Tm (beta v),  w = Tm (beta k * exp(b))          ("pseudo-values" and their state part)
//   v' = u - w S0;   o = (q * exp(b)) S0 + lower(q k^T * exp(b_i - b_j)) v'
//   S  = exp(b_n) S0 + (k * exp(b_n - b))^T v'
// Unrolling the recurrence inside a chunk gives exactly this: v'_i is the value token i writes once
// the earlier tokens of the chunk (and S0) have been subtracted along k_i.
at::Tensor delta_scan_chunked(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                              const at::Tensor& beta_in, const at::Tensor& g_in, at::Tensor& S, int64_t chunk) {
  // Padding tokens have beta = 0 and g = 0: they neither write nor decay.
  const auto ch = start_chunked(q_in, k_in, v_in, S, chunk);
  const auto [B, H, T, K, V] = ch.d;
  if (T == 0) return at::empty({B, H, 0, V}, v_in.options());
  const int64_t n = ch.n, N = ch.N;
  const auto &q = ch.q, &k = ch.k, &v = ch.v;
  auto beta = ch.chunk(beta_in).unsqueeze(-1);  // [B, H, N, n, 1]
  auto b = g_in.defined() ? ch.chunk(g_in).cumsum(3) : at::zeros({B, H, N, n}, q.options());
  auto kb = k * beta;
  auto kkT = at::matmul(kb, k.transpose(-1, -2));  // [B, H, N, n, n]
  auto L = kkT * pair_decay(b, false);             // strictly lower
  // (I + L)^-1 (beta v) by forward substitution; unitriangular: L's (zero) diagonal is taken as 1.
  auto rhs = at::cat({v * beta, kb * b.exp().unsqueeze(-1)}, -1);  // [B, H, N, n, V + K]
  auto uw = at::linalg_solve_triangular(L, rhs, /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
  auto u = uw.narrow(-1, 0, V), w = uw.narrow(-1, V, K);
  auto Aqk = at::matmul(q, k.transpose(-1, -2)) * pair_decay(b, true);  // [B, H, N, n, n]
  auto q_dec = q * b.exp().unsqueeze(-1);
  auto b_last = b.select(3, n - 1);  // [B, H, N]
  auto k_end = k * (b_last.unsqueeze(3) - b).exp().unsqueeze(-1);
  auto carry = b_last.exp().unsqueeze(-1).unsqueeze(-1);  // [B, H, N, 1, 1]
  // S_{i+1} = carry_i S_i + k_end_i^T (u_i - w_i S_i) = (carry_i I - k_end_i^T w_i) S_i + k_end_i^T u_i
  auto k_endT = k_end.transpose(-1, -2);                             // [B, H, N, K, n]
  auto M = carry * at::eye(K, q.options()) - at::matmul(k_endT, w);  // [B, H, N, K, K]
  auto E = entering_states(M, at::matmul(k_endT, u), S);             // [B, H, N, K, V]
  auto vp = u - at::matmul(w, E);                                    // [B, H, N, n, V]
  auto o = at::matmul(q_dec, E) + at::matmul(Aqk, vp);
  return o.reshape({B, H, N * n, V}).narrow(2, 0, T).to(q_in.scalar_type());
}

at::Tensor delta_scan_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                                const at::Tensor& g, at::Tensor& S) {
  const auto d = start_scan(q, v, S);
  auto qs = f32(q).unbind(2), ks = f32(k).unbind(2), vs = f32(v).unbind(2), bs = f32(beta).unbind(2);
  std::vector<at::Tensor> gs;
  if (g.defined()) gs = f32(g).unbind(2);
  std::vector<at::Tensor> out;
  for (size_t t = 0; t < qs.size(); ++t) {
    if (g.defined()) S = gs[t].exp().unsqueeze(-1).unsqueeze(-1) * S;
    auto kt = ks[t].unsqueeze(-1);                                      // [B, H, K, 1]
    auto err = vs[t] - at::matmul(ks[t].unsqueeze(-2), S).squeeze(-2);  // v_t - k_t S: [B, H, V]
    S = S + (bs[t].unsqueeze(-1).unsqueeze(-1) * kt) * err.unsqueeze(-2);
    out.push_back(at::matmul(qs[t].unsqueeze(-2), S).squeeze(-2));
  }
  return stack_steps(out, q, d);
}

// Per chunk (S0 entering; c the cumulative log-decay [n, K] inside the chunk, c' the same one token
// earlier), unrolling S_i = exp(g_i) S_{i-1} + b_i^T e_i + k_i^T v_i with the reads e_i = a_i S_{i-1}:
//   S_i = exp(c_i) S0 + sum_{j <= i} exp(c_i - c_j) (k_j^T v_j + b_j^T e_j)
//   e_i = (a_i exp(c'_i)) S0 + sum_{j < i} [a_i exp(c'_i - c_j) . k_j] v_j + [a_i exp(c'_i - c_j) . b_j] e_j
// so (I - Mab) e = (a exp(c')) S0 + Mak v: one unit-lower-triangular solve gives e = W S0 + U, then
//   o = (q exp(c)) S0 + Mqk v + Mqb e;   S_n = exp(c_n) S0 + (k exp(c_n - c))^T v + (b exp(c_n - c))^T e
at::Tensor gdelta_scan_chunked(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                               const at::Tensor& a_in, const at::Tensor& b_in, const at::Tensor& g_in, at::Tensor& S,
                               int64_t chunk, double min_log_decay) {
  // Padding tokens have k = b = 0 and g = 0: they neither write nor decay.
  const auto ch = start_chunked(q_in, k_in, v_in, S, chunk);
  const auto [B, H, T, K, V] = ch.d;
  if (T == 0) return at::empty({B, H, 0, V}, v_in.options());
  const int64_t n = ch.n, N = ch.N;
  const auto &q = ch.q, &k = ch.k, &v = ch.v;
  auto a = ch.chunk(a_in), b = ch.chunk(b_in);               // [B, H, N, n, K]
  auto c = ch.chunk(g_in).cumsum(3), c_prev = exclusive(c);  // [B, H, N, n, K]
  std::vector<at::Tensor> reads, outs;                       // Mak, Mab; Mqk, Mqb: [B, H, N, n, n]
  if (double(n) * -min_log_decay <= 30) {
    // Decays bounded below: exp(-c) <= e^30 inside a chunk, so the decay factors out of the pairwise
    // products and they are matmuls (the pairs above the diagonal, finite, are masked to 0).
    auto kx = (k * (-c).exp()).transpose(-1, -2), bx = (b * (-c).exp()).transpose(-1, -2);  // [B, H, N, K, n]
    auto strict = at::ones({n, n}, q.options()).tril(-1), incl = at::ones({n, n}, q.options()).tril();
    auto ax = a * c_prev.exp(), qx = q * c.exp();
    reads = {at::matmul(ax, kx) * strict, at::matmul(ax, bx) * strict};
    outs = {at::matmul(qx, kx) * incl, at::matmul(qx, bx) * incl};
  } else {
    reads = decayed_pairs(a, c_prev, {k, b}, c, false);
    outs = decayed_pairs(q, c, {k, b}, c, true);
  }
  auto rhs = at::cat({at::matmul(reads[0], v), a * c_prev.exp()}, -1);  // [B, H, N, n, V + K]
  auto uw = at::linalg_solve_triangular(-reads[1], rhs, /*upper=*/false, /*left=*/true, /*unitriangular=*/true);
  auto U = uw.narrow(-1, 0, V), W = uw.narrow(-1, V, K);
  auto o_local = at::matmul(outs[0], v);  // [B, H, N, n, V]
  auto q_dec = q * c.exp();
  auto c_last = c.select(3, n - 1);                              // [B, H, N, K]
  auto to_end = (c_last.unsqueeze(3) - c).exp();                 // exp(c_n - c_j)
  auto S_local = at::matmul((k * to_end).transpose(-1, -2), v);  // [B, H, N, K, V]
  auto b_end = (b * to_end).transpose(-1, -2);                   // [B, H, N, K, n]
  auto carry = c_last.exp();                                     // [B, H, N, K]
  // S_{i+1} = carry_i * S_i + S_local_i + b_end_i (U_i + W_i S_i)
  //         = (diag(carry_i) + b_end_i W_i) S_i + (S_local_i + b_end_i U_i)
  auto M = at::diag_embed(carry) + at::matmul(b_end, W);           // [B, H, N, K, K]
  auto E = entering_states(M, S_local + at::matmul(b_end, U), S);  // [B, H, N, K, V]
  auto e = U + at::matmul(W, E);                                   // the reads: [B, H, N, n, V]
  auto o = at::matmul(q_dec, E) + o_local + at::matmul(outs[1], e);
  return o.reshape({B, H, N * n, V}).narrow(2, 0, T).to(q_in.scalar_type());
}

at::Tensor gdelta_scan_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& g, at::Tensor& S) {
  const auto d = start_scan(q, v, S);
  auto qs = f32(q).unbind(2), ks = f32(k).unbind(2), vs = f32(v).unbind(2);
  auto as = f32(a).unbind(2), bs = f32(b).unbind(2), gs = f32(g).unbind(2);
  std::vector<at::Tensor> out;
  for (size_t t = 0; t < qs.size(); ++t) {
    auto e = at::matmul(as[t].unsqueeze(-2), S);  // a_t S_{t-1}: [B, H, 1, V]
    S = gs[t].exp().unsqueeze(-1) * S + bs[t].unsqueeze(-1) * e + ks[t].unsqueeze(-1) * vs[t].unsqueeze(-2);
    out.push_back(at::matmul(qs[t].unsqueeze(-2), S).squeeze(-2));  // [B, H, V]
  }
  return stack_steps(out, q, d);
}

}  // namespace linearnexus
