// Parameter roles (see param_role.h): their names, the default role and the default groups.
#include "linearnexus/param_role.h"

namespace linearnexus {

const char* role_name(ParamRole role) {
  switch (role) {
    case ParamRole::Matrix:
      return "matrix";
    case ParamRole::Embedding:
      return "embedding";
    case ParamRole::Head:
      return "head";
    case ParamRole::Norm:
      return "norm";
    case ParamRole::Bias:
      return "bias";
    case ParamRole::SsmDynamics:
      return "ssm_dynamics";
    case ParamRole::Conv:
      return "conv";
    case ParamRole::Other:
      return "other";
  }
  return "?";
}

ParamRole default_role(const at::Tensor& param) { return param.dim() >= 2 ? ParamRole::Matrix : ParamRole::Other; }

bool role_decays(ParamRole role, const at::Tensor& param) {
  switch (role) {
    case ParamRole::Embedding:
    case ParamRole::Norm:
    case ParamRole::Bias:
    case ParamRole::SsmDynamics:
      return false;
    default:
      return param.dim() >= 2;  // a vector is a gain or an offset, whatever it was declared
  }
}

ParamRole role_of(const NamedParameter& p) { return p.role ? *p.role : default_role(p.param); }

bool role_orthogonalised(ParamRole role, const at::Tensor& param) {
  return role == ParamRole::Matrix && param.dim() == 2;
}

void declare_roles(std::map<std::string, ParamRole>& roles, const torch::nn::Module& module, const std::string& prefix,
                   ParamRole role) {
  for (const auto& kv : module.named_parameters()) roles[prefix + kv.key()] = role;
}

}  // namespace linearnexus
