// Parameter values, schemas and the experiment file: the one place YAML is parsed and validated.
#include "linearnexus/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "linearnexus/data.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/plugin_host.h"

namespace fs = std::filesystem;

namespace linearnexus {

// ---- ParamValue / Params ------------------------------------------------------------------------

const char* param_type_name(ParamType t) {
  switch (t) {
    case ParamType::Int: return "int";
    case ParamType::Float: return "float";
    case ParamType::Bool: return "bool";
    case ParamType::String: return "string";
    case ParamType::IntList: return "list[int]";
    case ParamType::FloatList: return "list[float]";
    case ParamType::StringList: return "list[string]";
  }
  return "?";
}

namespace {
// Shortest decimal text that reads back as the same double.
std::string float_text(double v) {
  char buf[64];
  for (int prec = 6; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a float in YAML
  return s;
}
std::string quote(const std::string& s) {
  YAML::Emitter e;
  e << YAML::DoubleQuoted << s;
  return e.c_str();
}
}  // namespace

std::string ParamValue::to_yaml() const {
  auto join = [](const auto& xs, auto fmt) {
    std::string out = "[";
    for (size_t k = 0; k < xs.size(); ++k) out += (k ? ", " : "") + fmt(xs[k]);
    return out + "]";
  };
  switch (type) {
    case ParamType::Int: return std::to_string(i);
    case ParamType::Float: return float_text(f);
    case ParamType::Bool: return b ? "true" : "false";
    case ParamType::String: return quote(s);
    case ParamType::IntList: return join(ilist, [](int64_t v) { return std::to_string(v); });
    case ParamType::FloatList: return join(flist, float_text);
    case ParamType::StringList: return join(slist, quote);
  }
  return "";
}

const ParamValue& Params::at(const std::string& key, ParamType want) const {
  auto it = values_.find(key);
  if (it == values_.end())
    throw Error("internal: parameter '" + section_ + "." + key + "' is not in the schema");
  bool ok = it->second.type == want || (want == ParamType::Float && it->second.type == ParamType::Int) ||
            (want == ParamType::FloatList && it->second.type == ParamType::IntList);
  if (!ok)
    throw Error("internal: parameter '" + section_ + "." + key + "' is a " + param_type_name(it->second.type) +
                ", read as " + param_type_name(want));
  return it->second;
}
int64_t Params::get_int(const std::string& key) const { return at(key, ParamType::Int).i; }
double Params::get_float(const std::string& key) const {
  const auto& v = at(key, ParamType::Float);
  return v.type == ParamType::Int ? static_cast<double>(v.i) : v.f;
}
bool Params::get_bool(const std::string& key) const { return at(key, ParamType::Bool).b; }
const std::string& Params::get_string(const std::string& key) const { return at(key, ParamType::String).s; }
const std::vector<int64_t>& Params::get_int_list(const std::string& key) const {
  return at(key, ParamType::IntList).ilist;
}
std::vector<double> Params::get_float_list(const std::string& key) const {
  const auto& v = at(key, ParamType::FloatList);
  if (v.type == ParamType::IntList) return std::vector<double>(v.ilist.begin(), v.ilist.end());
  return v.flist;
}
const std::vector<std::string>& Params::get_string_list(const std::string& key) const {
  return at(key, ParamType::StringList).slist;
}

// ---- YAML -> values ---------------------------------------------------------------------------

namespace {

// "file:line:col" for a node (or just the file when the node has no position, e.g. from --set).
struct Source {
  std::string file;
  std::set<std::string> overridden;  // dotted paths set by --set
  std::string at(const YAML::Node& n, const std::string& path) const {
    if (overridden.count(path)) return "--set " + path;
    auto m = n.Mark();
    if (m.is_null() || m.line < 0) return file;
    return file + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
  }
};

std::string scalar_text(const YAML::Node& n) { return n.IsScalar() ? n.Scalar() : "a " + std::string(n.IsMap() ? "map" : n.IsSequence() ? "list" : "null"); }

ParamValue node_to_value(const YAML::Node& n, const ParamSpec& spec, const std::string& where,
                         const std::string& path) {
  ParamValue v;
  v.type = spec.type;
  auto fail = [&](const std::string& what) -> Error {
    return Error(where + ": '" + path + "' must be " + what + " (got '" + scalar_text(n) + "')");
  };
  try {
    switch (spec.type) {
      case ParamType::Int:
        if (!n.IsScalar()) throw fail("an integer");
        v.i = n.as<int64_t>();
        break;
      case ParamType::Float:
        if (!n.IsScalar()) throw fail("a number");
        v.f = n.as<double>();
        break;
      case ParamType::Bool:
        if (!n.IsScalar()) throw fail("true or false");
        v.b = n.as<bool>();
        break;
      case ParamType::String:
        if (!n.IsScalar() && !n.IsNull()) throw fail("a string");
        v.s = n.IsNull() ? "" : n.Scalar();
        if (!spec.choices.empty() &&
            std::find(spec.choices.begin(), spec.choices.end(), v.s) == spec.choices.end()) {
          std::string opts;
          for (auto& c : spec.choices) opts += (opts.empty() ? "" : ", ") + c;
          throw Error(where + ": '" + path + "' must be one of: " + opts + " (got '" + v.s + "')");
        }
        break;
      case ParamType::IntList:
      case ParamType::FloatList:
      case ParamType::StringList: {
        std::vector<YAML::Node> items;
        if (n.IsSequence()) {
          for (const auto& x : n) items.push_back(x);
        } else if (n.IsScalar()) {
          items.push_back(n);  // a single value is a one-element list
        } else if (!n.IsNull()) {
          throw fail("a list");
        }
        for (const auto& x : items) {
          if (!x.IsScalar()) throw fail("a list of scalars");
          if (spec.type == ParamType::IntList) v.ilist.push_back(x.as<int64_t>());
          if (spec.type == ParamType::FloatList) v.flist.push_back(x.as<double>());
          if (spec.type == ParamType::StringList) v.slist.push_back(x.Scalar());
        }
        break;
      }
    }
  } catch (const YAML::BadConversion&) {
    const char* what = spec.type == ParamType::Int || spec.type == ParamType::IntList ? "an integer"
                       : spec.type == ParamType::Bool                               ? "true or false"
                                                                                    : "a number";
    throw fail(what);
  }
  return v;
}

YAML::Node load_yaml_text(const std::string& text, const std::string& file) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw Error(file + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) +
                ": malformed YAML: " + e.msg);
  }
}

