// The `rwkv7` block: RWKV-7 "Goose" (Peng et al., 2025; BlinkDL/RWKV-LM, RWKV-v7 "x070") time mixing
// + channel mixing. A linear-time block whose decoding state is one [D, D] matrix per head plus the
// last token of each token shift.
//
//   h = layernorm(x);  h_prev = h one token earlier (token shift)
//   x_i = h + (h_prev - h) * lerp_i               for i in r, w, k, v, a, g (a learned lerp per channel)
//   r, k, v = receptance(x_r), key(x_k), value(x_v)
//   log w = -exp(-softplus(-(w0 + tanh(x_w W1) W2)) - 0.5)   a decay per channel in (exp(-e^-0.5), 1)
//   a = sigmoid(a0 + x_a A1 A2)                   the in-context learning rate, per channel
//   gate = sigmoid(x_g G1) G2                     (W1 W2, A1 A2, G1 G2: low-rank "LoRA" projections)
//   kappa = l2norm(k * k_k) per head (the removal key);  k = k * (1 + (a - 1) * k_a) (the replacement key)
//   S_t = diag(w_t) S_{t-1} - (kappa_t a_t)^T (kappa_t S_{t-1}) + k_t^T v_t;   o_t = r_t S_t   per head
//   y = groupnorm_per_head(o) + (sum_D r * k * r_k) v        (the "bonus": the current token directly)
//   x = x + dropout(output(y * gate))
//   x = x + dropout(cm_value(relu(cm_key(h2 + (h2_prev - h2) * cm_lerp))^2)),   h2 = layernorm(x)
//
// The state update is the generalised delta rule of core's chunked_scan.h (read along a = -kappa,
// write along b = kappa * a): its chunked form for training and prefill, the recurrence for decoding.
//
// Differences from the reference x070 (on purpose):
//   - no value residual (v mixed with the first layer's v): the Block protocol has no channel
//     between layers. Its v0/v1/v2 parameters are absent.
//   - output and cm_value start as the project's residual projections (N(0, 0.02 / sqrt(2 L)))
//     instead of zeros, so every parameter has a gradient from step 0; the rest of the init follows
//     the reference (layer-dependent lerps and decay speeds, zero W1/A1/G1, orthogonal W2/A2/G2).
//   - no ln0 on the embeddings (the model's embedding is shared by all blocks).
// RWKV-7's token shift is a static lerp per channel (RWKV-6's data-dependent lerp was dropped in v7).
#include <linearnexus/chunked_scan.h>
#include <linearnexus/error.h>
#include <linearnexus/layers.h>
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

#include <cmath>

