// Building blocks shared by block plugins (see layers.h): RMSNorm and the model's Norm, the MLP, the residual MLP tail,
// rotary embeddings, causal depthwise convolution and the standard initialisation.
#include "linearnexus/layers.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "linearnexus/compat.h"
#include "linearnexus/error.h"
#ifdef LINEARNEXUS_CORE_CUDA
#include <ATen/core/grad_mode.h>

#include "cuda/fused_layers_cuda.h"
#include "cuda/gelu_mlp_cuda.h"
#include "cuda/skinny_gemm_cuda.h"
#endif

namespace linearnexus {

#ifdef LINEARNEXUS_CORE_CUDA
namespace {
// The dtype a CUDA kernel writes for the next matmul: autocast's when it is on, else x's (what the
// ops it replaces give).
at::ScalarType compute_dtype(const at::Tensor& x) {
  const at::ScalarType autocast = compat::cuda_autocast_dtype();
  return autocast == at::ScalarType::Undefined ? x.scalar_type() : autocast;
}

// Whether the MLP runs as decoding's skinny matmuls (cuda/skinny_gemm.cu): x [B, T, C] of <= 16 rows,
// no gradient, bf16 weights (MLP::forward_add).
bool skinny_mlp(const MLP& mlp, const at::Tensor& x) {
  return cuda::skinny_linear_applies(x, mlp.up->weight, mlp.up->bias, at::Tensor());
}
}  // namespace
#endif

at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const at::Tensor& residual) {
  // x: [..., in], weight [out, in] -> [..., out]
#ifdef LINEARNEXUS_CORE_CUDA
  if (cuda::skinny_linear_applies(x, weight, bias, residual)) return cuda::skinny_linear(x, weight, bias, residual);
#endif
  auto y = at::linear(x, weight, bias);  // what torch::nn::Linear's forward runs
  return residual.defined() ? residual + y : y;
}

at::Tensor linear_forward(const torch::nn::Linear& layer, const at::Tensor& x, const at::Tensor& residual) {
  return linear_forward(x, layer->weight, layer->bias, residual);
}

bool decode_fusion_enabled() {
  const char* e = std::getenv("LINEARNEXUS_DECODE_FUSION");
  return e && std::strcmp(e, "1") == 0;
}

at::Tensor norm_linear_fused(const Norm& norm, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                             bool gelu) {
  // x: [..., C] -> [..., out] or undefined
#ifdef LINEARNEXUS_CORE_CUDA
  if (decode_fusion_enabled() && x.is_cuda() && !at::GradMode::is_enabled() &&
      cuda::skinny_norm_linear_applies(x, norm.weight, norm.bias, weight, bias, at::Tensor()))
    return cuda::skinny_norm_linear(x, norm.weight, norm.bias, norm.eps, /*layer_norm=*/norm.bias.defined(), weight,
                                    bias, at::Tensor(), gelu);
#else
  (void)norm, (void)x, (void)weight, (void)bias, (void)gelu;
#endif
  return {};
}

std::pair<at::Tensor, at::Tensor> norm_greedy_head(const Norm& norm, const at::Tensor& x, const at::Tensor& weight,
                                                   int64_t V, const at::Tensor& workspace) {
  // x: [R, C] -> {[R], [R]} or {}
#ifdef LINEARNEXUS_CORE_CUDA
  if (workspace.defined() && decode_fusion_enabled() && x.is_cuda() && !at::GradMode::is_enabled() &&
      cuda::skinny_norm_linear_applies(x, norm.weight, norm.bias, weight, at::Tensor(), at::Tensor()))
    return cuda::skinny_norm_greedy_head(x, norm.weight, norm.bias, norm.eps, /*layer_norm=*/norm.bias.defined(),
                                         weight, V, workspace);
#else
  (void)norm, (void)x, (void)weight, (void)V, (void)workspace;
#endif
  return {};
}

