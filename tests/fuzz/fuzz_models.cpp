// The config.json and optimizer-state targets (see fuzz_models.h).
#include "fuzz_models.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "linearnexus/error.h"
#include "linearnexus/host/hf_convert.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/tokenizers.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/registry.h"

using namespace linearnexus;

namespace {
PluginHost& plugins() {
  static PluginHost host;  // the build's plugins, loaded once
  return host;
}
std::string file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const char* kOptimizers[] = {"adamw", "muon", "sophia"};

// The tiny model every optimizer seed trains, and an optimizer of `name` over it.
struct Tiny {
  Experiment exp;
  std::shared_ptr<LMModel> model;
  std::vector<NamedParameter> params;
  std::shared_ptr<Optimizer> optimizer;
};
Tiny tiny(const std::string& name) {
  Tiny t;
  t.exp = parse_experiment(
      "data: {path: x}\nmodel: {hidden_size: 8, n_layer: 1, blocks: {attention: {n_head: 2}}}\n"
      "optimizer: {name: " +
          name + "}\n",
      "fuzz.yaml", "", {}, plugins(), PluginPaths::Ignore);
  t.model = std::make_shared<LMModel>(t.exp.model_config(5), plugins().registry());
  t.params = t.model->optimizer_parameters();
  t.optimizer = plugins().registry().make_optimizer(name, t.params, t.exp.optimizer);
  return t;
}
}  // namespace

std::vector<std::string> fuzz_config_seeds() {
  std::vector<std::string> out;
  for (const char* arch : {"gpt2", "llama", "qwen2", "mamba"})
    out.push_back(file_text(std::string(LINEARNEXUS_FUZZ_FIXTURES) + "/hf/" + arch + "/config.json"));
  return out;
}

void fuzz_config_run(const std::string& config_json) {
  Experiment e = hf_config_experiment(config_json, "fuzz/config.json", "fuzz", plugins());
  Experiment again;
  try {
    again = parse_experiment(e.resolved_yaml, "resolved", "", {}, plugins(), PluginPaths::Ignore);
  } catch (const std::exception& x) {
    throw std::logic_error(std::string("the imported experiment does not re-parse: ") + x.what());
  }
  if (again.resolved_yaml != e.resolved_yaml) throw std::logic_error("the imported experiment re-parses differently");
}

std::vector<std::string> fuzz_optimizer_seeds(const std::string& dir) {
  std::vector<std::string> out;
  for (const char* name : kOptimizers) {
    Tiny t = tiny(name);
    // One step on a loss, so that every moment holds numbers, not zeros.
    auto tokens = at::randint(0, 5, {2, 6}, at::kLong);
    t.model->next_token_loss(tokens, tokens).backward();
    if (t.optimizer->wants_curvature_estimate(0)) t.optimizer->update_curvature(12);
    t.optimizer->step();
    RunCheckpoint ck(*t.model, plugins().registry(), t.exp.resolved_yaml, *make_char_tokenizer("abcde"), 1);
    ck.set_optimizer(*t.optimizer);
    ck.set_rng(at::kCPU);
    const std::string file = dir + "/seed_" + name + ".safetensors";
    ck.write(file);
    // The optimizer's name first, so that each input knows which optimizer reads it.
    out.push_back(std::string(name) + "\n" + file_text(file));
  }
  return out;
}

void fuzz_optimizer_run(const std::string& input, const std::string& dir) {
  const size_t nl = input.find('\n');
  const std::string name = input.substr(0, nl);
  if (nl == std::string::npos ||
      std::find(std::begin(kOptimizers), std::end(kOptimizers), name) == std::end(kOptimizers))
    throw Error("fuzz: no optimizer name on the first line");
  const std::string file = dir + "/state.safetensors";
  std::ofstream(file, std::ios::binary) << input.substr(nl + 1);
  RunCheckpoint ck = RunCheckpoint::read(file);
  Tiny t = tiny(name);
  ck.load_optimizer(*t.optimizer, at::kCPU);
  // What loaded must be a state the optimizer could have made.
  for (const auto& [key, value] : t.optimizer->state_dict()) {
    if (at::isFloatingType(value.scalar_type()) && !at::isfinite(value).all().item<bool>())
      throw std::logic_error("a non-finite state '" + key + "' was accepted");
    const bool count = !at::isFloatingType(value.scalar_type());
    const bool second =
        key.size() > 11 && (key.rfind(".exp_avg_sq") == key.size() - 11 || key.rfind(".hessian") == key.size() - 8);
    if ((count || second) && (value < 0).any().item<bool>())
      throw std::logic_error("a negative state '" + key + "' was accepted");
  }
}