// Validate a YAML map against a schema. `skip` lists keys the caller handles itself.
Params validate_section(const YAML::Node& node, const Schema& schema, const std::string& section,
                        const Source& src, const std::set<std::string>& skip = {}) {
  Params out(section);
  if (node && !node.IsNull() && !node.IsMap())
    throw Error(src.at(node, section) + ": '" + section + "' must be a map of key: value");
  std::vector<std::string> keys;
  for (const auto& spec : schema) keys.push_back(spec.key);
  for (const auto& k : skip) keys.push_back(k);
  if (node && node.IsMap()) {
    for (const auto& kv : node) {
      const std::string key = kv.first.Scalar();
      if (skip.count(key)) continue;
      if (std::none_of(schema.begin(), schema.end(), [&](const ParamSpec& s) { return s.key == key; })) {
        std::string msg = src.at(kv.first, section + "." + key) + ": unknown key '" + key + "' in '" + section + "'";
        std::string near = nearest_key(key, keys);
        msg += near.empty() ? "; valid keys: " : "; did you mean '" + near + "'? valid keys: ";
        for (size_t i = 0; i < keys.size(); ++i) msg += (i ? ", " : "") + keys[i];
        throw Error(msg);
      }
    }
  }
  for (const auto& spec : schema) {
    const std::string path = section + "." + spec.key;
    const bool present = node && node.IsMap() && node[spec.key].IsDefined();
    YAML::Node n = present ? node[spec.key] : YAML::Node();
    if (present && !(n.IsNull() && spec.type != ParamType::String)) {
      out.set(spec.key, node_to_value(n, spec, src.at(n, path), path));
    } else if (!spec.default_value.empty()) {
      out.set(spec.key, parse_param_value(spec, spec.default_value, "default of " + path));
    } else {
      throw Error(src.file + ": missing required key '" + path + "' (" + spec.doc + ")");
    }
  }
  return out;
}

