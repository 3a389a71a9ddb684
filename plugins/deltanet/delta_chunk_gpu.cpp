// The torch side of the delta-rule chunk kernels (declared in delta_chunk_gpu.h): layout and dtype
// checks, the autograd node, and the calls into delta_chunk.cu / delta_chunk_bwd.cu. Compiled only
// where LibTorch has CUDA; elsewhere cuda_stubs.cpp stands in. STATUS: never run on a GPU (the
// kernels are verified in the CPU emulator only).
#include "delta_chunk_gpu.h"

#include <linearnexus/error.h>

#include <torch/autograd.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <linearnexus/cuda_glue.h>
#include "delta_chunk_cuda.h"

namespace linearnexus {
namespace deltanet {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x [B, T, H, D] in the kernels' layout: (b, t, h, d) at ptr[(b * T + t) * row + h * D + d]; else a
// contiguous copy.
at::Tensor rows4(const at::Tensor& x) {
  const bool ok = x.stride(3) == 1 && x.stride(2) == x.size(3) && x.stride(1) >= x.size(2) * x.size(3) &&
                  x.stride(0) == x.size(1) * x.stride(1);
  return ok ? x : x.contiguous();
}
// [B, T, H] fp32 with unit stride along H and rows an equal stride apart.
at::Tensor rows3(const at::Tensor& x) {
  auto f = x.to(at::kFloat);
  return kernel_rows(f) ? f : f.contiguous();
}

bool present(const at::Tensor& t) { return t.defined() && t.numel() > 0; }

// q, k, v [B, T, H, D]; beta, g [B, T, H] (g empty: none); s0 [B, H, D, D] or empty.
cuda::DeltaArgs args_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& beta,
                        const at::Tensor& g, const at::Tensor& s0) {
  cuda::DeltaArgs a;
  a.B = q.size(0), a.T = q.size(1), a.H = q.size(2), a.D = q.size(3);
  a.dtype = q.scalar_type() == at::kBFloat16 ? cuda::DType::BF16 : cuda::DType::F32;
  a.q = q.data_ptr(), a.q_row = q.stride(1);
  a.k = k.data_ptr(), a.k_row = k.stride(1);
  a.v = v.data_ptr(), a.v_row = v.stride(1);
  a.beta = beta.data_ptr<float>(), a.beta_row = beta.stride(1);
  a.g = present(g) ? g.data_ptr<float>() : nullptr, a.g_row = present(g) ? g.stride(1) : 0;
  a.s0 = present(s0) ? s0.data_ptr<float>() : nullptr;
  return a;
}

// The forward's saved tensors (delta_chunk_cuda.h's DeltaSaved), in the order kept by the autograd node.
std::vector<at::Tensor> alloc_saved(const cuda::DeltaArgs& a, const at::TensorOptions& o) {
  const auto f = o.dtype(at::kFloat), h = o.dtype(at::kBFloat16);
  const int64_t B = a.B, H = a.H, T = a.T, D = a.D;
  return {at::empty({B, H, T}, f),    at::empty({B, H, T, cuda::kChunk}, h),
          at::empty({B, H, T, D}, h), at::empty({B, H, T, D}, h),
          at::empty({B, H, T, D}, h), at::empty({B, H, cuda::delta_chunks(T), D, D}, h)};
}
cuda::DeltaSaved saved_of(const std::vector<at::Tensor>& t) {
  cuda::DeltaSaved s;
  s.gc = t[0].data_ptr<float>(), s.ainv = t[1].data_ptr(), s.w = t[2].data_ptr(), s.u = t[3].data_ptr();
  s.vn = t[4].data_ptr(), s.h = t[5].data_ptr();
  return s;
}

// Forward on prepared operands -> {o [B, T, H, D], state}; the saved tensors into *saved.
std::pair<at::Tensor, at::Tensor> run_forward(const cuda::DeltaArgs& a, const at::Tensor& q,
                                              std::vector<at::Tensor>* saved) {
  auto o = at::empty({a.B, a.T, a.H, a.D}, q.options());
  auto state = at::empty({a.B, a.H, a.D, a.D}, q.options().dtype(at::kFloat));
  *saved = alloc_saved(a, q.options());
  check_cuda(
      cuda::delta_forward(a, o.data_ptr(), state.data_ptr<float>(), saved_of(*saved), at::cuda::getCurrentCUDAStream()),
      "delta-rule chunk forward");
  return {o, state};
}

struct DeltaFunction : public torch::autograd::Function<DeltaFunction> {
  // q, k, v [B, T, H, D]; beta, g [B, T, H] fp32 (g empty: none); s0 [B, H, D, D] or empty
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& beta, const at::Tensor& g, const at::Tensor& s0) {
    std::vector<at::Tensor> saved;
    auto [o, state] = run_forward(args_of(q, k, v, beta, g, s0), q, &saved);
    std::vector<at::Tensor> keep{q, k, v, beta, g, s0};
    keep.insert(keep.end(), saved.begin(), saved.end());
    ctx->save_for_backward(keep);
    return {o, state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto t = ctx->get_saved_variables();
    const at::Tensor &q = t[0], &k = t[1], &v = t[2], &beta = t[3], &g = t[4], &s0 = t[5];
    const auto a = args_of(q, k, v, beta, g, s0);
    const auto s = saved_of(std::vector<at::Tensor>(t.begin() + 6, t.end()));
    const auto f = q.options().dtype(at::kFloat), h = q.options().dtype(at::kBFloat16);
    const int64_t B = a.B, T = a.T, H = a.H, D = a.D;
    auto dout = grads[0].defined() ? grads[0].to(q.scalar_type()).contiguous() : at::zeros({B, T, H, D}, q.options());
    auto dstate = grads[1].defined() ? grads[1].to(at::kFloat).contiguous() : at::Tensor();
    auto dq = at::empty({B, T, H, D}, f), dk = at::empty_like(dq), dv = at::empty_like(dq);
    auto dbeta = at::empty({B, T, H}, f), dg = present(g) ? at::empty({B, T, H}, f) : at::Tensor();
    auto ds0 = at::empty({B, H, D, D}, f);
    auto dvl = at::empty({B, H, T, D}, h), dvn = at::empty_like(dvl), dw = at::empty_like(dvl);
    auto dh = at::empty({B, H, cuda::delta_chunks(T), D, D}, h);
    cuda::DeltaGrads gr;
    gr.dout = dout.data_ptr(), gr.dstate = dstate.defined() ? dstate.data_ptr<float>() : nullptr;
    gr.dq = dq.data_ptr<float>(), gr.dk = dk.data_ptr<float>(), gr.dv = dv.data_ptr<float>();
    gr.dbeta = dbeta.data_ptr<float>(), gr.dg = dg.defined() ? dg.data_ptr<float>() : nullptr;
    gr.ds0 = ds0.data_ptr<float>();
    gr.dvl = dvl.data_ptr(), gr.dvn = dvn.data_ptr(), gr.dw = dw.data_ptr(), gr.dh = dh.data_ptr();
    check_cuda(cuda::delta_backward(a, s, gr, at::cuda::getCurrentCUDAStream()), "delta-rule chunk backward");
    return {dq.to(q.scalar_type()),          dk.to(k.scalar_type()), dv.to(v.scalar_type()), dbeta, dg,
            present(s0) ? ds0 : at::Tensor()};
  }
};

}  // namespace

