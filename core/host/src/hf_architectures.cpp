// The Hugging Face architectures of `convert` (hf_architectures.h): config.json read for the blocks'
// adapters, and which adapter describes which architecture.
#include "hf_architectures.h"

#include <set>

#include "json_limits.h"
#include "linearnexus/error.h"
#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/read_file.h"

using nlohmann::json;

namespace fs = std::filesystem;

namespace linearnexus::hf {

// ---- config.json ------------------------------------------------------------------------------

void ConfigReader::unsupported(const std::string& key, const std::string& what) const {
  throw Error(file_ + ": " + key + " is " + (j_.contains(key) ? j_.at(key).dump() : std::string("missing")) + "; " +
              what);
}

int64_t ConfigReader::integer(const std::string& key) const {
  if (!has(key)) throw Error(file_ + ": key '" + key + "' is missing; the architecture needs it");
  if (!j_.at(key).is_number_integer() || j_.at(key).get<int64_t>() <= 0)
    unsupported(key, "expected a positive whole number");
  return j_.at(key).get<int64_t>();
}
int64_t ConfigReader::integer(const std::string& key, int64_t fallback) const {
  return has(key) ? integer(key) : fallback;
}
double ConfigReader::number(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  if (!j_.at(key).is_number()) unsupported(key, "expected a number");
  return j_.at(key).get<double>();
}
bool ConfigReader::flag(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  if (!j_.at(key).is_boolean()) unsupported(key, "expected true or false");
  return j_.at(key).get<bool>();
}
std::string ConfigReader::text(const std::string& key, const std::string& fallback) const {
  if (!has(key)) return fallback;
  if (!j_.at(key).is_string()) unsupported(key, "expected a string");
  return j_.at(key).get<std::string>();
}
std::string ConfigReader::text_in(const std::string& object, const std::string& key,
                                  const std::string& fallback) const {
  if (!has(object) || !j_.at(object).is_object()) return fallback;
  const json& o = j_.at(object);
  if (!o.contains(key) || o.at(key).is_null()) return fallback;
  if (!o.at(key).is_string()) unsupported(object, "expected " + key + " to be a string");
  return o.at(key).get<std::string>();
}
double ConfigReader::number_in(const std::string& object, const std::string& key, double fallback) const {
  if (!has(object)) return fallback;
  const json& o = j_.at(object);
  if (o.is_array()) {  // key: an element's index ("time_step_limit": [0.0, Infinity], "1")
    if (key.empty() || key.size() > 6 || key.find_first_not_of("0123456789") != std::string::npos)
      unsupported(object, "expected an object, not a list");
    const size_t index = std::stoul(key);
    if (index >= o.size() || o.at(index).is_null()) return fallback;
    if (!o.at(index).is_number()) unsupported(object, "expected numbers");
    return o.at(index).get<double>();
  }
  if (!o.is_object()) return fallback;
  if (!o.contains(key) || o.at(key).is_null()) return fallback;
  // A value of another type ("rope_theta": "x") is an error, not the default in disguise.
  if (!o.at(key).is_number()) unsupported(object, "expected " + key + " to be a number");
  return o.at(key).get<double>();
}

// ---- which block's adapter ---------------------------------------------------------------------

namespace {
template <class F>
void for_each_architecture(const Registry& registry, F&& f) {
  for (const Registration* r : registry.all())
    if (r->kind == PluginKind::Block && r->hooks.hf)
      for (const auto& a : r->hooks.hf->architectures) f(a, r->name);
}
}  // namespace

std::string supported_names(const Registry& registry) {
  std::string out;
  for_each_architecture(registry, [&](const HFArchitecture& a, const std::string& block) {
    out += (out.empty() ? "" : ", ") + a.name + " (" + block + ")";
  });
  return out.empty() ? "none: no loaded block plugin has a Hugging Face adapter" : out;
}

Found architecture_named(const Registry& registry, const std::string& name, const std::string& file) {
  Found found{nullptr, ""};
  for_each_architecture(registry, [&](const HFArchitecture& a, const std::string& block) {
    if (!found.architecture && a.name == name) found = {&a, block};
  });
  if (!found.architecture)
    throw Error(file + ": architecture '" + name + "' is not supported; convert reads " + supported_names(registry));
  return found;
}

Found architecture_of(const Registry& registry, const ModelConfig& m, const std::string& source) {
  const std::set<std::string> kinds(m.block_pattern.begin(), m.block_pattern.end());
  if (kinds.size() != 1)
    throw Error(source + ": model.block_pattern mixes blocks (" + std::to_string(kinds.size()) +
                " kinds); hf-export writes models of one block kind (" + supported_names(registry) + ")");
  const std::string block = *kinds.begin();
  const Registration& r = registry.get(PluginKind::Block, block);
  if (!r.hooks.hf || r.hooks.hf->architectures.empty())
    throw Error(source + ": block '" + block + "' (plugin " + r.origin.plugin_name +
                ") has no Hugging Face adapter, so " +
                "hf-export cannot write it; architectures it writes: " + supported_names(registry));
  std::string why;
  for (const auto& a : r.hooks.hf->architectures) {
    const std::string mismatch = a.mismatch ? a.mismatch(m, m.block_params.at(block)) : "";
    if (mismatch.empty()) return {&a, block};
    why += (why.empty() ? "" : "; ") + a.name + ": " + mismatch;
  }
  throw Error(source + ": the model fits none of the Hugging Face architectures of block '" + block + "' (" + why +
              ")");
}

// ---- an architecture's tensor table --------------------------------------------------------------

std::string at_layer(std::string name, int64_t i) {
  const auto pos = name.find("{i}");
  if (pos != std::string::npos) name.replace(pos, 3, std::to_string(i));
  return name;
}
bool per_layer(const HFTensorRule& r) { return r.ours.find("{i}") != std::string::npos; }
std::vector<int64_t> layers_of(const HFTensorRule& r, int64_t n_layer) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < (per_layer(r) ? n_layer : 1); ++i) out.push_back(i);
  return out;
}
std::vector<HFTensorRule> all_rules(const HFArchitecture& a) {
  std::vector<HFTensorRule> out = a.model_rules;
  for (auto r : a.layer_rules) {
    r.ours = "blocks.{i}." + r.ours;
    out.push_back(std::move(r));
  }
  return out;
}