YAML::Node params_to_yaml(const Params& p) {
  YAML::Node n(YAML::NodeType::Map);
  for (const auto& [k, v] : p.values()) n[k] = YAML::Load(v.to_yaml());
  return n;
}

}  // namespace

ParamValue parse_param_value(const ParamSpec& spec, const std::string& yaml_text, const std::string& where) {
  if (yaml_text.empty()) throw Error(where + ": '" + spec.key + "' is required");
  YAML::Node n = load_yaml_text(yaml_text, where);
  return node_to_value(n, spec, where, spec.key);
}

Params params_from_defaults(const Schema& schema, const std::string& section) {
  return validate_section(YAML::Node(), schema, section, Source{"(defaults)", {}});
}

std::string describe_schema(const Schema& schema) {
  size_t wk = 3, wt = 4, wd = 7;
  for (const auto& s : schema) {
    wk = std::max(wk, s.key.size());
    wt = std::max(wt, std::string(param_type_name(s.type)).size());
    wd = std::max(wd, s.default_value.empty() ? 10 : s.default_value.size());
  }
  auto pad = [](std::string s, size_t w) { return s + std::string(w > s.size() ? w - s.size() : 0, ' '); };
  std::ostringstream out;
  out << "  " << pad("key", wk) << "  " << pad("type", wt) << "  " << pad("default", wd) << "  doc\n";
  for (const auto& s : schema) {
    std::string doc = s.doc;
    if (!s.choices.empty()) {
      doc += " (one of:";
      for (const auto& c : s.choices) doc += " " + c;
      doc += ")";
    }
    out << "  " << pad(s.key, wk) << "  " << pad(param_type_name(s.type), wt) << "  "
        << pad(s.default_value.empty() ? "(required)" : s.default_value, wd) << "  " << doc << "\n";
  }
  return out.str();
}

std::string describe_schema_markdown(const Schema& schema) {
  // Markdown table for docs/config.md; '|' inside a cell would break the table.
  auto cell = [](std::string s) {
    for (size_t i = 0; (i = s.find('|', i)) != std::string::npos; i += 2) s.replace(i, 1, "\\|");
    return s;
  };
  std::ostringstream out;
  out << "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const auto& s : schema) {
    std::string doc = s.doc;
    if (!s.choices.empty()) {
      doc += " (one of:";
      for (const auto& c : s.choices) doc += " `" + c + "`";
      doc += ")";
    }
    out << "| `" << s.key << "` | " << param_type_name(s.type) << " | "
        << (s.default_value.empty() ? "(required)" : "`" + cell(s.default_value) + "`") << " | " << cell(doc) << " |\n";
  }
  return out.str();
}

