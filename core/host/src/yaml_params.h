#pragma once
// Core-internal: the one place YAML nodes become typed parameter values. params.cpp (defaults,
// single values) and config.cpp (the experiment file) both read YAML through these.
#include <yaml-cpp/yaml.h>

#include <map>
#include <set>
#include <string>

#include "linearnexus/host/params_yaml.h"
#include "linearnexus/params.h"

namespace linearnexus {

// "file:line:col" for a node (or just the file when the node has no position, e.g. from --set).
struct Source {
  std::string file;
  // Dotted paths set by --set -> the value as typed (a string key takes it as it is, unless quoted).
  std::map<std::string, std::string> overridden;
  std::string at(const YAML::Node& n, const std::string& path) const {
    if (overridden.count(path)) return "--set " + path;
    auto m = n.Mark();
    if (m.is_null() || m.line < 0) return file;
    return file + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
  }
};

// One value against its spec; `where` prefixes errors ("file:line:col"), `path` names the key.
ParamValue node_to_value(const YAML::Node& n, const ParamSpec& spec, const std::string& where, const std::string& path);
// YAML text -> a node; malformed YAML is an Error naming file:line:col.
YAML::Node load_yaml_text(const std::string& text, const std::string& file);
// Validate a YAML map against a schema: unknown keys (with the nearest valid one), types, defaults,
// required keys. `skip` lists keys the caller handles itself.
Params validate_section(const YAML::Node& node, const Schema& schema, const std::string& section, const Source& src,
                        const std::set<std::string>& skip = {});
// Params -> a YAML map (the resolved experiment).
YAML::Node params_to_yaml(const Params& p);
// root[a][b][c] = value for the dotted path "a.b.c", making the maps on the way (--set; a Hugging Face
// adapter's model fields). A step through a key that holds something other than a map is an Error,
// prefixed with `where`.
void set_yaml_path(YAML::Node root, const std::string& dotted_path, const YAML::Node& value, const std::string& where);

}  // namespace linearnexus
