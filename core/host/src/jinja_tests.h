#pragma once
// Jinja's tests (`x is defined`, `x is string`, `m is mapping`, `n is divisibleby 3`...), with
// jinja2/tests.py's behaviour.
#include <string>

#include "jinja_eval.h"

namespace linearnexus::jinja {

// The names Jinja knows; any other name is an error when the template is parsed, as in Jinja.
bool is_jinja_test(const std::string& name);

bool apply_test(Evaluator& ev, const std::string& name, const Value& v, CallArgs& args);

}  // namespace linearnexus::jinja