std::string nearest_key(const std::string& key, const std::vector<std::string>& candidates) {
  auto dist = [](const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= b.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
      std::swap(prev, cur);
    }
    return prev[b.size()];
  };
  std::string best;
  size_t best_d = std::max<size_t>(2, key.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = dist(key, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

// ---- the host's schemas -----------------------------------------------------------------------

const Schema& top_schema() {
  static const Schema s = {
      {"name", ParamType::String, "run", "experiment name (default out_dir is runs/<name>)"},
      {"seed", ParamType::Int, "1337", "seed for initialisation, data order, dropout and sampling"},
      {"device", ParamType::String, "auto", "where to run", {"auto", "cpu", "cuda"}},
      {"precision", ParamType::String, "fp32", "compute precision (master weights stay fp32)", {"fp32", "bf16"}},
  };
  return s;
}
const Schema& model_schema() {
  static const Schema s = {
      {"preset", ParamType::String, "\"\"", "a named model shape (fields here override it): see `linearnexus presets`"},
      {"vocab_size", ParamType::String, "auto", "vocabulary size, or auto = the tokenizer's"},
      {"hidden_size", ParamType::Int, "256", "model width C"},
      {"n_layer", ParamType::Int, "4", "number of blocks"},
      {"max_seq_len", ParamType::Int, "1024", "longest sequence the caches and positions allow"},
      {"block_pattern", ParamType::StringList, "[attention]", "block names, repeated to fill n_layer"},
      {"tie_embeddings", ParamType::Bool, "true", "share the token embedding with the LM head"},
      {"dropout", ParamType::Float, "0.0", "dropout probability passed to every block"},
  };
  return s;
}
const Schema& schedule_schema() {
  static const Schema s = {
      {"warmup_steps", ParamType::Int, "100", "linear warmup from 0 to the optimizer's lr"},
      {"decay", ParamType::String, "cosine", "decay after warmup", {"cosine", "linear", "constant"}},
      {"min_lr", ParamType::Float, "0.0", "learning rate reached at max_steps"},
  };
  return s;
}
const Schema& trainer_common_schema() {
  static const Schema s = {
      {"max_steps", ParamType::Int, "1000", "optimizer steps (the schedule spans these)"},
      {"stop_after", ParamType::Int, "0", "stop early after this many steps, saving a checkpoint to resume from (0 = run to max_steps)"},
      {"batch_size", ParamType::Int, "16", "sequences per micro-batch"},
      {"grad_accum", ParamType::Int, "1", "micro-batches per optimizer step"},
      {"grad_clip", ParamType::Float, "1.0", "global gradient-norm clip (0 = off)"},
      {"log_every", ParamType::Int, "10", "steps between metric lines"},
      {"eval_every", ParamType::Int, "100", "steps between validation passes (0 = only at the end)"},
      {"eval_batches", ParamType::Int, "20", "batches per validation pass"},
      {"save_every", ParamType::Int, "500", "steps between checkpoints (a final one is always written)"},
      {"keep_last_n", ParamType::Int, "2", "step checkpoints kept besides latest"},
      {"out_dir", ParamType::String, "\"\"", "run folder (default runs/<name>)"},
      {"resume", ParamType::String, "\"\"", "\"\" = fresh run (refuses a folder with checkpoints), auto = continue from out_dir's latest, or a checkpoint path"},
      {"init_from", ParamType::String, "\"\"", "a fresh run starts from this checkpoint's weights (run folder or file) and reuses its tokenizer; the model section must match it"},
  };
  return s;
}
const Schema& sample_schema() {
  static const Schema s = {
      {"prompt", ParamType::String, "\"\\n\"", "text the samples start from"},
      {"max_tokens", ParamType::Int, "200", "new tokens per sample"},
      {"num_samples", ParamType::Int, "1", "samples printed after training"},
      {"temperature", ParamType::Float, "0.8", "softmax temperature (0 = greedy)"},
      {"top_k", ParamType::Int, "50", "keep the k most likely tokens (0 = off)"},
      {"top_p", ParamType::Float, "0.95", "nucleus sampling mass (1 = off)"},
  };
  return s;
}

// ---- presets ----------------------------------------------------------------------------------

namespace {
const std::map<std::string, std::string>& presets() {
  static const std::map<std::string, std::string> p = {
      {"gpt-small", "{vocab_size: 50257, hidden_size: 768, n_layer: 12, max_seq_len: 1024, block_pattern: [attention], "
                    "blocks: {attention: {n_head: 12, mlp: gelu}}}"},
      {"gpt-medium", "{vocab_size: 50257, hidden_size: 1024, n_layer: 24, max_seq_len: 1024, block_pattern: [attention], "
                     "blocks: {attention: {n_head: 16, mlp: gelu}}}"},
      {"mamba-small", "{vocab_size: 50257, hidden_size: 768, n_layer: 24, max_seq_len: 2048, block_pattern: [mamba]}"},
      {"mamba-medium", "{vocab_size: 50257, hidden_size: 1024, n_layer: 48, max_seq_len: 2048, block_pattern: [mamba]}"},
      {"jamba-small", "{vocab_size: 50257, hidden_size: 768, n_layer: 16, max_seq_len: 2048, "
                      "block_pattern: [mamba, mamba, mamba, mamba, mamba, mamba, mamba, attention], "
                      "blocks: {attention: {n_head: 12, mlp: swiglu}}}"},
  };
  return p;
}

// Fill `dst` with src's entries that dst lacks (recursively for maps): the file overrides the preset.
void merge_under(YAML::Node dst, const YAML::Node& src) {
  for (const auto& kv : src) {
    const std::string k = kv.first.Scalar();
    if (!dst[k]) {
      dst[k] = YAML::Clone(kv.second);
    } else if (dst[k].IsMap() && kv.second.IsMap()) {
      merge_under(dst[k], kv.second);
    }
  }
}

void apply_override(YAML::Node root, const std::string& assignment, std::set<std::string>& overridden) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error("--set '" + assignment + "': expected key.path=value, e.g. --set trainer.max_steps=100");
  const std::string path = assignment.substr(0, eq);
  YAML::Node value = load_yaml_text(assignment.substr(eq + 1), "--set " + path);
  std::vector<std::string> parts;
  std::stringstream ss(path);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  // yaml-cpp nodes are handles: walk down by reassigning a handle, never the node it points to.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    if (!next.IsMap()) throw Error("--set " + path + ": '" + parts[i] + "' is not a section");
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
  overridden.insert(path);
}
}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> out;
  for (const auto& [k, v] : presets()) out.push_back(k);
  return out;
}