namespace linearnexus {
namespace {

// log w = -exp(w') with w' = -softplus(.) - 0.5 <= -0.5: every decay's log is >= -e^-0.5 (lets the
// chunked form use matmuls, chunked_scan.h).
const double kMinLogDecay = -std::exp(-0.5);

// h [B, T, C] one token later: row t holds h_{t-1}, row 0 the last token of the previous call
// (`carry`, zeros when null), which is then replaced by h's last token (for the next call).
at::Tensor token_shift(const at::Tensor& h, at::Tensor* carry) {
  const int64_t T = h.size(1);
  auto first = carry ? carry->to(h.scalar_type()).unsqueeze(1) : at::zeros_like(h.narrow(1, 0, 1));
  auto prev = at::cat({first, h.narrow(1, 0, T - 1)}, 1);
  if (carry) *carry = h.select(1, T - 1).detach().to(carry->scalar_type());
  return prev;
}

// The reference's LoRA widths: max(32, round(factor * C^power / 32) * 32), unless configured (> 0).
int64_t lora_rank(int64_t configured, int64_t C, double factor, double power) {
  if (configured > 0) return configured;
  return std::max<int64_t>(32, std::llround(factor * std::pow(double(C), power) / 32) * 32);
}

class RWKV7Block : public Block {
 public:
  RWKV7Block(const ModelDims& d, const Params& p, int64_t layer)
      : C_(d.hidden_size),
        H_(p.get_int("n_head")),
        Q_(p.get_int("chunk_size")),
        dropout_(d.dropout),
        recurrent_(p.get_string("scan") == "recurrent") {
    if (C_ % H_ != 0)
      throw Error("model.blocks.rwkv7.n_head (" + std::to_string(H_) + ") must divide hidden_size (" +
                  std::to_string(C_) + ")");
    D_ = C_ / H_;
    const int64_t Rw = lora_rank(p.get_int("decay_lora"), C_, 1.8, 0.5),
                  Ra = lora_rank(p.get_int("iclr_lora"), C_, 1.8, 0.5),
                  Rg = lora_rank(p.get_int("gate_lora"), C_, 0.6, 0.8);
    const int64_t F = p.get_int("mlp_hidden") > 0 ? p.get_int("mlp_hidden") : 4 * C_;
    auto linear = [&](const char* name, int64_t in, int64_t out) {
      return register_module(name, torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(false)));
    };
    ln1_ = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C_})));
    tm_lerp_ = register_parameter("tm_lerp", torch::empty({6, C_}));  // rows: r, w, k, v, a, g
    receptance_ = linear("receptance", C_, C_);
    key_ = linear("key", C_, C_);
    value_ = linear("value", C_, C_);
    w0_ = register_parameter("w0", torch::empty({C_}));
    w1_ = register_parameter("w1", torch::zeros({C_, Rw}));
    w2_ = register_parameter("w2", torch::empty({Rw, C_}));
    a0_ = register_parameter("a0", torch::zeros({C_}));
    a1_ = register_parameter("a1", torch::zeros({C_, Ra}));
    a2_ = register_parameter("a2", torch::empty({Ra, C_}));
    g1_ = register_parameter("g1", torch::zeros({C_, Rg}));
    g2_ = register_parameter("g2", torch::empty({Rg, C_}));
    k_k_ = register_parameter("k_k", torch::full({C_}, 0.85));
    k_a_ = register_parameter("k_a", torch::ones({C_}));
    r_k_ = register_parameter("r_k", torch::zeros({H_, D_}));
    ln_x_ = register_module("ln_x", torch::nn::GroupNorm(torch::nn::GroupNormOptions(H_, C_).eps(64e-5)));
    output_ = linear("output", C_, C_);
    ln2_ = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({C_})));
    cm_lerp_ = register_parameter("cm_lerp", torch::empty({C_}));
    cm_key_ = linear("cm_key", C_, F);
    cm_value_ = linear("cm_value", F, C_);

    // The reference's init: lerps and decay speeds spread over the channels, by depth.
    torch::NoGradGuard g;
    const double L = double(d.n_layer), depth = L > 1 ? double(layer) / (L - 1) : 0.0, shallow = 1.0 - layer / L;
    auto ddd = torch::arange(C_, torch::kFloat) / double(C_);
    tm_lerp_.copy_(at::stack({1 - ddd.pow(0.2 * shallow), 1 - ddd.pow(0.9 * shallow),
                              1 - (ddd.pow(0.9 * shallow) + 0.4 * depth), 1 - (ddd.pow(0.4 * shallow) + 0.6 * depth),
                              1 - ddd.pow(0.9 * shallow), 1 - ddd.pow(0.2 * shallow)}));
    cm_lerp_.copy_(1 - ddd.pow(std::pow(shallow, 4)));
    auto speed = torch::arange(C_, torch::kFloat) / double(std::max<int64_t>(C_ - 1, 1));
    w0_.copy_(-7 + 5 * speed.pow(0.85 + std::sqrt(depth)) + 0.5);  // + 0.5: the softplus's offset
    for (auto* m : {&w2_, &a2_, &g2_}) torch::nn::init::orthogonal_(*m, 0.1);
    const double s = 1 / std::sqrt(double(C_));
    receptance_->weight.uniform_(-0.5 * s, 0.5 * s);
    key_->weight.uniform_(-0.05 * s, 0.05 * s);
    value_->weight.uniform_(-0.5 * s, 0.5 * s);
    cm_key_->weight.uniform_(-0.5 * s, 0.5 * s);
    init_residual_projection(output_, d.n_layer);
    init_residual_projection(cm_value_, d.n_layer);
    ln_x_->weight.fill_(std::pow((1.0 + layer) / L, 0.7));
  }

  BlockOutput forward(const at::Tensor& x_in, LayerState state, const ForwardContext& ctx) override {
    // x: [B, T, C] -> [B, T, C]
    const int64_t B = x_in.size(0), T = x_in.size(1);
    auto heads = [&](const at::Tensor& t) { return t.reshape({B, T, H_, D_}).transpose(1, 2); };  // [B, H, T, D]
    // Left padding: zero the normed inputs there (the first real token shifts in zeros, as at the
    // start) and the decay, keys and learning rate (the token neither decays, reads nor writes).
    // From the context's helper, not by narrowing key_padding at ctx.start: in a captured decode
    // step start is stale (undefined there: the new token is never padding).
    auto keep = ctx.new_token_keep(T, x_in.device(), at::kFloat);  // [B, T, 1] or undefined
    const bool cached = !state.empty() && ctx.mode != Mode::Train;
    auto masked = [&](const at::Tensor& t) { return keep.defined() ? t * keep.to(t.scalar_type()) : t; };

    // Time mixing.
    auto h = masked(ln1_(x_in));  // [B, T, C]
    auto xx = token_shift(h, cached ? &state.tensors.at("shift_tm") : nullptr) - h;
    auto mixed = h.unsqueeze(2) + xx.unsqueeze(2) * tm_lerp_;  // [B, T, 6, C]
    auto in = [&](int64_t i) { return mixed.select(2, i); };
    auto r = receptance_(in(0)), k = key_(in(2)), v = value_(in(3));  // [B, T, C]
    auto w = -at::softplus(-(w0_ + at::matmul(at::tanh(at::matmul(in(1), w1_)), w2_))) - 0.5;
    auto log_w = masked(-w.to(at::kFloat).exp());  // (-e^-0.5, 0]: [B, T, C]
    auto iclr = masked(at::sigmoid(a0_ + at::matmul(at::matmul(in(4), a1_), a2_)).to(at::kFloat));
    auto gate = at::matmul(at::sigmoid(at::matmul(in(5), g1_)), g2_);
    auto kappa = heads(k * k_k_).to(at::kFloat);
    kappa = kappa * at::rsqrt(kappa.pow(2).sum(-1, true) + 1e-12);  // l2norm per head
    k = masked(k * (1 + (iclr - 1) * k_a_));
    auto iclr_h = heads(iclr);
    at::Tensor S = cached ? state.tensors.at("S") : at::Tensor();  // [B, H, D, D] fp32
    auto o = ctx.mode == Mode::Decode || recurrent_
                 ? gdelta_scan_recurrent(heads(r), heads(k), heads(v), -kappa, kappa * iclr_h, heads(log_w), S)
                 : gdelta_scan_chunked(heads(r), heads(k), heads(v), -kappa, kappa * iclr_h, heads(log_w), S, Q_,
                                       kMinLogDecay);
    if (cached) state.tensors["S"] = S.detach();
    auto y = ln_x_(o.transpose(1, 2).reshape({B * T, C_})).reshape({B, T, C_});  // group norm per head
    auto bonus = (r.view({B, T, H_, D_}) * k.view({B, T, H_, D_}) * r_k_).sum(-1, true) * v.view({B, T, H_, D_});
    auto x = x_in + at::dropout(output_((y + bonus.reshape({B, T, C_})) * gate), dropout_, is_training());

    // Channel mixing.
    auto h2 = masked(ln2_(x));
    auto xk = h2 + (token_shift(h2, cached ? &state.tensors.at("shift_cm") : nullptr) - h2) * cm_lerp_;
    return {x + at::dropout(cm_value_(at::relu(cm_key_(xk)).square()), dropout_, is_training()), std::move(state)};
  }

  // Decoding reads padding from the context only, and its state (the token shifts' last rows and S)
  // is fixed-size; new tensors returned in its place are copied back by the model: capturable.
  bool graph_safe_decode() const override { return true; }

  LayerState init_state(int64_t B, int64_t, const at::TensorOptions& o) const override {
    LayerState s;  // fixed-size whatever max_len is
    s.tensors["shift_tm"] = at::zeros({B, C_}, o);
    s.tensors["shift_cm"] = at::zeros({B, C_}, o);
    s.tensors["S"] = at::zeros({B, H_, D_, D_}, o.dtype(at::kFloat));
    return s;
  }

  // The lerps, decay and learning-rate biases and the key / bonus gains are element-wise dynamics
  // (`ssm_dynamics`: no weight decay); the low-rank LoRA factors are `other` (never orthogonalised
  // by Muon, weight-decayed as 2-D tensors).
  std::map<std::string, ParamRole> parameter_roles() const override {
    std::map<std::string, ParamRole> roles;
    for (const char* n : {"ln1", "ln2", "ln_x"}) {
      roles[std::string(n) + ".weight"] = ParamRole::Norm;
      roles[std::string(n) + ".bias"] = ParamRole::Bias;
    }
    for (const char* n : {"receptance", "key", "value", "output", "cm_key", "cm_value"})
      roles[std::string(n) + ".weight"] = ParamRole::Matrix;
    for (const char* n : {"tm_lerp", "cm_lerp", "w0", "a0", "k_k", "k_a", "r_k"}) roles[n] = ParamRole::SsmDynamics;
    for (const char* n : {"w1", "w2", "a1", "a2", "g1", "g2"}) roles[n] = ParamRole::Other;
    return roles;
  }

 private:
  int64_t C_, H_, Q_, D_ = 0;
  double dropout_;
  bool recurrent_;
  torch::nn::LayerNorm ln1_{nullptr}, ln2_{nullptr};
  torch::nn::GroupNorm ln_x_{nullptr};
  torch::nn::Linear receptance_{nullptr}, key_{nullptr}, value_{nullptr}, output_{nullptr}, cm_key_{nullptr},
      cm_value_{nullptr};
  at::Tensor tm_lerp_, w0_, w1_, w2_, a0_, a1_, a2_, g1_, g2_, k_k_, k_a_, r_k_, cm_lerp_;
};

}  // namespace

