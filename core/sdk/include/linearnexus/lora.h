#pragma once
// LoRA adapters (Hu et al. 2021) on the linear layers of any block, without the block knowing:
// model.lora: {rank, alpha, targets}. For each chosen torch::nn::Linear of a block, a pair
// A [r, in] (Kaiming-uniform, as PEFT) and B [out, r] (zeros, so training starts from the base
// model exactly) is added, and every forward the Linear's `weight` member is set to
//
//     W = W0 + (alpha / r) B A
//
// while W0, the registered parameter (what checkpoints and the optimizers see), stays frozen. Blocks
// read `linear->weight` (or call the Linear) as they always do, fused kernels included, and autograd
// carries the gradient to A and B; no block code changes, and a new block plugin gets LoRA for free.
//
// The merged form costs one out x in x r matmul per adapted weight per training forward and holds
// W (one weight-sized tensor per adapter) while the graph lives; it saves the base weights'
// gradients and optimizer state (AdamW: three weight-sized tensors each), which is where full
// fine-tuning's memory goes. Without gradients (evaluation, decoding) W is computed once and reused
// until A, B or W0 change (their version counters), in place, so a captured decode step keeps reading
// the same buffer. No adapter dropout: the adapters live inside W, where the input of the low-rank
// path alone cannot be dropped.
#include <torch/nn.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "linearnexus/param_role.h"
#include "linearnexus/params.h"

namespace linearnexus {

class Block;

struct LoraConfig {
  int64_t rank = 0;  // 0 = no adapters
  double alpha = 16;
  // Which Linear layers of the blocks: "all-linear" (every one), globs over a Linear's name inside
  // its block ("qkv", "mlp.*", "*_proj") or over its full name ("blocks.0.qkv"), or a role name
  // ("matrix": Linears whose weight the block declares a Matrix).
  std::vector<std::string> targets = {"all-linear"};
  bool enabled() const { return rank > 0; }
  double scale() const { return alpha / static_cast<double>(rank); }
  static LoraConfig from(const Params& lora);
};
const Schema& lora_schema();  // model.lora's keys

class LoraAdapters : public torch::nn::Module {
 public:
  // One adapter per Linear of `blocks` (block i's modules named "blocks.<i>.<name>") that a target
  // selects. `roles`: the model's declared roles by full parameter name. A target that selects
  // nothing is an Error naming model.lora.targets and the Linear layers there are.
  LoraAdapters(const std::vector<std::shared_ptr<Block>>& blocks, const std::map<std::string, ParamRole>& roles,
               const LoraConfig& config);

  // Sets every adapted Linear's weight to W0 + scale B A (see above).
  void apply();

  struct Site {
    std::string name;  // the Linear's full name: "blocks.3.qkv"
    torch::nn::LinearImpl* linear = nullptr;
    at::Tensor base;    // W0 [out, in]: the Linear's registered weight
    at::Tensor A, B;    // [r, in], [out, r]
    at::Tensor merged;  // the no-grad W0 + scale B A, and the versions it was made from
    int64_t versions[3] = {-1, -1, -1};
  };
  const std::vector<Site>& sites() const { return sites_; }
  const LoraConfig& config() const { return config_; }
  // W0 + scale B A by the base weight's full parameter name ("blocks.3.qkv.weight"), detached.
  std::map<std::string, at::Tensor> merged_weights() const;

 private:
  LoraConfig config_;
  std::vector<Site> sites_;
};

}  // namespace linearnexus
