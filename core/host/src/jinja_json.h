#pragma once
// json.dumps for the tojson filter, as transformers calls it: ensure_ascii=False, Python's separators
// (", " and ": ", or "," before a newline when indented), float repr, insertion-ordered keys unless
// sort_keys. Characters of a string copied unescaped keep their provenance spans.
#include <string>

#include "jinja_value.h"

namespace linearnexus::jinja {

struct JsonStyle {  // json.dumps arguments transformers' tojson passes on
  int indent = -1;  // -1: None
  std::string item_sep, key_sep;
  bool sort_keys = false;
};
JsonStyle default_json_style(int indent);
void to_json(StrBuilder& out, const Value& v, const JsonStyle& style, int level = 0);

}  // namespace linearnexus::jinja
