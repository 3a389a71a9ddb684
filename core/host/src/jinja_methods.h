#pragma once
// What templates call on values: str methods (strip, split, startswith, replace, title...),
// dict.get / items / keys / values and list.index / count (the globals are jinja_globals.h's).
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "jinja_eval.h"

namespace linearnexus::jinja {

// obj.name as a callable when it is one of the methods above; Undefined otherwise (and for the
// mutating methods the sandbox refuses: append, pop, update...).
Value bound_method(Evaluator& ev, const Value& obj, const std::string& name);

// Shared with the filters. Results keep the spans of the parts of s they copy.
StrPtr strip(Evaluator& ev, const Str& s, const Value* chars, bool left, bool right);
Value split(Evaluator& ev, const Str& s, const Value& sep, std::int64_t maxsplit, bool from_right);
StrPtr replace(Evaluator& ev, const Str& s, const Str& old, const Str& repl, std::int64_t count);
// 'u' upper, 'l' lower, 't' title, 'c' capitalize: ASCII, Latin-1, Latin Extended-A, Greek and
// Cyrillic letters (the result has no spans: it is not a copy).
std::string case_map(std::string_view s, char kind);
// str.splitlines(): [begin, end) of each line without its line break.
std::vector<std::pair<std::size_t, std::size_t>> split_lines(std::string_view s);

}  // namespace linearnexus::jinja
