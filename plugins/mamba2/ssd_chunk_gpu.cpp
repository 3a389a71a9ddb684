// The torch side of the SSD chunk kernels (declared in ssd_chunk_gpu.h): layout and dtype checks, the
// autograd node, and the calls into ssd_chunk.cu / ssd_chunk_bwd.cu. Compiled only where LibTorch has
// CUDA; elsewhere cuda_stubs.cpp stands in. STATUS: never run on a GPU (the kernels are verified in
// the CPU emulator only).
#include "ssd_chunk_gpu.h"

#include <linearnexus/error.h>

#include <torch/autograd.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <linearnexus/cuda_glue.h>
#include "ssd_chunk_cuda.h"

namespace linearnexus {
namespace mamba2 {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x [B, T, X, Y] in the kernels' layout: (b, t, i, j) at ptr[(b * T + t) * row + i * Y + j]; else a
// contiguous copy.
at::Tensor rows4(const at::Tensor& x) {
  const bool ok = x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) >= x.size(2) * x.size(3) &&
                  x.stride(0) == x.size(1) * x.stride(1);
  return ok ? x : x.contiguous();
}
// [B, T, H] fp32 with unit stride along H and rows an equal stride apart.
at::Tensor rows3(const at::Tensor& x) {
  auto f = x.to(at::kFloat);
  const bool ok = f.stride(2) == 1 && f.stride(1) >= f.size(2) && f.stride(0) == f.size(1) * f.stride(1);
  return ok ? f : f.contiguous();
}

bool present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

cuda::SsdArgs args_of(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& Bm, const at::Tensor& Cm,
                      const at::Tensor& g, const at::Tensor& s0) {
  cuda::SsdArgs a;
  a.B = x.size(0), a.T = x.size(1), a.H = x.size(2), a.P = x.size(3), a.G = Bm.size(2), a.N = Bm.size(3);
  a.dtype = x.scalar_type() == at::kBFloat16 ? cuda::DType::BF16 : cuda::DType::F32;
  a.x = x.data_ptr(), a.x_row = x.stride(1);
  a.Bm = Bm.data_ptr(), a.B_row = Bm.stride(1);
  a.Cm = Cm.data_ptr(), a.C_row = Cm.stride(1);
  a.dt = present(dt) ? dt.data_ptr<float>() : nullptr, a.dt_row = present(dt) ? dt.stride(1) : 0;
  a.g = g.data_ptr<float>(), a.g_row = g.stride(1);
  a.s0 = present(s0) ? s0.data_ptr<float>() : nullptr;
  return a;
}

// Forward on prepared operands -> {y, state}; the chunk-entering states (bf16) into *entering.
std::pair<at::Tensor, at::Tensor> run_forward(const cuda::SsdArgs& a, const at::Tensor& x, at::Tensor* entering) {
  auto y = at::empty({a.B, a.T, a.H, a.P}, x.options());
  auto state = at::empty({a.B, a.H, a.N, a.P}, x.options().dtype(at::kFloat));
  *entering = at::empty({a.B, a.H, cuda::ssd_chunks(a.T), a.N, a.P}, x.options().dtype(at::kBFloat16));
  check_cuda(cuda::ssd_forward(a, y.data_ptr(), state.data_ptr<float>(), entering->data_ptr(),
                               at::cuda::getCurrentCUDAStream()),
             "SSD chunk forward");
  return {y, state};
}

struct SsdFunction : public torch::autograd::Function<SsdFunction> {
  // x [B, T, H, P]; dt, g [B, T, H] fp32 (dt empty: none); Bm, Cm [B, T, G, N]; s0 [B, H, N, P] or empty
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& Bm,
                               const at::Tensor& Cm, const at::Tensor& g, const at::Tensor& s0) {
    at::Tensor entering;
    auto [y, state] = run_forward(args_of(x, dt, Bm, Cm, g, s0), x, &entering);
    ctx->save_for_backward({x, dt, Bm, Cm, g, s0, entering});
    return {y, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto v = ctx->get_saved_variables();
    const at::Tensor &x = v[0], &dt = v[1], &Bm = v[2], &Cm = v[3], &g = v[4], &s0 = v[5], &entering = v[6];
    const auto a = args_of(x, dt, Bm, Cm, g, s0);
    const auto f = x.options().dtype(at::kFloat);
    auto dy =
        grads[0].defined() ? grads[0].to(x.scalar_type()).contiguous() : at::zeros({a.B, a.T, a.H, a.P}, x.options());
    auto dstate = grads[1].defined() ? grads[1].to(at::kFloat).contiguous() : at::Tensor();
    auto dx = at::empty({a.B, a.T, a.H, a.P}, x.options());
    auto dB = at::zeros({a.B, a.T, a.G, a.N}, f), dC = at::zeros_like(dB);  // the kernel adds into them
    auto ddt = present(dt) ? at::empty({a.B, a.T, a.H}, f) : at::Tensor();
    auto dg = at::empty({a.B, a.T, a.H}, f), ds0 = at::empty({a.B, a.H, a.N, a.P}, f);
    auto work = at::empty_like(entering);
    cuda::SsdGrads gr;
    gr.dy = dy.data_ptr(), gr.dstate = dstate.defined() ? dstate.data_ptr<float>() : nullptr;
    gr.dx = dx.data_ptr(), gr.dB = dB.data_ptr<float>(), gr.dC = dC.data_ptr<float>();
    gr.ddt = ddt.defined() ? ddt.data_ptr<float>() : nullptr, gr.dg = dg.data_ptr<float>();
    gr.ds0 = ds0.data_ptr<float>();
    check_cuda(cuda::ssd_backward(a, entering.data_ptr(), gr, work.data_ptr(), at::cuda::getCurrentCUDAStream()),
               "SSD chunk backward");
    return {dx, ddt, dB.to(Bm.scalar_type()), dC.to(Cm.scalar_type()), dg, present(s0) ? ds0 : at::Tensor()};
  }
};

}  // namespace

