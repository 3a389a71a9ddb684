#pragma once
// The names every chat template can call (Jinja's range, dict, namespace and joiner; transformers'
// raise_exception and strftime_now) and Python's `%` string formatting.
#include "jinja_eval.h"

namespace linearnexus::jinja {

// Fills the frame the context's frame sits on.
void add_globals(Frame& globals);

// fmt % args: %s %r %d %i %f %F %e %E %x %X %o %c %% with flags (-+ 0#), width and precision; a
// tuple gives several arguments, anything else one.
StrPtr percent_format(Evaluator& ev, const Str& fmt, const Value& args);

}  // namespace linearnexus::jinja
