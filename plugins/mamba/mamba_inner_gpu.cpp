// The mamba block's inner part on CUDA as one autograd node (declared in selective_scan_gpu.h):
// the causal conv + SiLU, the x and dt projections and the gated selective scan, for training.
//
// Why one node: as separate autograd nodes, backward keeps u (the conv's output: x_proj's input and
// the scan's), dt (the dt projection's output, the scan's input) and z (copied out of xz for the
// scan): three [B, T, D] tensors a layer, 0.6 GB at mamba-small's B = 64, T = 1024 in bf16, ~14 GiB
// over its 24 layers. This node keeps xz (the conv's input, which it needs anyway; z is read from it
// in place), dbc ([B, T, R + 2 N]: B, C and dt's low-rank input) and the scan's chunk states, and
// computes u (the conv kernel, one read and one write of [B, T, D]) and dt (a rank-R matmul) again
// in backward. Its gradient of xz is written in place by two kernels: the scan's dz into the second
// half, the conv's dx into the first (no [B, T, 2 D] concatenation).
// Compiled only where LibTorch has CUDA; elsewhere cuda_stubs.cpp stands in (mamba_inner_applies() is
// false there).
#include "selective_scan_gpu.h"

#include <linearnexus/error.h>

#include <torch/autograd.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>

#include "causal_conv_cuda.h"
#include <linearnexus/cuda_glue.h>
#include "selective_scan_cuda.h"

