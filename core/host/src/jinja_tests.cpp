// Jinja's tests for chat templates (jinja_tests.h).
#include "jinja_tests.h"

#include <algorithm>

#include "jinja_filters.h"
#include "jinja_ops.h"

namespace linearnexus::jinja {
namespace {

const char* const kTests[] = {"!=",       "<",        "<=",          "==",       ">",           ">=",       "boolean",
                              "callable", "defined",  "divisibleby", "eq",       "equalto",     "escaped",  "even",
                              "false",    "filter",   "float",       "ge",       "greaterthan", "gt",       "in",
                              "integer",  "iterable", "le",          "lessthan", "lower",       "lt",       "mapping",
                              "ne",       "none",     "number",      "odd",      "sameas",      "sequence", "string",
                              "test",     "true",     "undefined",   "upper"};

}  // namespace

bool is_jinja_test(const std::string& name) {
  return std::any_of(std::begin(kTests), std::end(kTests), [&](const char* t) { return name == t; });
}

bool apply_test(Evaluator& ev, const std::string& t, const Value& v, CallArgs& args) {
  auto arg = [&]() -> const Value& {
    Args a(t, args, {"other"});
    static const Value missing = Value::undefined("the test needs an argument");
    const Value* got = a.get(0);
    return got ? *got : missing;
  };
  if (t == "defined") return !v.is_undefined();
  if (t == "undefined") return v.is_undefined();
  if (t == "none") return v.is_none();
  if (t == "string") return v.is_str();
  if (t == "mapping") return v.is(Type::Dict);
  if (t == "boolean") return v.is(Type::Bool);
  if (t == "true" || t == "false") return v.is(Type::Bool) && std::get<bool>(v.v) == (t == "true");
  if (t == "integer") return v.is(Type::Int);
  if (t == "float") return v.is(Type::Float);
  if (t == "number") return v.is_number();
  if (t == "callable") return v.is(Type::Callable);
  if (t == "iterable") return v.is_undefined() || v.is_str() || v.is(Type::List) || v.is(Type::Dict);
  if (t == "sequence")
    return v.is_undefined() || v.is_str() || (v.is(Type::List) && v.list().kind != List::Iterator) || v.is(Type::Dict);
  if (t == "escaped") return false;
  if (t == "lower" || t == "upper") {
    const std::string s = py_str(v, ev.budget)->s;
    CallArgs none;
    return truthy(ev.call(getattr(ev, Value::text(s), t == "lower" ? "islower" : "isupper"), none));
  }
  if (t == "odd" || t == "even" || t == "divisibleby") {
    if (!v.defined().is_number())
      fail(std::string("unsupported operand type(s) for %: '") + type_name(v) + "' and 'int'");
    Value divisor = t == "divisibleby" ? arg().defined() : Value::integer(2);
    Value rem = binary_op(ev, "%", v, divisor);
    return t == "odd" ? truthy(rem) : !truthy(rem);
  }
  if (t == "==" || t == "eq" || t == "equalto") return equals(v, arg());
  if (t == "!=" || t == "ne") return !equals(v, arg());
  if (t == "<" || t == "lt" || t == "lessthan") return compare(v, arg()) < 0;
  if (t == "<=" || t == "le") return compare(v, arg()) <= 0;
  if (t == ">" || t == "gt" || t == "greaterthan") return compare(v, arg()) > 0;
  if (t == ">=" || t == "ge") return compare(v, arg()) >= 0;
  if (t == "in") return contains(arg(), v);
  if (t == "sameas") {
    const Value& o = arg();
    if (v.type() != o.type()) return false;
    if (v.is_none() || v.is_undefined()) return true;
    if (v.is(Type::Bool)) return std::get<bool>(v.v) == std::get<bool>(o.v);
    if (v.is(Type::Int))
      return v.as_int() == o.as_int() && v.as_int() >= -5 && v.as_int() <= 256;  // CPython's small ints
    if (v.is_str()) return v.str_ptr() == o.str_ptr();
    if (v.is(Type::List)) return std::get<ListPtr>(v.v) == std::get<ListPtr>(o.v);
    if (v.is(Type::Dict)) return std::get<DictPtr>(v.v) == std::get<DictPtr>(o.v);
    return equals(v, o);
  }
  if (t == "filter" || t == "test") {
    const Value& name = v;
    return name.is_str() && (t == "filter" ? is_jinja_filter(name.str().s) : is_jinja_test(name.str().s));
  }
  fail("the test '" + t + "' is not supported in chat templates");
}

}  // namespace linearnexus::jinja