bool delta_cuda_applies(const at::Tensor& q, int64_t head_dim) {
  return q.is_cuda() && cuda::delta_supported(head_dim) &&
         (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16);
}

DeltaResult delta_chunk_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                             const at::Tensor& beta_in, const at::Tensor& g_in, const at::Tensor& s0_in) {
  // q, k, v [B, H, T, D]; beta, g [B, H, T]; s0 [B, H, D, D]
  if (q_in.dim() != 4 || k_in.sizes() != q_in.sizes() || v_in.sizes() != q_in.sizes() || beta_in.dim() != 3)
    throw Error("deltanet: delta-rule chunk kernel: q, k and v must be [B, H, T, D] alike, beta [B, H, T]");
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), D = q_in.size(3);
  if (!delta_cuda_applies(q_in, D))
    throw Error("deltanet: the delta-rule chunk kernel takes fp32 or bf16 on CUDA, head_dim 64 or 128");
  if (beta_in.sizes() != at::IntArrayRef{B, H, T} || (g_in.defined() && g_in.sizes() != beta_in.sizes()) ||
      (s0_in.defined() && s0_in.sizes() != at::IntArrayRef{B, H, D, D}))
    throw Error("deltanet: delta-rule chunk kernel: mismatched shapes");
  const c10::cuda::CUDAGuard guard(q_in.device());
  if (T == 0) {
    auto state = s0_in.defined() ? s0_in.to(at::kFloat) : at::zeros({B, H, D, D}, q_in.options().dtype(at::kFloat));
    return {at::empty({B, H, 0, D}, q_in.options()), state};
  }
  const auto dtype = q_in.scalar_type();
  // The kernels' [B, T, H, .] layout: the block's heads are transposed views of one, taken as they are.
  auto q = rows4(q_in.transpose(1, 2)), k = rows4(k_in.to(dtype).transpose(1, 2)),
       v = rows4(v_in.to(dtype).transpose(1, 2));
  auto beta = rows3(beta_in.transpose(1, 2));
  const auto none = at::empty({0}, q.options().dtype(at::kFloat));
  auto g = g_in.defined() ? rows3(g_in.transpose(1, 2)) : none;
  auto s0 = s0_in.defined() ? s0_in.to(at::kFloat).contiguous() : none;
  const bool grad = at::GradMode::is_enabled() &&
                    (q.requires_grad() || k.requires_grad() || v.requires_grad() || beta.requires_grad() ||
                     (present(g) && g.requires_grad()) || (present(s0) && s0.requires_grad()));
  if (!grad) {
    std::vector<at::Tensor> saved;
    auto [o, state] = run_forward(args_of(q, k, v, beta, g, s0), q, &saved);
    return {o.transpose(1, 2), state};
  }
  auto r = DeltaFunction::apply(q, k, v, beta, g, s0);
  return {r[0].transpose(1, 2), r[1]};
}

}  // namespace deltanet
}  // namespace linearnexus
