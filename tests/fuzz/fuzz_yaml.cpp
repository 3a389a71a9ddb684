// The YAML experiment target (see fuzz_yaml.h).
#include "fuzz_yaml.h"

#include <stdexcept>

#include "linearnexus/host/config.h"
#include "linearnexus/host/plugin_host.h"

using namespace linearnexus;

std::vector<std::string> fuzz_yaml_seeds() {
  return {R"(name: fuzz
seed: 7
plugins: {paths: [plug]}
data: {path: "builtin:arithmetic", seq_len: 16, sampling: epoch}
model:
  preset: ""
  hidden_size: 16
  n_layer: 3
  block_pattern: [attention, mamba]
  blocks:
    attention: {n_head: 2, n_kv_head: 1, rope: true, mlp: swiglu}
    mamba: {d_state: 4, dt_rank: auto}
optimizer: {name: muon, lr: 0.02, adamw_betas: [0.9, 0.95]}
schedule: {warmup_steps: 10, decay: linear}
trainer: {name: sft, max_steps: 20, batch_size: 2, out_dir: runs/x, resume: auto}
sample: {prompt: "12+", max_tokens: 5, temperature: 0.0}
)",
          R"(name: rl
model: {preset: gpt-small, n_layer: 1}
task: {name: arithmetic, max_digits: 2, operators: [+, "*"]}
trainer: {name: grpo, max_steps: 3, init_from: runs/sft, group_size: 4}
data: {path: task}
)"};
}

void fuzz_yaml_run(const std::string& yaml) {
  static PluginHost host;  // the build's plugins, loaded once
  Experiment e = parse_experiment(yaml, "fuzz.yaml", "", {}, host, PluginPaths::Ignore);
  Experiment again;
  try {
    again = parse_experiment(e.resolved_yaml, "resolved", "", {}, host, PluginPaths::Ignore);
  } catch (const std::exception& x) {
    throw std::logic_error(std::string("the resolved experiment does not re-parse: ") + x.what());
  }
  if (again.resolved_yaml != e.resolved_yaml) throw std::logic_error("the resolved experiment re-parses differently");
}
