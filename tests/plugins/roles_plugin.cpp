// A test plugin standing for an out-of-tree SSM block: block `test_ssm`, whose 2-D decay matrix
// `log_decay` [C, N] is declared ssm_dynamics. Its name matches none of the substrings the
// optimizers matched before roles ("A_log", "dt", "norm"...), so only the declared role can keep it
// from being orthogonalised by Muon and weight-decayed by AdamW.
//   y = x + in_proj(x * gain) * mean_n(exp(log_decay))     x, y: [B, T, C]
// With d_state 0 it has no log_decay but still declares its role: the mistake a block's
// parameter_roles() can make, which must be an error naming it.
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

namespace roles_test {
using namespace linearnexus;

class TestSsmBlock : public Block {
 public:
  TestSsmBlock(const ModelDims& d, const Params& p) {
    const int64_t C = d.hidden_size;
    gain_ = register_parameter("gain", torch::ones({C}));
    in_proj_ = register_module("in_proj", torch::nn::Linear(torch::nn::LinearOptions(C, C).bias(false)));
    const int64_t N = p.get_int("d_state");
    if (N > 0) log_decay_ = register_parameter("log_decay", torch::full({C, N}, -0.5));  // nonzero: decay would show
  }

  BlockOutput forward(const at::Tensor& x, LayerState state, const ForwardContext&) override {
    auto y = in_proj_(x * gain_);  // [B, T, C]
    return {x + (log_decay_.defined() ? y * log_decay_.exp().mean(-1) : y), std::move(state)};
  }
  LayerState init_state(int64_t, int64_t, const at::TensorOptions&) const override { return {}; }

  std::map<std::string, ParamRole> parameter_roles() const override {
    return {{"gain", ParamRole::Norm}, {"in_proj.weight", ParamRole::Matrix}, {"log_decay", ParamRole::SsmDynamics}};
  }

 private:
  at::Tensor gain_, log_decay_;
  torch::nn::Linear in_proj_{nullptr};
};

void register_test_ssm(Registry& r) {
  r.add_block("test_ssm", "an SSM-like block declaring parameter roles (test plugin)",
              {{"d_state", ParamType::Int, "4", "columns of log_decay"}},
              [](const ModelDims& d, const Params& p, int64_t) { return std::make_shared<TestSsmBlock>(d, p); });
}

}  // namespace roles_test

LINEARNEXUS_PLUGIN("roles_test", "1.0.0", "a block declaring parameter roles, for the optimizer tests",
                   roles_test::register_test_ssm)