// ---- experiments ------------------------------------------------------------------------------

std::vector<std::string> ModelConfig::layer_kinds() const {
  std::vector<std::string> out;
  for (int64_t i = 0; i < dims.n_layer; ++i) out.push_back(block_pattern[i % block_pattern.size()]);
  return out;
}

ModelConfig Experiment::model_config(int64_t tokenizer_vocab_size) const {
  ModelConfig c;
  const std::string& vs = model.get_string("vocab_size");
  if (vs == "auto") {
    c.dims.vocab_size = tokenizer_vocab_size;
  } else {
    char* end = nullptr;
    c.dims.vocab_size = std::strtoll(vs.c_str(), &end, 10);
    if (*end || c.dims.vocab_size <= 0) throw Error(source + ": model.vocab_size must be a positive integer or auto (got '" + vs + "')");
    if (tokenizer_vocab_size > c.dims.vocab_size)
      throw Error(source + ": model.vocab_size " + vs + " is smaller than the tokenizer's vocabulary (" +
                  std::to_string(tokenizer_vocab_size) + "); use vocab_size: auto");
  }
  c.dims.hidden_size = model.get_int("hidden_size");
  c.dims.n_layer = model.get_int("n_layer");
  c.dims.max_seq_len = model.get_int("max_seq_len");
  c.dims.dropout = model.get_float("dropout");
  c.block_pattern = model.get_string_list("block_pattern");
  c.block_params = blocks;
  c.tie_embeddings = model.get_bool("tie_embeddings");
  return c;
}

