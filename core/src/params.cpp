// Parameter values and schemas (see params.h): typed reads, YAML text of values, schema tables and
// the nearest-key suggestion.
#include "linearnexus/params.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "linearnexus/error.h"
#include "yaml_params.h"

namespace linearnexus {

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
std::string float_text(double v, bool plain = false) {
  if (plain && v == static_cast<double>(static_cast<int64_t>(v))) return std::to_string(static_cast<int64_t>(v));
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
    case ParamType::FloatList: return join(flist, [](double x) { return float_text(x); });
    case ParamType::StringList: return join(slist, quote);
  }
  return "";
}

std::string ParamSpec::range_text() const {
  const bool lo = min > -std::numeric_limits<double>::infinity(), hi = max < std::numeric_limits<double>::infinity();
  if (lo && hi) return "in [" + float_text(min, true) + ", " + float_text(max, true) + "]";
  if (lo) return ">= " + float_text(min, true);
  if (hi) return "<= " + float_text(max, true);
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
    if (!s.range_text().empty()) doc += " (" + s.range_text() + ")";
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
    if (!s.range_text().empty()) doc += " (" + s.range_text() + ")";
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

}  // namespace linearnexus