namespace linearnexus {
namespace mamba {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

const float* f32_or_null(const at::Tensor& t) { return t.numel() > 0 ? t.data_ptr<float>() : nullptr; }

// The conv over xi = xz[.., :D] (rows 2 D apart), no history.
cuda::ConvArgs conv_args(const at::Tensor& xz, const at::Tensor& w, const at::Tensor& bias) {
  cuda::ConvArgs a;
  a.B = xz.size(0), a.T = xz.size(1), a.D = xz.size(2) / 2, a.K = w.size(1);
  a.bf16 = xz.scalar_type() == at::kBFloat16;
  a.x = xz.data_ptr(), a.x_row = xz.size(2);
  a.w = w.data_ptr<float>(), a.bias = f32_or_null(bias);
  return a;
}

// u = silu(conv(xi)): [B, T, D] contiguous, xz's dtype.
at::Tensor conv_u(const at::Tensor& xz, const at::Tensor& w, const at::Tensor& bias, cudaStream_t stream) {
  const auto a = conv_args(xz, w, bias);
  auto u = at::empty({a.B, a.T, a.D}, xz.options());
  check_cuda(cuda::conv_silu_forward(a, u.data_ptr(), stream), "causal conv forward (mamba inner)");
  return u;
}

// The scan's view of u, dt (contiguous [B, T, D]), dbc's B and C, and z in xz.
cuda::ScanArgs scan_args(const at::Tensor& xz, const at::Tensor& u, const at::Tensor& dt, const at::Tensor& dt_bias,
                         const at::Tensor& A, const at::Tensor& dbc, int64_t R, const at::Tensor& Dskip) {
  cuda::ScanArgs s;
  s.B = u.size(0), s.T = u.size(1), s.D = u.size(2), s.N = A.size(1);
  s.dtype = u.scalar_type() == at::kBFloat16 ? cuda::DType::BF16 : cuda::DType::F32;
  s.u = u.data_ptr(), s.u_row = s.D;
  s.dt = dt.data_ptr(), s.dt_row = s.D;
  s.dt_bias = dt_bias.data_ptr<float>(), s.softplus = true;
  s.A = A.data_ptr<float>();
  s.Bm = dbc.narrow(2, R, s.N).data_ptr(), s.B_row = dbc.size(2);
  s.Cm = dbc.narrow(2, R + s.N, s.N).data_ptr(), s.C_row = dbc.size(2);
  s.Dskip = Dskip.data_ptr<float>();
  s.z = xz.narrow(2, s.D, s.D).data_ptr(), s.z_row = xz.size(2);
  return s;
}

struct MambaInnerFunction : public torch::autograd::Function<MambaInnerFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& xz, const at::Tensor& conv_w,
                            const at::Tensor& conv_b, const at::Tensor& x_w, const at::Tensor& dt_w,
                            const at::Tensor& dt_bias, const at::Tensor& A, const at::Tensor& Dskip) {
    // xz: [B, T, 2 D]; conv_w: [D, K]; conv_b: [D] or empty; x_w: [R + 2 N, D]; dt_w: [D, R]; A: [D, N]
    const auto dtype = xz.scalar_type();
    const int64_t R = dt_w.size(1);
    const auto stream = at::cuda::getCurrentCUDAStream();
    auto u = conv_u(xz, conv_w, conv_b, stream);                                           // [B, T, D]
    auto dbc = at::matmul(u, x_w.to(dtype).t()).to(dtype);                                 // [B, T, R + 2 N]
    auto dt = at::matmul(dbc.narrow(2, 0, R), dt_w.to(dtype).t()).to(dtype).contiguous();  // [B, T, D]
    const auto a = scan_args(xz, u, dt, dt_bias, A, dbc, R, Dskip);
    auto out = at::empty({a.B, a.T, a.D}, xz.options());
    auto state = at::empty({a.B, a.D, a.N}, xz.options().dtype(at::kFloat));
    auto kept = at::empty({a.B, cuda::kept_chunks(a.T), a.D, a.N}, state.options());
    check_cuda(cuda::scan_forward(a, out.data_ptr(), state.data_ptr<float>(), kept.data_ptr<float>(), stream),
               "selective scan forward (mamba inner)");
    ctx->save_for_backward({xz, conv_w, conv_b, x_w, dt_w, dt_bias, A, Dskip, dbc, kept});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto v = ctx->get_saved_variables();
    const at::Tensor &xz = v[0], &conv_w = v[1], &conv_b = v[2], &x_w = v[3], &dt_w = v[4], &dt_bias = v[5], &A = v[6],
                     &Dskip = v[7], &dbc = v[8], &kept = v[9];
    const auto dtype = xz.scalar_type();
    const auto f = xz.options().dtype(at::kFloat);
    const int64_t B = xz.size(0), T = xz.size(1), D = xz.size(2) / 2, N = A.size(1), R = dt_w.size(1), E = R + 2 * N;
    const auto stream = at::cuda::getCurrentCUDAStream();
    // The forward's u and dt again (neither was kept).
    auto u = conv_u(xz, conv_w, conv_b, stream);
    const auto xw = x_w.to(dtype), dtw = dt_w.to(dtype);
    auto dbc_r = dbc.narrow(2, 0, R);                   // [B, T, R]
    auto dt = at::matmul(dbc_r, dtw.t()).contiguous();  // [B, T, D]
    const auto a = scan_args(xz, u, dt, dt_bias, A, dbc, R, Dskip);

    auto dout = grads[0].defined() ? grads[0].to(dtype).contiguous() : at::zeros({B, T, D}, xz.options());
    auto dxz = at::empty({B, T, 2 * D}, xz.options());
    auto du = at::empty({B, T, D}, xz.options()), ddt = at::empty_like(du);
    auto dA = at::empty({B, D, N}, f), dD = at::empty({B, D}, f), dbias = at::empty({B, D}, f);
    auto dB = at::zeros({B, T, N}, f), dC = at::zeros({B, T, N}, f);  // the kernel adds into them
    cuda::ScanGrads g;
    g.dout = dout.data_ptr(), g.dout_row = D;
    g.du = du.data_ptr(), g.ddt = ddt.data_ptr();
    g.dz = dxz.narrow(2, D, D).data_ptr(), g.dz_row = 2 * D;
    g.dA = dA.data_ptr<float>(), g.dDskip = dD.data_ptr<float>(), g.dbias = dbias.data_ptr<float>();
    g.dB = dB.data_ptr<float>(), g.dC = dC.data_ptr<float>();
    check_cuda(cuda::scan_backward(a, kept.data_ptr<float>(), g, stream), "selective scan backward (mamba inner)");

    // The projections: d(dbc) = [ddt dt_w, dB, dC]; du += d(dbc) x_w; the weights' gradients.
    auto ddbc = at::empty({B, T, E}, xz.options());  // [B, T, R + 2 N]
    ddbc.narrow(2, 0, R).copy_(at::matmul(ddt, dtw));
    ddbc.narrow(2, R, N).copy_(dB);
    ddbc.narrow(2, R + N, N).copy_(dC);
    auto ddt2 = ddt.view({B * T, D}), ddbc2 = ddbc.view({B * T, E});
    auto d_dt_w = at::matmul(ddt2.t(), dbc_r.reshape({B * T, R})).to(at::kFloat);  // [D, R]
    du.view({B * T, D}).addmm_(ddbc2, xw);
    auto d_x_w = at::matmul(ddbc2.t(), u.view({B * T, D})).to(at::kFloat);  // [R + 2 N, D]

    // The conv's backward from du, into the first half of dxz.
    const auto ca = conv_args(xz, conv_w, conv_b);
    const int64_t parts = B * cuda::conv_backward_tiles(T);
    auto dw = at::empty({parts, D, ca.K}, f);
    auto db = conv_b.numel() > 0 ? at::empty({parts, D}, f) : at::Tensor();
    check_cuda(cuda::conv_silu_backward(ca, du.data_ptr(), dxz.data_ptr(), 2 * D, dw.data_ptr<float>(),
                                        db.defined() ? db.data_ptr<float>() : nullptr, stream),
               "causal conv backward (mamba inner)");
    return {dxz, dw.sum(0), db.defined() ? db.sum(0) : at::Tensor(), d_x_w, d_dt_w, dbias.sum(0), dA.sum(0), dD.sum(0)};
  }
};

}  // namespace