Experiment parse_experiment(const std::string& yaml_text, const std::string& origin, const std::string& base_dir,
                            const std::vector<std::string>& overrides, PluginHost& host) {
  Source src{origin, {}};
  YAML::Node root = load_yaml_text(yaml_text, origin);
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw Error(origin + ": an experiment file must be a YAML map (name:, model:, trainer:, ...)");
  for (const auto& o : overrides) apply_override(root, o, src.overridden);

  static const std::vector<std::string> sections = {"name", "seed", "device", "precision", "plugins", "data",
                                                    "model", "optimizer", "schedule", "trainer", "sample", "task"};
  for (const auto& kv : root) {
    const std::string key = kv.first.Scalar();
    if (std::find(sections.begin(), sections.end(), key) == sections.end()) {
      std::string near = nearest_key(key, sections);
      throw Error(src.at(kv.first, key) + ": unknown key '" + key + "'" +
                  (near.empty() ? "" : "; did you mean '" + near + "'?") +
                  " top-level keys: name, seed, device, precision, plugins, data, model, optimizer, schedule, trainer, sample, task");
    }
  }

  Experiment e;
  e.source = origin;
  e.base_dir = base_dir;
  e.top = validate_section(root, top_schema(), "experiment", src,
                           {"plugins", "data", "model", "optimizer", "schedule", "trainer", "sample", "task"});

  // Plugins first: the other sections are validated against what they register.
  YAML::Node plugins = root["plugins"];
  Params pp = validate_section(plugins, {{"paths", ParamType::StringList, "[]", "extra plugin folders"}}, "plugins", src);
  for (auto p : pp.get_string_list("paths")) {
    fs::path dir(p);
    if (dir.is_relative() && !base_dir.empty()) dir = fs::path(base_dir) / dir;
    if (!fs::is_directory(dir)) throw Error(src.at(plugins["paths"], "plugins.paths") + ": plugin folder '" + dir.string() + "' does not exist");
    e.plugin_paths.push_back(dir.string());
    host.load_dir(dir.string());
  }
  const Registry& reg = host.registry();

  e.data = validate_section(root["data"], data_schema(), "data", src);

  // model: preset first, then the file's fields on top.
  YAML::Node model = root["model"] ? YAML::Clone(root["model"]) : YAML::Node(YAML::NodeType::Map);
  if (!model.IsMap()) throw Error(src.at(root["model"], "model") + ": 'model' must be a map");
  if (model["preset"] && !model["preset"].Scalar().empty()) {
    const std::string name = model["preset"].Scalar();
    auto it = presets().find(name);
    if (it == presets().end()) {
      std::string list;
      for (const auto& n : preset_names()) list += " " + n;
      throw Error(src.at(model["preset"], "model.preset") + ": unknown model preset '" + name + "'; presets:" + list);
    }
    merge_under(model, YAML::Load(it->second));
  }
  e.model = validate_section(model, model_schema(), "model", src, {"blocks"});
  const auto& pattern = e.model.get_string_list("block_pattern");
  if (pattern.empty()) throw Error(origin + ": model.block_pattern must name at least one block");
  for (const auto& b : pattern) reg.get(PluginKind::Block, b, src.at(model["block_pattern"], "model.block_pattern"));
  YAML::Node blocks = model["blocks"];
  if (blocks && !blocks.IsNull()) {
    if (!blocks.IsMap()) throw Error(src.at(blocks, "model.blocks") + ": 'model.blocks' must map block names to parameters");
    for (const auto& kv : blocks) {
      const std::string name = kv.first.Scalar();
      const auto& r = reg.get(PluginKind::Block, name, src.at(kv.first, "model.blocks." + name));
      e.blocks[name] = validate_section(kv.second, r.schema, "model.blocks." + name, src);
    }
  }
  for (const auto& b : pattern)
    if (!e.blocks.count(b)) e.blocks[b] = params_from_defaults(reg.get(PluginKind::Block, b).schema, "model.blocks." + b);

  // optimizer / trainer: `name:` picks the plugin, the rest is that plugin's schema.
  auto named_section = [&](const char* section, PluginKind kind, const char* fallback, const Schema& common,
                           std::string* name_out) {
    YAML::Node n = root[section];
    std::string name = fallback;
    if (n && n.IsMap() && n["name"]) name = n["name"].Scalar();
    const auto& r = reg.get(kind, name, n && n.IsMap() && n["name"] ? src.at(n["name"], std::string(section) + ".name") : origin);
    Schema schema = common;
    schema.insert(schema.end(), r.schema.begin(), r.schema.end());
    *name_out = name;
    // `--optimizer muon` on a file written for adamw: the file's keys belong to the plugin it named,
    // so keys the newly chosen plugin does not know are dropped (with a warning) rather than refused.
    // Keys set on the command line are still checked.
    if (n && n.IsMap() && src.overridden.count(std::string(section) + ".name")) {
      std::vector<std::string> dropped;
      for (const auto& kv : n) {
        const std::string key = kv.first.Scalar();
        bool known = key == "name" || src.overridden.count(std::string(section) + "." + key);
        for (const auto& spec : schema) known = known || spec.key == key;
        if (!known) dropped.push_back(key);
      }
      for (const auto& key : dropped) {
        log_warn(origin + ": " + section + "." + key + " is not a key of " + plugin_kind_name(kind) + " '" + name +
                 "' (chosen on the command line); ignoring it");
        n.remove(key);
      }
    }
    return validate_section(n, schema, section, src, {"name"});
  };
  e.optimizer = named_section("optimizer", PluginKind::Optimizer, "adamw", {}, &e.optimizer_name);
  e.schedule = validate_section(root["schedule"], schedule_schema(), "schedule", src);
  e.trainer = named_section("trainer", PluginKind::Trainer, "sft", trainer_common_schema(), &e.trainer_name);
  e.sample = validate_section(root["sample"], sample_schema(), "sample", src);
  // task: optional; `name:` picks the task plugin (RL trainers and data.path: task need one).
  if (root["task"] && !root["task"].IsNull()) {
    YAML::Node tn = root["task"];
    if (!tn.IsMap() || !tn["name"])
      throw Error(src.at(tn, "task") + ": 'task' must be a map with a name, e.g. task: {name: arithmetic}; tasks: " +
                  reg.names_text(PluginKind::Task));
    e.task = named_section("task", PluginKind::Task, "", {}, &e.task_name);
  }
  if (e.data.get_string("path") == "task" && e.task_name.empty())
    throw Error(origin + ": data.path is 'task' but the experiment has no task section; add e.g. task: {name: arithmetic}");

  // The resolved experiment, every default filled in.
  YAML::Emitter out;
  YAML::Node r(YAML::NodeType::Map);
  for (const auto& [k, v] : e.top.values()) r[k] = YAML::Load(v.to_yaml());
  if (!e.plugin_paths.empty()) r["plugins"]["paths"] = e.plugin_paths;
  r["data"] = params_to_yaml(e.data);
  YAML::Node m = params_to_yaml(e.model);
  for (const auto& [name, p] : e.blocks) m["blocks"][name] = params_to_yaml(p);
  r["model"] = m;
  YAML::Node o = params_to_yaml(e.optimizer);
  o["name"] = e.optimizer_name;
  r["optimizer"] = o;
  r["schedule"] = params_to_yaml(e.schedule);
  YAML::Node t = params_to_yaml(e.trainer);
  t["name"] = e.trainer_name;
  r["trainer"] = t;
  r["sample"] = params_to_yaml(e.sample);
  if (!e.task_name.empty()) {
    YAML::Node tk = params_to_yaml(e.task);
    tk["name"] = e.task_name;
    r["task"] = tk;
  }
  out << r;
  e.resolved_yaml = std::string(out.c_str()) + "\n";
  return e;
}

Experiment load_experiment(const std::string& path, const std::vector<std::string>& overrides, PluginHost& host) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open the experiment file (does it exist?)");
  std::stringstream ss;
  ss << in.rdbuf();
  // Relative paths in an experiment (data.path, plugins.paths, out_dir) are relative to the
  // working directory, as on the command line.
  return parse_experiment(ss.str(), path, "", overrides, host);
}

}  // namespace linearnexus