bool ssd_cuda_applies(const at::Tensor& x, int64_t d_state, int64_t head_dim) {
  return x.is_cuda() && cuda::ssd_supported(d_state, head_dim) &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

SsdResult ssd_chunk_cuda(const at::Tensor& x_in, const at::Tensor& dt_in, const at::Tensor& Bm_in,
                         const at::Tensor& Cm_in, const at::Tensor& g_in, const at::Tensor& s0_in) {
  // x [B, T, H, P]; dt, g [B, T, H]; Bm, Cm [B, T, G, N]; s0 [B, H, N, P]
  if (x_in.dim() != 4 || Bm_in.dim() != 4 || Cm_in.sizes() != Bm_in.sizes() || g_in.dim() != 3)
    throw Error("mamba2: SSD chunk kernel: x must be [B, T, H, P], B and C [B, T, G, N], g [B, T, H]");
  const int64_t B = x_in.size(0), T = x_in.size(1), H = x_in.size(2), P = x_in.size(3), G = Bm_in.size(2),
                N = Bm_in.size(3);
  if (!ssd_cuda_applies(x_in, N, P))
    throw Error(
        "mamba2: the SSD chunk kernel takes fp32 or bf16 on CUDA, d_state 64 or 128, head_dim 32, 64, 96 or 128");
  if (Bm_in.size(0) != B || Bm_in.size(1) != T || G <= 0 || H % G != 0 || g_in.sizes() != at::IntArrayRef{B, T, H} ||
      (dt_in.defined() && dt_in.sizes() != g_in.sizes()) ||
      (s0_in.defined() && s0_in.sizes() != at::IntArrayRef{B, H, N, P}))
    throw Error("mamba2: SSD chunk kernel: mismatched shapes");
  const c10::cuda::CUDAGuard guard(x_in.device());
  if (T == 0) {
    auto state = s0_in.defined() ? s0_in.to(at::kFloat) : at::zeros({B, H, N, P}, x_in.options().dtype(at::kFloat));
    return {at::empty({B, 0, H, P}, x_in.options()), state};
  }
  const auto dtype = x_in.scalar_type();
  auto x = rows4(x_in), Bm = rows4(Bm_in.to(dtype)), Cm = rows4(Cm_in.to(dtype)), g = rows3(g_in);
  auto dt = dt_in.defined() ? rows3(dt_in) : at::empty({0}, x.options().dtype(at::kFloat));
  auto s0 = s0_in.defined() ? s0_in.to(at::kFloat).contiguous() : at::empty({0}, x.options().dtype(at::kFloat));
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || Bm.requires_grad() || Cm.requires_grad() || g.requires_grad() ||
                     (present(dt) && dt.requires_grad()) || (present(s0) && s0.requires_grad()));
  if (!grad) {
    at::Tensor entering;
    auto [y, state] = run_forward(args_of(x, dt, Bm, Cm, g, s0), x, &entering);
    return {y, state};
  }
  auto r = SsdFunction::apply(x, dt, Bm, Cm, g, s0);
  return {r[0], r[1]};
}

}  // namespace mamba2
}  // namespace linearnexus
