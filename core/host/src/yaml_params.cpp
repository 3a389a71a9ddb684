// YAML nodes -> typed parameter values, checked against a schema (see yaml_params.h).
#include "yaml_params.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string_view>
#include <sstream>
#include <vector>

#include "linearnexus/error.h"

namespace linearnexus {

namespace {
std::string scalar_text(const YAML::Node& n) {
  return n.IsScalar() ? n.Scalar() : "a " + std::string(n.IsMap() ? "map" : n.IsSequence() ? "list" : "null");
}

// A String key's value, or each element of a StringList, among the spec's choices (when it has any).
void check_choice(const ParamSpec& spec, const std::string& value, const std::string& where, const std::string& path) {
  if (spec.choices.empty() || std::find(spec.choices.begin(), spec.choices.end(), value) != spec.choices.end()) return;
  std::string opts;
  for (auto& c : spec.choices) opts += (opts.empty() ? "" : ", ") + c;
  throw Error(where + ": '" + path + "' must be " + (spec.type == ParamType::StringList ? "a list of: " : "one of: ") +
              opts + " (got '" + value + "')");
}

}  // namespace

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
        check_choice(spec, v.s, where, path);
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
          if (spec.type == ParamType::StringList) check_choice(spec, x.Scalar(), where, path);
        }
        break;
      }
    }
  } catch (const YAML::BadConversion&) {
    const char* what = spec.type == ParamType::Int || spec.type == ParamType::IntList ? "an integer"
                       : spec.type == ParamType::Bool                                 ? "true or false"
                                                                                      : "a number";
    throw fail(what);
  }
  // Numbers: finite, and inside the spec's range.
  auto check = [&](double x, const std::string& text) {
    if (!std::isfinite(x)) throw fail("a finite number");
    if (x < spec.min || x > spec.max)
      throw Error(where + ": '" + path + "' must be " + spec.range_text() + " (got " + text + ")");
  };
  if (spec.type == ParamType::Int) check(static_cast<double>(v.i), std::to_string(v.i));
  if (spec.type == ParamType::Float) check(v.f, n.Scalar());
  for (auto x : v.ilist) check(static_cast<double>(x), std::to_string(x));
  for (auto x : v.flist) check(x, std::to_string(x));
  return v;
}

namespace {
std::string position(const YAML::Mark& m, const std::string& file) {
  return file + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
}
// yaml-cpp keeps every pair of a map with a repeated key and answers lookups with the first, so a
// repeated key would silently lose the later value: refuse it, naming both places. Each collection is
// visited once (by its position in the text): aliases repeat a node without repeating the walk, so an
// alias bomb costs no more than the text it is written in.
void refuse_duplicate_keys(const YAML::Node& n, const std::string& file, std::set<int>& seen_nodes, int depth = 0) {
  if (depth > 64) throw Error(file + ": YAML nested more than 64 levels deep");
  if (!n.IsMap() && !n.IsSequence()) return;
  if (!seen_nodes.insert(n.Mark().pos).second) return;
  if (n.IsSequence()) {
    for (const auto& x : n) refuse_duplicate_keys(x, file, seen_nodes, depth + 1);
    return;
  }
  std::map<std::string, YAML::Mark> keys;
  for (const auto& kv : n) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : "";
    if (auto it = keys.find(key); it != keys.end() && kv.first.IsScalar())
      throw Error(position(kv.first.Mark(), file) + ": key '" + key + "' appears twice in the same map (first at " +
                  position(it->second, file) + "); keep one");
    keys.emplace(key, kv.first.Mark());
    refuse_duplicate_keys(kv.second, file, seen_nodes, depth + 1);
  }
}

// A `---` line after the first document's content starts a second document, which YAML::Load would
// silently ignore. Found by a scan of the lines (parsing every document of a hostile text, as
// YAML::LoadAll does, costs far more than the one the experiment needs).
void refuse_second_document(const std::string& text, const std::string& file) {
  bool content = false;
  size_t line_no = 0;
  for (size_t start = 0; start < text.size(); ++line_no) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + start, end - start);
    const bool marker =
        line.substr(0, 3) == "---" && (line.size() == 3 || line[3] == ' ' || line[3] == '\t' || line[3] == '\r');
    if (marker && content)
      throw Error(file + ":" + std::to_string(line_no + 1) +
                  ":1: a second YAML document ('---'): an experiment is one document");
    const size_t first = line.find_first_not_of(" \t\r");
    if (!marker && first != std::string_view::npos && line[first] != '#' && line[first] != '%') content = true;
    start = end + 1;
  }
}
}  // namespace

YAML::Node load_yaml_text(const std::string& text, const std::string& file) {
  try {
    refuse_second_document(text, file);
    YAML::Node root = YAML::Load(text);
    std::set<int> seen_nodes;
    refuse_duplicate_keys(root, file, seen_nodes);
    return root;
  } catch (const YAML::ParserException& e) {
    throw Error(file + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) +
                ": malformed YAML: " + e.msg);
  }
}

// Validate a YAML map against a schema. `skip` lists keys the caller handles itself.
Params validate_section(const YAML::Node& node, const Schema& schema, const std::string& section, const Source& src,
                        const std::set<std::string>& skip) {
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
    const auto typed = src.overridden.find(path);
    if (present && spec.type == ParamType::String && typed != src.overridden.end() && !typed->second.empty() &&
        typed->second[0] != '"' && typed->second[0] != '\'') {
      // --set key=text for a string key: the text as typed, not as YAML ("Q: a" would be a map,
      // "a #b" would lose "#b"); quote it to have YAML read it.
      out.set(spec.key, node_to_value(YAML::Node(typed->second), spec, src.at(n, path), path));
    } else if (present && !(n.IsNull() && spec.type != ParamType::String)) {
      out.set(spec.key, node_to_value(n, spec, src.at(n, path), path));
    } else if (!spec.default_value.empty()) {
      out.set(spec.key, parse_param_value(spec, spec.default_value, "default of " + path));
    } else {
      throw Error(src.file + ": missing required key '" + path + "' (" + spec.doc + ")");
    }
  }
  return out;
}

void set_yaml_path(YAML::Node root, const std::string& dotted_path, const YAML::Node& value, const std::string& where) {
  std::vector<std::string> parts;
  std::stringstream ss(dotted_path);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  // yaml-cpp nodes are handles: walk down by reassigning a handle, never the node it points to.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    if (!next.IsMap()) throw Error(where + ": '" + parts[i] + "' is not a section");
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
}

YAML::Node params_to_yaml(const Params& p) {
  YAML::Node n(YAML::NodeType::Map);
  for (const auto& [k, v] : p.values()) n[k] = YAML::Load(value_to_yaml(v));
  return n;
}

}  // namespace linearnexus