bool mamba_inner_applies(const at::Tensor& xz, int64_t d_state, int64_t d_conv) {
  return xz.is_cuda() && (xz.scalar_type() == at::kFloat || xz.scalar_type() == at::kBFloat16) && d_state >= 1 &&
         d_state <= cuda::kMaxState && d_conv >= 1 && d_conv <= cuda::kMaxConvTaps;
}

at::Tensor mamba_inner_cuda(const at::Tensor& xz_in, const at::Tensor& conv_w, const at::Tensor& conv_b,
                            const at::Tensor& x_w, const at::Tensor& dt_w, const at::Tensor& dt_bias,
                            const at::Tensor& A, const at::Tensor& Dskip) {
  // xz: [B, T, 2 D]; conv_w: [D, K]; conv_b: [D]; x_w: [R + 2 N, D]; dt_w: [D, R]; dt_bias, Dskip: [D]; A: [D, N]
  if (!mamba_inner_applies(xz_in, A.size(1), conv_w.size(1)) || xz_in.dim() != 3 || xz_in.size(2) % 2 != 0)
    throw Error("mamba: CUDA inner path: xz [B, T, 2 D] fp32/bf16 on CUDA, d_state <= " +
                std::to_string(cuda::kMaxState) + ", d_conv <= " + std::to_string(cuda::kMaxConvTaps) + " expected");
  const int64_t D = xz_in.size(2) / 2, N = A.size(1), R = dt_w.size(1);
  if (conv_w.size(0) != D || x_w.size(0) != R + 2 * N || x_w.size(1) != D || dt_w.size(0) != D || A.size(0) != D ||
      dt_bias.numel() != D || Dskip.numel() != D || (conv_b.defined() && conv_b.numel() != D))
    throw Error("mamba: CUDA inner path: mismatched parameter shapes");
  const c10::cuda::CUDAGuard guard(xz_in.device());
  auto fp32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  // Absent conv bias: an empty tensor (torch 2.x's node records every input's device).
  auto cb = conv_b.defined() ? fp32(conv_b) : at::empty({0}, xz_in.options().dtype(at::kFloat));
  return MambaInnerFunction::apply(xz_in.contiguous(), fp32(conv_w), cb, x_w, dt_w, fp32(dt_bias), fp32(A),
                                   fp32(Dskip));
}

}  // namespace mamba
}  // namespace linearnexus
