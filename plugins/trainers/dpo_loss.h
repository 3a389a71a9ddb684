#pragma once
// Direct Preference Optimization's loss (Rafailov et al. 2023, "Direct Preference Optimization: Your
// Language Model is Secretly a Reward Model"), compiled into the `dpo` trainer and its test.
//
// From the sequence log-likelihoods (the sum of log p over the completion's tokens) of the chosen
// and the rejected completion under the policy and the frozen reference:
//   h = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)
//   sigmoid: loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (eps: label smoothing,
//            the conservative DPO of Mitchell 2023; eps = 0 is the paper's loss)
//   ipo:     loss = (h / n - 1 / (2 beta))^2 with per-token mean log-likelihoods (Azar et al. 2023),
//            n the completion's length: IPO's log-ratios are length-normalised, as TRL's.
// The implicit rewards beta (logp - ref) of each completion are what TRL logs as rewards/chosen and
// rewards/rejected; their accuracy (chosen > rejected) and margin are the run's main metrics.
#include <ATen/ATen.h>

#include <string>

namespace linearnexus {

struct DPOTerms {
  at::Tensor loss;             // [N] per pair
  at::Tensor reward_chosen;    // [N] beta (logp_chosen - ref_chosen), no gradient
  at::Tensor reward_rejected;  // [N]
};

// All arguments [N] (fp32 sums over each completion's trained tokens); lengths_* [N] token counts
// (used by ipo only). loss_type "sigmoid" or "ipo".
DPOTerms dpo_loss(const at::Tensor& logp_chosen, const at::Tensor& logp_rejected, const at::Tensor& ref_chosen,
                  const at::Tensor& ref_rejected, const at::Tensor& lengths_chosen, const at::Tensor& lengths_rejected,
                  double beta, const std::string& loss_type, double label_smoothing);

}  // namespace linearnexus