at::Tensor greedy_head_workspace(int64_t V, const at::Device& device) {
#ifdef LINEARNEXUS_CORE_CUDA
  if (device.is_cuda())
    return at::zeros({cuda::greedy_workspace_bytes(V)}, at::TensorOptions().dtype(at::kByte).device(device));
#else
  (void)V, (void)device;
#endif
  return {};
}

std::pair<at::Tensor, at::Tensor> norm_linear_forward(Norm& norm, const at::Tensor& x, const at::Tensor& weight,
                                                      const at::Tensor& bias) {
  // x: [..., C] -> {x, [..., out]}
  at::Tensor y = norm_linear_fused(norm, x, weight, bias);
  if (y.defined()) return {x, y};
  auto normed = norm.forward_residual(x);
  return {normed.first, linear_forward(normed.second, weight, bias)};
}

RMSNorm::RMSNorm(int64_t dim, double eps_) : eps(eps_) { weight = register_parameter("weight", torch::ones({dim})); }

at::Tensor RMSNorm::forward(const at::Tensor& x) {
  // x: [..., C]. Normalise in fp32 whatever the compute dtype, for stability (the residual stream
  // is fp32 anyway: under bf16 autocast only matmul outputs are bf16).
#ifdef LINEARNEXUS_CORE_CUDA
  // On CUDA one kernel each way (cuda/rms_norm.cu), the output already in autocast's dtype when it
  // is on (the next matmul's input), else in x's.
  if (cuda::fused_applies(x) && weight.scalar_type() == at::kFloat)
    return cuda::rms_norm(x, weight, eps, compute_dtype(x));
#endif
  return compat::rms_norm(x.to(at::kFloat), weight.to(at::kFloat), eps).to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> RMSNorm::forward_residual(const at::Tensor& x) {
#ifdef LINEARNEXUS_CORE_CUDA
  // One autograd node returning x itself beside the norm (cuda/residual_rms_norm.cu's backward): the
  // add<float> autograd would run over the stream to sum x's two gradients is folded into it.
  // Without autograd (decoding, checkpointed forwards) there is nothing to fold: forward().
  if (at::GradMode::is_enabled() && cuda::fused_applies(x) && weight.scalar_type() == at::kFloat) {
    auto xn = cuda::rms_norm_residual(x, weight, eps, compute_dtype(x));
    return {xn[0], xn[1]};
  }
#endif
  return {x, forward(x)};
}

Norm::Norm(int64_t dim, const ModelDims& dims) : RMSNorm(dim, dims.norm_eps) {
  if (dims.norm == NormKind::LayerNorm) bias = register_parameter("bias", torch::zeros({dim}));
}

at::Tensor Norm::forward(const at::Tensor& x) {
  // x: [..., C]
  if (!bias.defined()) return RMSNorm::forward(x);
  return at::layer_norm(x.to(at::kFloat), {weight.size(0)}, weight.to(at::kFloat), bias.to(at::kFloat), eps)
      .to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> Norm::forward_residual(const at::Tensor& x) {
  if (!bias.defined()) return RMSNorm::forward_residual(x);
  return {x, forward(x)};
}

void init_linear(torch::nn::Linear& layer, double std) {
  torch::NoGradGuard g;
  layer->weight.normal_(0.0, std);
  if (layer->bias.defined()) layer->bias.zero_();
}

void init_residual_projection(torch::nn::Linear& layer, int64_t n_layer) {
  init_linear(layer, 0.02 / std::sqrt(2.0 * static_cast<double>(n_layer)));
}

MLP::MLP(int64_t dim, const std::string& kind_, int64_t hidden, int64_t n_layer, bool bias) : kind(kind_) {
  if (kind != "swiglu" && kind != "gelu") throw Error("mlp must be swiglu or gelu (got '" + kind + "')");
  if (hidden <= 0) hidden = kind == "gelu" ? 4 * dim : ((8 * dim / 3 + 63) / 64) * 64;
  up = register_module("up", torch::nn::Linear(torch::nn::LinearOptions(dim, hidden).bias(bias)));
  if (kind == "swiglu")
    gate = register_module("gate", torch::nn::Linear(torch::nn::LinearOptions(dim, hidden).bias(bias)));
  down = register_module("down", torch::nn::Linear(torch::nn::LinearOptions(hidden, dim).bias(bias)));
  init_linear(up);
  if (gate) init_linear(gate);
  init_residual_projection(down, n_layer);
}

at::Tensor MLP::forward(const at::Tensor& x) {
  // x: [B, T, C] -> [B, T, C]
#ifdef LINEARNEXUS_CORE_CUDA
  if (skinny_mlp(*this, x)) return forward_add(x, at::Tensor());
#endif
  if (kind == "swiglu") {
    auto g = gate(x), u = up(x);  // [B, T, hidden]
#ifdef LINEARNEXUS_CORE_CUDA
    if (cuda::fused_applies(g) && g.scalar_type() == u.scalar_type())
      return down(cuda::swiglu(g, u));  // cuda/swiglu.cu
#endif
    return down(at::silu(g) * u);
  }
#ifdef LINEARNEXUS_CORE_CUDA
  // On CUDA GELU runs in cuBLASLt's matmul epilogues (cuda/gelu_mlp_cuda.cpp), the weights cast to
  // the compute dtype here as autocast casts them for a Linear (their gradients come back in fp32).
  if (!up->bias.defined() && cuda::fused_applies(x)) {
    const at::ScalarType dtype = compute_dtype(x);
    if (dtype == at::kBFloat16 || dtype == at::kFloat)
      return cuda::gelu_mlp(x.to(dtype), up->weight.to(dtype), down->weight.to(dtype));
  }
#endif
  return down(at::gelu(up(x), "tanh"));
}

at::Tensor MLP::forward_add(const at::Tensor& x, const at::Tensor& residual) {
  // x, residual: [B, T, C] -> [B, T, C]
#ifdef LINEARNEXUS_CORE_CUDA
  // Decoding: every projection one skinny-matmul kernel (cuda/skinny_gemm.cu), GELU in up's
  // epilogue and the residual add in down's (two kernels for a GELU MLP and its add, not four).
  if (skinny_mlp(*this, x)) {
    at::Tensor hidden;  // [B, T, hidden] bf16
    if (kind == "swiglu") {
      auto g = linear_forward(gate, x), u = linear_forward(up, x);
      hidden = cuda::fused_applies(g) && g.scalar_type() == u.scalar_type() ? cuda::swiglu(g, u) : at::silu(g) * u;
    } else {
      hidden = cuda::skinny_linear(x, up->weight, up->bias, at::Tensor(), /*gelu=*/true);
    }
    return linear_forward(down, hidden, residual);
  }
#endif
  return residual.defined() ? residual + forward(x) : forward(x);
}

Schema mlp_schema(const std::string& kind_note) {
  return {
      {"mlp", ParamType::String, "swiglu", "MLP kind" + (kind_note.empty() ? "" : " " + kind_note), {"swiglu", "gelu"}},
      {"mlp_hidden", ParamType::Int, "0", "MLP width (0 = 8/3 C for swiglu, 4 C for gelu)", {}, 0}};
}

ResidualMLP::ResidualMLP(torch::nn::Module& block, const ModelDims& dims, const std::string& mlp_kind,
                         int64_t mlp_hidden, bool mlp_bias)
    : ln2_(block.register_module("ln2", std::make_shared<Norm>(dims.hidden_size, dims))),
      mlp_(block.register_module(
          "mlp", std::make_shared<MLP>(dims.hidden_size, mlp_kind, mlp_hidden, dims.n_layer, mlp_bias))),
      dropout_(dims.dropout) {}

at::Tensor ResidualMLP::forward(const at::Tensor& x, const at::Tensor& y, bool training) const {
  // x, y: [B, T, C] -> [B, T, C]
  const bool drop = training && dropout_ > 0;
#ifdef LINEARNEXUS_CORE_CUDA
  // On CUDA the add and ln2 (an RMSNorm) are one kernel each way (cuda/residual_rms_norm.cu), h in
  // x's dtype and ln2(h) in autocast's dtype or h's, as the ops below give them; the second add
  // (fp32 stream + bf16 MLP output) is a vectorised kernel instead of ATen's dynamic-casting one.
  if (!drop && !ln2_->bias.defined() && ln2_->weight.scalar_type() == at::kFloat && cuda::fused_applies(x) &&
      cuda::fused_applies(y) && x.sizes() == y.sizes() && x.device() == y.device() &&
      at::promote_types(x.scalar_type(), y.scalar_type()) == x.scalar_type()) {
    auto hn = cuda::residual_rms_norm(x, y, ln2_->weight, ln2_->eps, compute_dtype(x));  // {h, ln2(h)}
    if (skinny_mlp(*mlp_, hn[1])) return mlp_->forward_add(hn[1], hn[0]);  // decoding: the add in down's kernel
    return cuda::residual_add(hn[0], mlp_->forward(hn[1]));                // cuda/residual_add.cu
  }
#endif
  auto h = x + (drop ? at::dropout(y, dropout_, true) : y);
  return mlp_->forward_add(ln2_->forward(h), h);  // h + mlp(ln2(h))
}

bool ResidualMLP::forward_sum_fused(const at::Tensor& x) const {
#ifdef LINEARNEXUS_CORE_CUDA
  return decode_fusion_enabled() && x.is_cuda() && !at::GradMode::is_enabled() &&
         cuda::skinny_norm_linear_applies(x, ln2_->weight, ln2_->bias, mlp_->up->weight, mlp_->up->bias, at::Tensor());
#else
  (void)x;
  return false;
#endif
}

at::Tensor ResidualMLP::forward_sum(const at::Tensor& h) const {
  // h: [B, T, C] -> [B, T, C]
  MLP& mlp = *mlp_;
  if (mlp.kind == "gelu") {
    // ln2 in up's prologue and GELU in its epilogue, the residual add in down's: two kernels.
    at::Tensor hidden = norm_linear_fused(*ln2_, h, mlp.up->weight, mlp.up->bias, /*gelu=*/true);
    if (hidden.defined()) return linear_forward(mlp.down, hidden, h);
  } else {
    // SwiGLU: ln2 recomputed in gate's and up's prologues (a launch costs more than 16 x C values).
    at::Tensor g = norm_linear_fused(*ln2_, h, mlp.gate->weight, mlp.gate->bias);
    at::Tensor u = g.defined() ? norm_linear_fused(*ln2_, h, mlp.up->weight, mlp.up->bias) : at::Tensor();
#ifdef LINEARNEXUS_CORE_CUDA
    if (u.defined()) return linear_forward(mlp.down, cuda::swiglu(g, u), h);
#endif
  }
  return mlp.forward_add(ln2_->forward(h), h);  // h + mlp(ln2(h))
}

std::map<std::string, ParamRole> ResidualMLP::parameter_roles() const {
  std::map<std::string, ParamRole> roles;
  declare_roles(roles, *ln2_, "ln2.", ParamRole::Norm);
  for (const auto& kv : mlp_->named_parameters())
    roles["mlp." + kv.key()] = kv.value().dim() == 1 ? ParamRole::Bias : ParamRole::Matrix;
  return roles;
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& positions, double base) {
  // x: [B, H, T, D]; positions: [B, T] or [1, T]. Angles, cos and sin in fp32 so long positions
  // stay exact; the rotation itself in x's dtype (bf16 under autocast: upcasting q and k to fp32
  // and back cost more memory traffic than the attention kernel itself).
  const int64_t D = x.size(-1);
  TORCH_CHECK(D % 2 == 0, "rotary dimension must be even, got ", D);
  auto opts = x.options().dtype(at::kFloat);
  auto inv_freq = at::pow(base, -at::arange(0, D / 2, opts) * (2.0 / static_cast<double>(D)));  // [D/2]
  auto ang = positions.to(at::kFloat).unsqueeze(-1) * inv_freq;                                 // [B, T, D/2]
  auto cos = ang.cos().unsqueeze(1).to(x.scalar_type()),
       sin = ang.sin().unsqueeze(1).to(x.scalar_type());  // [B, 1, T, D/2]
  auto x1 = x.narrow(-1, 0, D / 2), x2 = x.narrow(-1, D / 2, D / 2);
  return at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

HeadSplit split_heads(const at::Tensor& qkv, const at::Tensor& positions, int64_t H, int64_t Hkv, int64_t D, bool rope,
                      double base) {
  // qkv: [B, T, (H + 2 Hkv) D]
#ifdef LINEARNEXUS_CORE_CUDA
  // On CUDA one kernel each way (cuda/rope.cu): the split, the rotation and the head-major copy.
  if (cuda::fused_applies(qkv) && D % 2 == 0) {
    auto qkv_heads = cuda::qkv_rope(qkv, positions, H, Hkv, D, rope, base);
    return {qkv_heads[0], qkv_heads[1], qkv_heads[2]};
  }
#endif
  const int64_t B = qkv.size(0), T = qkv.size(1);
  auto q = qkv.narrow(-1, 0, H * D).view({B, T, H, D}).transpose(1, 2);          // [B, H, T, D]
  auto k = qkv.narrow(-1, H * D, Hkv * D).view({B, T, Hkv, D}).transpose(1, 2);  // [B, Hkv, T, D]
  auto v = qkv.narrow(-1, (H + Hkv) * D, Hkv * D).view({B, T, Hkv, D}).transpose(1, 2);
  if (rope) {
    q = apply_rope(q, positions, base);
    k = apply_rope(k, positions, base);
  }
  return {q, k, v};
}

at::Tensor rope_matrix(const at::Tensor& positions, int64_t D, double base, at::ScalarType dtype) {
  // positions: [B, 1] -> [B, D, D]; with h = D/2, R = [[diag(cos), diag(sin)], [-diag(sin), diag(cos)]]
  // so that (x @ R)[i] = x[i] cos - x[i+h] sin and (x @ R)[i+h] = x[i+h] cos + x[i] sin (apply_rope).
  TORCH_CHECK(D % 2 == 0, "rotary dimension must be even, got ", D);
  auto opts = positions.options().dtype(at::kFloat);
  auto inv_freq = at::pow(base, -at::arange(0, D / 2, opts) * (2.0 / static_cast<double>(D)));  // [D/2]
  auto ang = positions.to(at::kFloat).reshape({-1, 1}) * inv_freq;                              // [B, D/2]
  auto c = at::diag_embed(ang.cos()), s = at::diag_embed(ang.sin());                            // [B, D/2, D/2]
  return at::cat({at::cat({c, s}, -1), at::cat({-s, c}, -1)}, -2).to(dtype);
}

at::Tensor causal_depthwise_conv1d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                   const at::Tensor& history, at::Tensor* new_history) {
  // x: [B, T, C]; weight: [C, K]; history: [B, C, K-1]
  const int64_t K = weight.size(1);
  auto xt = x.transpose(1, 2);  // [B, C, T]
  xt = history.defined() ? at::cat({history.to(xt.scalar_type()), xt}, -1) : at::constant_pad_nd(xt, {K - 1, 0});
  auto y = at::conv1d(xt, weight.unsqueeze(1), bias, at::IntArrayRef{1}, at::IntArrayRef{0}, at::IntArrayRef{1},
                      weight.size(0));  // [B, C, T]
  if (new_history) *new_history = xt.narrow(-1, xt.size(-1) - (K - 1), K - 1).contiguous();
  return y.transpose(1, 2);
}

}  // namespace linearnexus
