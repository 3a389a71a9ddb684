// The torch side of the CUDA selective scan (declared in selective_scan_gpu.h): dtype and layout
// checks, the autograd node, and the calls into selective_scan.cu's launchers. Compiled only where
// LibTorch has CUDA; elsewhere cuda_stubs.cpp stands in (cuda_scan_applies() is false there).
#include "selective_scan_gpu.h"

#include <linearnexus/error.h>

#include <torch/autograd.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include <linearnexus/cuda_glue.h>
#include "selective_scan_cuda.h"

namespace linearnexus {
namespace mamba {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The tensor in the kernels' layout (kernel_rows) and its row stride.
std::pair<at::Tensor, int64_t> rows(const at::Tensor& x) {
  if (kernel_rows(x)) return {x, x.stride(1)};
  auto c = x.contiguous();
  return {c, c.size(2)};
}

const float* f32(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }
float* f32_out(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

// The kernel's view of the operands (saved tensors keep them alive). Takes u, dt, z, Bm, Cm in u's
// dtype and the rest in fp32 (as the caller below casts them).
cuda::ScanArgs args_of(const at::Tensor& u, int64_t u_row, const at::Tensor& dt, int64_t dt_row, const at::Tensor& bias,
                       bool softplus, const at::Tensor& A, const at::Tensor& Bm, int64_t B_row, const at::Tensor& Cm,
                       int64_t C_row, const at::Tensor& Dskip, const at::Tensor& z, int64_t z_row,
                       const at::Tensor& s0) {
  cuda::ScanArgs a;
  a.B = u.size(0), a.T = u.size(1), a.D = u.size(2), a.N = A.size(1);
  a.dtype = u.scalar_type() == at::kBFloat16 ? cuda::DType::BF16 : cuda::DType::F32;
  a.u = u.data_ptr(), a.u_row = u_row;
  a.dt = dt.data_ptr(), a.dt_row = dt_row;
  a.dt_bias = f32(bias), a.softplus = softplus;
  a.A = f32(A);
  a.Bm = Bm.data_ptr(), a.B_row = B_row;
  a.Cm = Cm.data_ptr(), a.C_row = C_row;
  a.Dskip = f32(Dskip);
  a.z = z.defined() ? z.data_ptr() : nullptr, a.z_row = z_row;
  a.s0 = f32(s0);
  return a;
}

// The inputs, cast and laid out for the kernels.
struct Operands {
  at::Tensor u, dt, bias, A, Bm, Cm, Dskip, z, s0;
  int64_t u_row = 0, dt_row = 0, B_row = 0, C_row = 0, z_row = 0;
  bool softplus = false;
  cuda::ScanArgs args() const {
    return args_of(u, u_row, dt, dt_row, bias, softplus, A, Bm, B_row, Cm, C_row, Dskip, z, z_row, s0);
  }
};

// Forward on prepared operands: {out [B, T, D], state [B, D, N]}, and the kept chunk states into
// *kept unless it is null (no backward will come: prefill, evaluation).
std::pair<at::Tensor, at::Tensor> run_forward(const Operands& o, at::Tensor* kept) {
  const auto a = o.args();
  auto out = at::empty({a.B, a.T, a.D}, o.u.options());
  auto state = at::empty({a.B, a.D, a.N}, o.u.options().dtype(at::kFloat));
  if (kept) *kept = at::empty({a.B, cuda::kept_chunks(a.T), a.D, a.N}, state.options());
  check_cuda(cuda::scan_forward(a, out.data_ptr(), state.data_ptr<float>(), kept ? kept->data_ptr<float>() : nullptr,
                                at::cuda::getCurrentCUDAStream()),
             "selective scan forward");
  return {out, state};
}

// Absent optional operands travel through the autograd node as empty tensors (torch 2.x's node
// records every input's device, which an undefined tensor has not).
bool present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

Operands prepare(const at::Tensor& u_in, const at::Tensor& dt, const at::Tensor& bias, bool softplus,
                 const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& Dskip,
                 const at::Tensor& z, const at::Tensor& s0) {
  Operands o;
  std::tie(o.u, o.u_row) = rows(u_in);
  std::tie(o.dt, o.dt_row) = rows(dt);
  std::tie(o.Bm, o.B_row) = rows(Bm);
  std::tie(o.Cm, o.C_row) = rows(Cm);
  if (present(z)) std::tie(o.z, o.z_row) = rows(z);
  if (present(bias)) o.bias = bias.contiguous();
  o.A = A.contiguous();
  if (present(Dskip)) o.Dskip = Dskip.contiguous();
  if (present(s0)) o.s0 = s0.contiguous();
  o.softplus = softplus;
  return o;
}

// The autograd node: saves the (cast) inputs and the kept chunk states only.
struct GatedScanFunction : public torch::autograd::Function<GatedScanFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& dt, const at::Tensor& bias,
                               const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& Dskip,
                               const at::Tensor& z, const at::Tensor& s0, bool softplus) {
    // u, dt, z: [B, T, D]; bias, Dskip: [D]; A: [D, N]; Bm, Cm: [B, T, N]; s0: [B, D, N]
    Operands o = prepare(u, dt, bias, softplus, A, Bm, Cm, Dskip, z, s0);
    at::Tensor kept;
    auto [out, state] = run_forward(o, &kept);
    ctx->save_for_backward({o.u, o.dt, o.bias, o.A, o.Bm, o.Cm, o.Dskip, o.z, o.s0, kept});
    ctx->saved_data["softplus"] = softplus;
    return {out, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto v = ctx->get_saved_variables();
    Operands o;
    o.u = v[0], o.dt = v[1], o.bias = v[2], o.A = v[3], o.Bm = v[4], o.Cm = v[5], o.Dskip = v[6], o.z = v[7],
    o.s0 = v[8];
    const at::Tensor& kept = v[9];
    o.softplus = ctx->saved_data["softplus"].toBool();
    o.u_row = o.u.stride(1), o.dt_row = o.dt.stride(1), o.B_row = o.Bm.stride(1), o.C_row = o.Cm.stride(1);
    o.z_row = o.z.defined() ? o.z.stride(1) : 0;
    const auto a = o.args();
    const auto f = o.u.options().dtype(at::kFloat);
    auto dout = grads[0].defined() ? grads[0].to(o.u.scalar_type()) : at::zeros_like(o.u);
    int64_t dout_row = 0;
    std::tie(dout, dout_row) = rows(dout);
    cuda::ScanGrads g;
    at::Tensor dsT = grads[1].defined() ? grads[1].to(at::kFloat).contiguous() : at::Tensor();
    auto du = at::empty({a.B, a.T, a.D}, o.u.options()), ddt = at::empty_like(du);
    auto dz = o.z.defined() ? at::empty_like(du) : at::Tensor();
    auto dA = at::empty({a.B, a.D, a.N}, f), ds0 = at::empty_like(dA);
    auto dD = o.Dskip.defined() ? at::empty({a.B, a.D}, f) : at::Tensor();
    auto dbias = o.bias.defined() ? at::empty({a.B, a.D}, f) : at::Tensor();
    auto dB = at::zeros({a.B, a.T, a.N}, f), dC = at::zeros_like(dB);  // the kernel adds into them
    g.dout = dout.data_ptr(), g.dout_row = dout_row, g.dsT = f32(dsT);
    g.du = du.data_ptr(), g.ddt = ddt.data_ptr(), g.dz = dz.defined() ? dz.data_ptr() : nullptr, g.dz_row = a.D;
    g.dA = dA.data_ptr<float>(), g.dDskip = f32_out(dD), g.dbias = f32_out(dbias);
    g.dB = dB.data_ptr<float>(), g.dC = dC.data_ptr<float>(), g.ds0 = ds0.data_ptr<float>();
    check_cuda(cuda::scan_backward(a, kept.data_ptr<float>(), g, at::cuda::getCurrentCUDAStream()),
               "selective scan backward");
    auto sum0 = [](const at::Tensor& t) { return t.defined() ? t.sum(0) : t; };
    return {du,
            ddt,
            sum0(dbias),
            sum0(dA),
            dB.to(o.Bm.scalar_type()),
            dC.to(o.Cm.scalar_type()),
            sum0(dD),
            dz,
            o.s0.defined() ? ds0 : at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

bool cuda_scan_applies(const at::Tensor& u, int64_t d_state) {
  return u.is_cuda() && d_state >= 1 && d_state <= cuda::kMaxState &&
         (u.scalar_type() == at::kFloat || u.scalar_type() == at::kBFloat16);
}

GatedScanResult scan_gated_cuda(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& dt_bias, bool softplus,
                                const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                                const at::Tensor& Dskip, const at::Tensor& z, const at::Tensor& s0) {
  // u, dt, z: [B, T, D]; dt_bias, Dskip: [D]; A: [D, N]; Bm, Cm: [B, T, N]; s0: [B, D, N]
  if (!cuda_scan_applies(u, A.size(1)))
    throw Error("mamba: the CUDA selective scan takes fp32 or bf16 inputs on a CUDA device and d_state <= " +
                std::to_string(cuda::kMaxState));
  if (u.dim() != 3 || dt.sizes() != u.sizes() || (z.defined() && z.sizes() != u.sizes()) || A.dim() != 2 ||
      A.size(0) != u.size(2) || Bm.dim() != 3 || Bm.size(2) != A.size(1) || Cm.sizes() != Bm.sizes() ||
      Bm.size(0) != u.size(0) || Bm.size(1) != u.size(1))
    throw Error("mamba: CUDA selective scan: mismatched shapes (u " + std::to_string(u.dim()) + "-d, A [D, N])");
  const c10::cuda::CUDAGuard guard(u.device());
  const auto dtype = u.scalar_type();
  auto same = [&](const at::Tensor& t) { return t.defined() ? t.to(dtype) : at::empty({0}, u.options()); };
  auto fp32 = [&](const at::Tensor& t) {
    return t.defined() ? t.to(at::kFloat) : at::empty({0}, u.options().dtype(at::kFloat));
  };
  const bool grad =
      at::GradMode::is_enabled() &&
      (u.requires_grad() || dt.requires_grad() || (dt_bias.defined() && dt_bias.requires_grad()) || A.requires_grad() ||
       Bm.requires_grad() || Cm.requires_grad() || (Dskip.defined() && Dskip.requires_grad()) ||
       (z.defined() && z.requires_grad()) || (s0.defined() && s0.requires_grad()));
  if (!grad) {
    // Prefill and evaluation: no backward will come, so no chunk states are kept.
    auto [out, state] = run_forward(
        prepare(u, same(dt), fp32(dt_bias), softplus, fp32(A), same(Bm), same(Cm), fp32(Dskip), same(z), fp32(s0)),
        nullptr);
    return {out, state};
  }
  auto r = GatedScanFunction::apply(u, same(dt), fp32(dt_bias), fp32(A), same(Bm), same(Cm), fp32(Dskip), same(z),
                                    fp32(s0), softplus);
  return {r[0], r[1]};
}

bool conv_step_applies(const at::Tensor& x, const at::Tensor& state) {
  return x.is_cuda() && x.dim() == 3 && x.size(1) == 1 && x.stride(2) == 1 &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
         state.scalar_type() == x.scalar_type() && state.is_contiguous() && state.dim() == 3 &&
         state.size(0) == x.size(0) && state.size(1) == x.size(2);
}

at::Tensor conv_step_cuda(const at::Tensor& x, const at::Tensor& state, const at::Tensor& weight,
                          const at::Tensor& bias) {
  // x: [B, 1, D]; state: [B, D, K - 1]; weight: [D, K]; bias: [D]
  if (!conv_step_applies(x, state) || weight.dim() != 2 || weight.size(0) != x.size(2) ||
      weight.size(1) != state.size(2) + 1)
    throw Error("mamba: CUDA conv step: unsupported shapes or dtypes");
  const c10::cuda::CUDAGuard guard(x.device());
  auto w = weight.to(at::kFloat).contiguous();
  auto b = bias.defined() ? bias.to(at::kFloat).contiguous() : at::Tensor();
  auto u = at::empty({x.size(0), 1, x.size(2)}, x.options());
  cuda::ConvStepArgs a;
  a.B = x.size(0), a.D = x.size(2), a.K = static_cast<int>(w.size(1));
  a.dtype = x.scalar_type() == at::kBFloat16 ? cuda::DType::BF16 : cuda::DType::F32;
  a.x = x.data_ptr(), a.x_row = x.stride(0);
  a.state = state.data_ptr(), a.weight = w.data_ptr<float>(), a.bias = b.defined() ? b.data_ptr<float>() : nullptr;
  check_cuda(cuda::conv_step(a, u.data_ptr(), at::cuda::getCurrentCUDAStream()), "conv step");
  return u;
}

}  // namespace mamba
}  // namespace linearnexus
