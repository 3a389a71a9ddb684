// DPO's loss (dpo_loss.h).
#include "dpo_loss.h"

#include <linearnexus/error.h>

namespace linearnexus {

DPOTerms dpo_loss(const at::Tensor& logp_chosen, const at::Tensor& logp_rejected, const at::Tensor& ref_chosen,
                  const at::Tensor& ref_rejected, const at::Tensor& lengths_chosen, const at::Tensor& lengths_rejected,
                  double beta, const std::string& loss_type, double label_smoothing) {
  DPOTerms out;
  if (loss_type == "sigmoid") {
    const auto h = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected);
    out.loss = -(1.0 - label_smoothing) * at::log_sigmoid(beta * h) - label_smoothing * at::log_sigmoid(-beta * h);
  } else if (loss_type == "ipo") {
    const auto n_c = lengths_chosen.to(at::kFloat).clamp_min(1), n_r = lengths_rejected.to(at::kFloat).clamp_min(1);
    const auto h = (logp_chosen - ref_chosen) / n_c - (logp_rejected - ref_rejected) / n_r;
    out.loss = (h - 1.0 / (2.0 * beta)).pow(2);
  } else {
    throw Error("trainer.loss_type must be sigmoid or ipo (got '" + loss_type + "')");
  }
  out.reward_chosen = (beta * (logp_chosen - ref_chosen)).detach();
  out.reward_rejected = (beta * (logp_rejected - ref_rejected)).detach();
  return out;
}

}  // namespace linearnexus
