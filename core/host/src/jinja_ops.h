#pragma once
// Operators, attribute / item access and iteration with Python's semantics, as Jinja's sandbox
// applies them (a missing key or index gives Undefined, `_private` attributes and mutating methods
// are not reachable).
#include <string>
#include <vector>

#include "jinja_eval.h"

namespace linearnexus::jinja {

// + - * / // % ** (op is the operator's text); fails where Python raises (ints are 64-bit here:
// an overflow fails too).
Value binary_op(Evaluator& ev, const std::string& op, const Value& a, const Value& b);
Value negate(const Value& v, bool minus);
bool contains(const Value& container, const Value& needle);  // Python's `needle in container`

Value getattr(Evaluator& ev, const Value& obj, const std::string& name);  // obj.name
Value getitem(Evaluator& ev, const Value& obj, const Value& key);         // obj[key]
Value slice(Evaluator& ev, const Value& obj, const Value& start, const Value& stop, const Value& step);

// Python's iter(): a string's characters (keeping their spans), a dict's keys, a generator once;
// Undefined iterates as nothing; None or a number fails.
std::vector<Value> iterate(Evaluator& ev, const Value& v);

// The substring of s between code points [b, e), keeping its spans.
Value substring(Evaluator& ev, const Str& s, std::size_t b_byte, std::size_t e_byte);

}  // namespace linearnexus::jinja