int64_t layer_index_in(const HFArchitecture& a, const std::string& hf_name) {
  for (const auto& rule : a.layer_rules)
    for (const auto& pattern : rule.hf) {
      const auto pos = pattern.find("{i}");
      if (pos == std::string::npos) continue;
      const std::string prefix = pattern.substr(0, pos), suffix = pattern.substr(pos + 3);
      if (hf_name.size() <= prefix.size() + suffix.size() || hf_name.compare(0, prefix.size(), prefix) != 0 ||
          hf_name.compare(hf_name.size() - suffix.size(), suffix.size(), suffix) != 0)
        continue;
      const std::string digits = hf_name.substr(prefix.size(), hf_name.size() - prefix.size() - suffix.size());
      if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
      return std::stoll(digits);
    }
  return -1;
}

// ---- files and layouts (hf_architectures.h) ----

json read_json(const fs::path& path) {
  if (!fs::exists(path)) throw Error(path.string() + ": cannot be read (does it exist?)");
  try {
    return parse_json_limited(read_file(path.string(), file_kind::kJson), 16);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(path.string() + ": not readable JSON (" + e.what() + ")");
  }
}

// A tokenizer-related file copied whole: the small JSON sidecars under the JSON limit, the
// vocabularies and merges under the tokenizer files' (read_file.h).
void copy_atomically(const fs::path& from, const fs::path& to) {
  const std::string name = from.filename().string();
  const bool sidecar = name != "tokenizer.json" && name != "vocab.json" && from.extension() == ".json";
  AtomicFile out(to.string());
  out.stream() << read_file(from.string(), sidecar ? file_kind::kJson : file_kind::kTokenizer);
  out.commit();
}

// "a, b, c" (with `sep`).
std::string joined(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : sep) + item;
  return out;
}

// Hugging Face layout -> ours, and back.
at::Tensor to_ours(const at::Tensor& t, HFLayout layout) {
  if (layout == HFLayout::Transposed) return t.t().contiguous();
  if (layout == HFLayout::Conv) return t.dim() == 3 ? t.squeeze(1).contiguous() : t;
  return t;
}
at::Tensor to_hf(const at::Tensor& t, HFLayout layout) {
  if (layout == HFLayout::Transposed) return t.t().contiguous();
  if (layout == HFLayout::Conv) return t.unsqueeze(1).contiguous();
  return t;
}

}  // namespace linearnexus::hf
