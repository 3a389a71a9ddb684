#pragma once
// Params to and from YAML text, and schemas as tables: the host's side of the SDK's params.h.
#include <string>

#include "linearnexus/params.h"

namespace linearnexus {

// A value as YAML text ("4", "0.1", "true", "[0.9, 0.95]", "\"auto\"").
std::string value_to_yaml(const ParamValue& value);
// Parse one scalar/list given as YAML text against a spec ("" for a required key throws).
ParamValue parse_param_value(const ParamSpec& spec, const std::string& yaml_text, const std::string& where);
// The schema's defaults as Params (throws if a key is required).
Params params_from_defaults(const Schema& schema, const std::string& section);
// Human-readable table of a schema: key, type, default, doc.
std::string describe_schema(const Schema& schema);
// The same as a Markdown table (docs/config.md is generated from the schemas: `linearnexus docs`).
std::string describe_schema_markdown(const Schema& schema);

}  // namespace linearnexus
