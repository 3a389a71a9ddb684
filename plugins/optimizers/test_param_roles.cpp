// Parameter roles: the optimizers group tensors by the role their block declares, not by name.
#include "catch.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/session.h"
#include "test_util.h"

#include <set>
#include <sstream>

using namespace linearnexus;
using lntest::error_of;
using lntest::make_optimizer;

namespace {

// The name rules the optimizers grouped by before parameter roles (plugin ABI 1), frozen here: the
// roles the in-tree blocks declare must group every tensor exactly as these did.
bool legacy_no_decay(const NamedParameter& p) {
  const auto& n = p.name;
  return p.param.dim() < 2 || n.find("norm") != std::string::npos || n.find("wte") != std::string::npos ||
         n.find("embed") != std::string::npos || (n.size() >= 4 && n.compare(n.size() - 4, 4, "bias") == 0);
}

bool legacy_muon(const NamedParameter& p) {
  if (p.param.dim() != 2) return false;
  for (const char* s : {"wte", "embed", "lm_head", "norm", "conv"})
    if (p.name.find(s) != std::string::npos) return false;
  std::istringstream parts(p.name);
  for (std::string part; std::getline(parts, part, '.');)
    if (part == "A_log" || part == "D" || part.rfind("dt", 0) == 0) return false;
  return true;
}

std::shared_ptr<LMModel> model_of(PluginHost& host, const std::string& model_yaml) {
  Experiment e = lntest::parse("data: {path: x}\nmodel: " + model_yaml + "\n", host);
  return std::make_shared<LMModel>(e.model_config(11), host.registry());
}

const char* kHybrid =
    "{hidden_size: 16, n_layer: 3, max_seq_len: 16, tie_embeddings: false, block_pattern: [attention, mamba, mla], "
    "blocks: {attention: {n_head: 2, qkv_bias: true, proj_bias: true, mlp_bias: true}, mamba: {d_state: 4, bias: true}, mla: {n_head: 2}}}";

}  // namespace

TEST_CASE("the in-tree blocks' roles group every tensor as the old name rules did (attention, mamba, mla)",
          "[optimizers][roles]") {
  PluginHost host;
  for (
      const std::string model :
      {std::string(kHybrid),
       std::string(
           "{hidden_size: 16, n_layer: 3, max_seq_len: 16, norm: layernorm, block_pattern: [mla, mamba, attention], blocks: "
           "{attention: {n_head: 2, n_kv_head: 1, mlp: gelu}, mamba: {d_state: 4, conv_bias: false}, "
           "mla: {n_head: 2, q_lora_rank: 8}}}")}) {
    INFO(model);
    auto m = model_of(host, model);
    const auto roles = m->parameter_roles();
    const auto ps = m->optimizer_parameters();
    const auto muon = make_optimizer(host, "muon", ps)->state_dict();
    int64_t decay_tensors = 0, decay_numel = 0;
    for (const auto& np : ps) {
      INFO(np.name << ": role " << role_name(role_of(np)));
      CHECK(roles.count(np.name) == 1);  // declared, not left to default_role
      CHECK(in_decay_group(np, {}, {}) == !legacy_no_decay(np));
      CHECK(muon.count(np.name + ".momentum_buffer") == (legacy_muon(np) ? 1u : 0u));
      CHECK(muon.count(np.name + ".exp_avg") == (legacy_muon(np) ? 0u : 1u));
      if (!legacy_no_decay(np)) ++decay_tensors, decay_numel += np.param.numel();
    }
    for (const char* name : {"adamw", "sophia"})
      CHECK_CONTAINS(make_optimizer(host, name, ps)->describe_groups(),
                     "decay group: " + std::to_string(decay_tensors) + " tensors, " + std::to_string(decay_numel));
  }
}

