// Params to and from YAML text, and schemas as tables (params_yaml.h).
#include "linearnexus/host/params_yaml.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <sstream>

#include "linearnexus/error.h"
#include "yaml_params.h"

namespace linearnexus {

namespace {
std::string quote(const std::string& s) {
  YAML::Emitter e;
  e << YAML::DoubleQuoted << s;
  return e.c_str();
}
}  // namespace

std::string value_to_yaml(const ParamValue& v) {
  auto join = [](const auto& xs, auto fmt) {
    std::string out = "[";
    for (size_t k = 0; k < xs.size(); ++k) out += (k ? ", " : "") + fmt(xs[k]);
    return out + "]";
  };
  switch (v.type) {
    case ParamType::Int:
      return std::to_string(v.i);
    case ParamType::Float:
      return number_text(v.f);
    case ParamType::Bool:
      return v.b ? "true" : "false";
    case ParamType::String:
      return quote(v.s);
    case ParamType::IntList:
      return join(v.ilist, [](int64_t v) { return std::to_string(v); });
    case ParamType::FloatList:
      return join(v.flist, [](double x) { return number_text(x); });
    case ParamType::StringList:
      return join(v.slist, quote);
  }
  return "";
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
      doc += s.type == ParamType::StringList ? " (each one of:" : " (one of:";
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
      doc += s.type == ParamType::StringList ? " (each one of:" : " (one of:";
      for (const auto& c : s.choices) doc += " `" + c + "`";
      doc += ")";
    }
    if (!s.range_text().empty()) doc += " (" + s.range_text() + ")";
    out << "| `" << s.key << "` | " << param_type_name(s.type) << " | "
        << (s.default_value.empty() ? "(required)" : "`" + cell(s.default_value) + "`") << " | " << cell(doc) << " |\n";
  }
  return out.str();
}

}  // namespace linearnexus
