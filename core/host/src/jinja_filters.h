#pragma once
// Jinja's filters (`x | trim`, `tools | tojson(indent=4)`, `messages | selectattr('role', 'eq', 'user')`)
// with jinja2/filters.py's behaviour, and tojson as transformers defines it (json.dumps with
// ensure_ascii=False by default).
#include <string>

#include "jinja_eval.h"

namespace linearnexus::jinja {

// The names Jinja knows; any other name is an error when the template is parsed, as in Jinja.
// A few known ones are not implemented (jinja.h lists them) and fail when used.
bool is_jinja_filter(const std::string& name);

Value apply_filter(Evaluator& ev, const std::string& name, const Value& v, CallArgs& args);

}  // namespace linearnexus::jinja