TEST_CASE("muon: the YAML globs still override the roles", "[optimizers][roles][muon]") {
  PluginHost host;
  auto m = model_of(host, kHybrid);  // blocks.0 attention, blocks.1 mamba, blocks.2 mla
  const auto ps = m->optimizer_parameters();
  auto st = make_optimizer(host, "muon", ps,
                           {"optimizer.adamw_params=['*.mlp.*', 'blocks.1.*']",
                            "optimizer.muon_params=['lm_head.weight', 'blocks.1.out_proj.weight']"})
                ->state_dict();
  CHECK(st.count("lm_head.weight.momentum_buffer") == 1);  // a head, forced in
  CHECK(st.count("blocks.0.mlp.up.weight.exp_avg") == 1);  // a matrix, forced out
  CHECK(st.count("blocks.1.in_proj.weight.exp_avg") == 1);
  CHECK(st.count("blocks.1.out_proj.weight.momentum_buffer") == 1);  // muon_params wins over adamw_params
  CHECK(st.count("blocks.0.qkv.weight.momentum_buffer") == 1);
  CHECK_CONTAINS(error_of([&] { make_optimizer(host, "muon", ps, {"optimizer.muon_params=['*.D']"}); }),
                 "'blocks.1.D' is 1-D");
}

TEST_CASE("an out-of-tree block's 2-D ssm_dynamics tensor is neither orthogonalised nor weight-decayed",
          "[optimizers][roles]") {
  PluginHost host;
  host.load_dir(std::string(LINEARNEXUS_TEST_PLUGIN_DIR) + "/roles");  // block test_ssm
  REQUIRE(host.problems().empty());
  auto m = model_of(host, "{hidden_size: 8, n_layer: 1, max_seq_len: 16, block_pattern: [test_ssm]}");
  auto ps = m->optimizer_parameters();
  const NamedParameter* log_decay = nullptr;
  for (const auto& np : ps)
    if (np.name == "blocks.0.log_decay") log_decay = &np;
  REQUIRE(log_decay);
  REQUIRE(log_decay->param.dim() == 2);
  CHECK(role_of(*log_decay) == ParamRole::SsmDynamics);
  // What the name rules would have done with it:
  CHECK(legacy_muon(*log_decay));
  CHECK_FALSE(legacy_no_decay(*log_decay));

  auto muon = make_optimizer(host, "muon", ps)->state_dict();
  CHECK(muon.count("blocks.0.log_decay.exp_avg") == 1);
  CHECK(muon.count("blocks.0.log_decay.momentum_buffer") == 0);
  CHECK(muon.count("blocks.0.in_proj.weight.momentum_buffer") == 1);
  CHECK(make_optimizer(host, "muon", ps, {"optimizer.muon_params=['*.log_decay']"})
            ->state_dict()
            .count("blocks.0.log_decay.momentum_buffer") == 1);

  // One AdamW step on zero gradients moves a tensor by its weight decay alone (p *= 1 - lr wd):
  // the names of the tensors it moved are its decay group.
  auto decayed = [&](std::vector<std::string> overrides) {
    overrides.insert(overrides.end(), {"optimizer.lr=0.1", "optimizer.weight_decay=0.5"});
    std::vector<at::Tensor> before;
    for (auto& np : ps) {
      before.push_back(np.param.detach().clone());
      np.param.mutable_grad() = torch::zeros_like(np.param);
    }
    make_optimizer(host, "adamw", ps, overrides)->step();
    std::set<std::string> moved;
    torch::NoGradGuard g;
    for (size_t i = 0; i < ps.size(); ++i) {
      if (!ps[i].param.equal(before[i])) moved.insert(ps[i].name);
      ps[i].param.copy_(before[i]);
    }
    return moved;
  };
  CHECK(decayed({}) == std::set<std::string>{"blocks.0.in_proj.weight"});
  CHECK(decayed({"optimizer.decay=['*.log_decay']"}) ==
        std::set<std::string>{"blocks.0.in_proj.weight", "blocks.0.log_decay"});
  CHECK(decayed({"optimizer.no_decay=['*.in_proj.*']"}).empty());
}

TEST_CASE("a block declaring a role for a parameter it does not have is an error naming it", "[optimizers][roles]") {
  PluginHost host;
  host.load_dir(std::string(LINEARNEXUS_TEST_PLUGIN_DIR) + "/roles");  // block test_ssm, with d_state 0: no log_decay
  auto m = model_of(host,
                    "{hidden_size: 8, n_layer: 1, max_seq_len: 16, block_pattern: [test_ssm], "
                    "blocks: {test_ssm: {d_state: 0}}}");
  CHECK(error_of([&] { m->optimizer_parameters(); }) ==
        "block 'test_ssm' (layer 0) declares role ssm_dynamics for 'log_decay', which is not one of its parameters; "
        "check its parameter_roles()");
}
