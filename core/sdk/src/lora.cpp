// LoRA adapters on any block's Linear layers (lora.h).
#include "linearnexus/lora.h"

#include <fnmatch.h>

#include <algorithm>
#include <cmath>

#include "linearnexus/error.h"
#include "linearnexus/model.h"

namespace linearnexus {

const Schema& lora_schema() {
  static const Schema s = {
      {"rank", ParamType::Int, "0", "adapter rank r (0 = no adapters: every weight trains)", {}, 0, 4096},
      {"alpha", ParamType::Float, "16", "the adapters' scale is alpha / rank (PEFT's lora_alpha)", {}, 1e-9},
      {"targets", ParamType::StringList, "[all-linear]",
       "the blocks' Linear layers that get adapters: all-linear, globs over a Linear's name in its block (qkv, mlp.*) or its full name (blocks.0.qkv), or a role (matrix)"},
  };
  return s;
}

LoraConfig LoraConfig::from(const Params& p) {
  LoraConfig c;
  c.rank = p.get_int("rank");
  c.alpha = p.get_float("alpha");
  c.targets = p.get_string_list("targets");
  return c;
}

namespace {
std::string site_key(std::string name) {  // module names may not hold dots
  for (auto& ch : name)
    if (ch == '.') ch = '_';
  return name;
}
bool glob(const std::string& pattern, const std::string& text) {
  return ::fnmatch(pattern.c_str(), text.c_str(), 0) == 0;
}
}  // namespace

LoraAdapters::LoraAdapters(const std::vector<std::shared_ptr<Block>>& blocks,
                           const std::map<std::string, ParamRole>& roles, const LoraConfig& config)
    : config_(config) {
  std::vector<std::string> available;
  std::vector<bool> used(config.targets.size(), false);
  for (size_t i = 0; i < blocks.size(); ++i) {
    const std::string prefix = "blocks." + std::to_string(i) + ".";
    for (const auto& m : blocks[i]->named_modules("", /*include_self=*/false)) {
      auto* linear = dynamic_cast<torch::nn::LinearImpl*>(m.value().get());
      if (!linear) continue;
      const std::string local = m.key(), full = prefix + local;
      if (i == 0 || available.size() < 64) available.push_back(local);
      const auto role = roles.find(full + ".weight");
      const ParamRole r = role != roles.end() ? role->second : default_role(linear->weight);
      bool chosen = false;
      for (size_t t = 0; t < config.targets.size(); ++t) {
        const std::string& pat = config.targets[t];
        const bool hit = pat == "all-linear" || pat == role_name(r) || glob(pat, local) || glob(pat, full);
        used[t] = used[t] || hit;
        chosen = chosen || hit;
      }
      if (!chosen) continue;
      Site s;
      s.name = full;
      s.linear = linear;
      s.base = linear->weight;
      const int64_t out = s.base.size(0), in = s.base.size(1);
      auto pair = register_module(site_key(full), std::make_shared<torch::nn::Module>());
      // PEFT's initialisation: A ~ Kaiming-uniform(a = sqrt(5)) over fan_in, B = 0.
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      s.A = pair->register_parameter("lora_A", at::empty({config.rank, in}, s.base.options()).uniform_(-bound, bound));
      s.B = pair->register_parameter("lora_B", at::zeros({out, config.rank}, s.base.options()));
      sites_.push_back(std::move(s));
    }
  }
  std::sort(available.begin(), available.end());
  available.erase(std::unique(available.begin(), available.end()), available.end());
  std::string names;
  for (const auto& a : available) names += (names.empty() ? "" : ", ") + a;
  for (size_t t = 0; t < config.targets.size(); ++t)
    if (!used[t])
      throw Error("model.lora.targets: '" + config.targets[t] + "' selects no Linear layer of the blocks; there are: " +
                  (names.empty() ? "(none)" : names) + " (and all-linear, or a role such as matrix)");
}

void LoraAdapters::apply() {
  const double scale = config_.scale();
  const bool grad = at::GradMode::is_enabled();
  for (auto& s : sites_) {
    if (grad) {
      // A new tensor each training forward: autograd takes the gradient from W to A and B.
      s.linear->weight = s.base.scalar_type() == s.A.scalar_type()
                             ? s.base + scale * at::matmul(s.B, s.A)
                             : (s.base.to(s.A.scalar_type()) + scale * at::matmul(s.B, s.A)).to(s.base.scalar_type());
      s.merged = at::Tensor();
      continue;
    }
    const int64_t v[3] = {static_cast<int64_t>(s.base._version()), static_cast<int64_t>(s.A._version()),
                          static_cast<int64_t>(s.B._version())};
    const bool stale = !s.merged.defined() || s.merged.device() != s.base.device() ||
                       s.merged.scalar_type() != s.base.scalar_type() || v[0] != s.versions[0] ||
                       v[1] != s.versions[1] || v[2] != s.versions[2];
    if (stale) {
      // In the adapters' dtype, then the base's (a decoding replica keeps bf16 copies of the weights).
      auto w =
          at::addmm(s.base.to(s.A.scalar_type()), s.B, s.A, /*beta=*/1.0, /*alpha=*/scale).to(s.base.scalar_type());
      if (s.merged.defined() && s.merged.sizes() == w.sizes() && s.merged.device() == w.device() &&
          s.merged.scalar_type() == w.scalar_type())
        s.merged.copy_(w);  // in place: a captured decode step reads this buffer
      else
        s.merged = w;
      std::copy(v, v + 3, s.versions);
    }
    s.linear->weight = s.merged;
  }
}

std::map<std::string, at::Tensor> LoraAdapters::merged_weights() const {
  torch::NoGradGuard g;
  std::map<std::string, at::Tensor> out;
  for (const auto& s : sites_)
    out[s.name + ".weight"] =
        at::addmm(s.base.to(s.A.scalar_type()), s.B, s.A, 1.0, config_.scale()).to(s.base.scalar_type());
  return out;
}

}  // namespace linearnexus
