// The language-model losses: cross-entropy on logits, the chunked LM head + cross-entropy (CPU here,
// CUDA in cuda/lm_head_loss_cuda.cpp), and the curvature pass's sampled-label loss.
#include "linearnexus/loss.h"

#include <torch/torch.h>

#include <algorithm>

#include "linearnexus/error.h"
#ifdef LINEARNEXUS_CORE_CUDA
#include "cuda/lm_head_loss_cuda.h"
#endif

namespace linearnexus {

at::Tensor lm_loss(const at::Tensor& logits, const at::Tensor& targets) {
  // logits: [B, T, V], targets: [B, T]
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(at::kFloat),
                                              targets.reshape({-1}),
                                              torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
}

namespace {
// The CPU's chunked LM head + cross-entropy: row chunks of ~32 MB of logits. Each chunk's logits,
// log-sum-exp, loss and gradient (softmax - one-hot) are computed and the chunk is dropped. Against
// matmul + cross_entropy this never holds [N, V] logits, their log-softmax and their gradient
// (3 x 200 MB at N = 1024, V = 50257), whose first-touch page faults and extra passes cost more than
// the matmuls on a CPU. Returns the summed loss and the gradients of that sum (with_grad).
void cpu_head_loss_sums(const at::Tensor& h, const at::Tensor& W, const at::Tensor& targets, bool with_grad,
                        at::Tensor& loss, at::Tensor& grad_h, at::Tensor& grad_W) {
  // h: [N, C], W: [V, C], targets: [N] (-1 = no loss)
  const int64_t N = h.size(0), V = W.size(0);
  const int64_t rows = std::max<int64_t>(16, (int64_t{8} << 20) / std::max<int64_t>(V, 1));
  auto Wc = W.to(h.scalar_type());  // no-op unless mixed
  auto valid = targets.ne(-1);
  loss = at::zeros({}, h.options().dtype(at::kFloat));
  if (with_grad) {
    grad_h = at::empty_like(h);
    grad_W = at::zeros(W.sizes(), W.options().dtype(at::kFloat));
  }
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t n = std::min(rows, N - r0);
    auto hc = h.narrow(0, r0, n), tc = targets.narrow(0, r0, n).clamp_min(0).unsqueeze(1);
    auto mask = valid.narrow(0, r0, n).to(at::kFloat).unsqueeze(1);  // [n, 1]
    auto logits = at::matmul(hc, Wc.t()).to(at::kFloat);             // [n, V]
    auto lse = at::logsumexp(logits, 1, true);                       // [n, 1]
    loss += ((lse - logits.gather(1, tc)) * mask).sum();
    if (!with_grad) continue;
    auto g = logits.sub_(lse).exp_();                                  // softmax, in place
    g.scatter_add_(1, tc, -at::ones({n, 1}, g.options())).mul_(mask);  // - one-hot; no-loss rows 0
    grad_h.narrow(0, r0, n).copy_(at::matmul(g.to(Wc.scalar_type()), Wc));
    grad_W.addmm_(g.t(), hc.to(at::kFloat));
  }
}

// The LM head and cross-entropy as one autograd node: forward computes the mean loss and already
// its gradients (CPU: cpu_head_loss_sums; CUDA: cuda::lm_head_loss_sums, a fused kernel between
// cuBLAS matmuls); backward only scales the gradients kept by the incoming gradient.
struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h,
                                                const at::Tensor& W, const at::Tensor& targets,
                                                at::ScalarType compute_dtype, bool with_grad) {
    // h: [N, C], W: [V, C], targets: [N] (-1 = no loss)
    at::Tensor loss, grad_h, grad_W;
    if (h.is_cuda()) {
#ifdef LINEARNEXUS_CORE_CUDA
      auto sums = cuda::lm_head_loss_sums(h, W, targets, compute_dtype, with_grad);
      loss = sums.loss, grad_h = sums.grad_h, grad_W = sums.grad_W;
#else
      throw Error("lm_head_loss: this build of LinearNexus has no CUDA kernels");
#endif
    } else {
      cpu_head_loss_sums(h, W, targets, with_grad, loss, grad_h, grad_W);
    }
    auto count = targets.ne(-1).sum().clamp_min(1).to(at::kFloat);  // a tensor: no device sync
    if (with_grad)
      ctx->save_for_backward({grad_h.div_(count.to(grad_h.scalar_type())), grad_W.div_(count).to(W.scalar_type())});
    return {loss / count};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& go = grads[0];
    return {saved[0] * go.to(saved[0].scalar_type()), saved[1] * go.to(saved[1].scalar_type()), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};
}  // namespace

at::Tensor lm_head_loss(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& targets,
                        at::ScalarType compute_dtype) {
  // hidden: [B, T, C], head_weight: [V, C], targets: [B, T]
  const bool with_grad = at::GradMode::is_enabled() && (hidden.requires_grad() || head_weight.requires_grad());
  if (compute_dtype == at::ScalarType::Undefined) compute_dtype = hidden.scalar_type();
  return LinearCrossEntropy::apply(hidden.reshape({-1, hidden.size(-1)}), head_weight, targets.reshape({-1}),
                                   compute_dtype, with_grad)[0];
}

at::Tensor token_log_probs(const at::Tensor& logits, const at::Tensor& targets) {
  // logits [B,T,V], targets [B,T] -> [B,T] fp32
  auto logp = at::log_softmax(logits.to(at::kFloat), -1);
  auto valid = targets.ne(-1);
  auto picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1);
  return picked * valid.to(at::kFloat);
}

at::Tensor sampled_label_loss(const at::Tensor& logits) {
  const int64_t V = logits.size(-1);
  auto flat = logits.reshape({-1, V}).to(at::kFloat);
  at::Tensor labels;
  {
    torch::NoGradGuard g;
    labels = at::multinomial(at::softmax(flat.detach(), -1), 1).reshape({-1});
  }
  return torch::nn::functional::cross_entropy(flat, labels);
}

}  // namespace linearnexus
