#pragma once
// What a parameter is to the optimizers: its role, declared by the block (Block::parameter_roles)
// or the model that owns it, so optimizers group tensors by what they are rather than by names.
// Before roles, Muon and the weight-decay rule matched substrings of names ("norm", "wte",
// "A_log", "dt"...): a new block's 2-D SSM decay matrix would have been orthogonalised and
// weight-decayed because it was named otherwise.
#include <torch/nn/module.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace linearnexus {

enum class ParamRole {
  Matrix,       // a linear map between hidden spaces (projections, MLP weights): orthogonalised by Muon
  Embedding,    // rows are independent lookups (token embedding)
  Head,         // rows are classes (an untied LM head)
  Norm,         // normalisation gains
  Bias,         // additive biases
  SsmDynamics,  // element-wise state-space dynamics (decay rates, skip gains, time-step biases)
  Conv,         // convolution kernels (a depthwise conv over time)
  Other,        // none of the above
};

// "matrix", "embedding", "head", "norm", "bias", "ssm_dynamics", "conv", "other": for logs and docs.
const char* role_name(ParamRole role);

// The role of a parameter nobody declared, from the tensor alone: >= 2-D -> Matrix, else Other.
// (That reproduces the old name rules for every 2-D projection and every vector that is not
// declared; in-tree blocks declare all their parameters anyway.)
ParamRole default_role(const at::Tensor& param);

// The default groups, one table for every optimizer (YAML globs override them):
//   weight decay (AdamW, Sophia, Muon's inner AdamW): Matrix, Head, Conv and Other tensors of
//     >= 2 dims; never Embedding, Norm, Bias or SsmDynamics;
//   orthogonalised (Muon): 2-D Matrix tensors only; the rest goes to Muon's inner AdamW.
bool role_decays(ParamRole role, const at::Tensor& param);
bool role_orthogonalised(ParamRole role, const at::Tensor& param);

// A parameter as the optimizers see it.
struct NamedParameter {
  std::string name;  // e.g. "blocks.0.attn.qkv.weight"
  at::Tensor param;
  // Fused sub-matrix row counts when the block declared them (see Block::fused_splits).
  std::vector<int64_t> split_rows;
  // What the tensor is (Block::parameter_roles, LMModel::parameter_roles); unset: default_role.
  std::optional<ParamRole> role;
};

// p.role, or default_role(p.param) when nobody declared one.
ParamRole role_of(const NamedParameter& p);

// Give every parameter of `module` the role `role`, named `prefix` + its name in `module` (e.g.
// prefix "mlp." for a block's MLP): for a block's parameter_roles().
void declare_roles(std::map<std::string, ParamRole>& roles, const torch::nn::Module& module, const std::string& prefix,
                   ParamRole role);

}  // namespace linearnexus