void register_rwkv7(Registry& r) {
  r.add_block(
      "rwkv7",
      "RWKV-7 Goose: generalised delta rule with a decay per channel (time mixing) + squared-ReLU channel mixing",
      {
          {"n_head",
           ParamType::Int,
           "4",
           "heads; head size = hidden_size / n_head (the state is [D, D] per head; RWKV-7 uses 64)",
           {},
           1},
          chunk_size_spec("32", 128, "(<= 49: matmuls; larger: the pairwise chunk^2 * D form)"),
          {"decay_lora",
           ParamType::Int,
           "0",
           "rank of the decay's low-rank projection (0 = max(32, 1.8 sqrt(C)) rounded to 32)",
           {},
           0},
          {"iclr_lora",
           ParamType::Int,
           "0",
           "rank of the in-context learning rate's projection (0 = as decay_lora)",
           {},
           0},
          {"gate_lora",
           ParamType::Int,
           "0",
           "rank of the output gate's projection (0 = max(32, 0.6 C^0.8) rounded to 32)",
           {},
           0},
          {"mlp_hidden", ParamType::Int, "0", "channel-mixing width (0 = 4 C)", {}, 0},
          scan_spec(),
      },
      [](const ModelDims& d, const Params& p, int64_t layer) { return std::make_shared<RWKV7Block>(d, p, layer); });
}

}  // namespace linearnexus

LINEARNEXUS_PLUGIN("rwkv7", "1.0.0",
                   "RWKV-7 Goose block (generalised delta rule; chunked training, recurrent decoding)",
                   linearnexus::register_rwkv7)
