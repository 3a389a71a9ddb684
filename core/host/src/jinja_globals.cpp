// The chat-template globals and `%` formatting (jinja_globals.h).
#include "jinja_globals.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "jinja_ops.h"

namespace linearnexus::jinja {
namespace {

Value function(std::string name, std::function<Value(Evaluator&, CallArgs&)> fn) {
  auto c = std::make_shared<Callable>();
  c->name = std::move(name);
  c->fn = std::move(fn);
  return Value{FnPtr(std::move(c))};
}

// range(stop) / range(start, stop[, step]); the sandbox's limit of 100000 items (MAX_RANGE).
Value range(Evaluator& ev, CallArgs& args) {
  if (!args.kw.empty()) fail("range() takes no keyword arguments");
  if (args.pos.empty() || args.pos.size() > 3)
    fail("range expected 1 to 3 arguments, got " + std::to_string(args.pos.size()));
  for (const Value& v : args.pos)
    if (!v.defined().is_int()) fail(std::string("'") + type_name(v) + "' object cannot be interpreted as an integer");
  std::int64_t start = 0, stop = 0, step = 1;
  if (args.pos.size() == 1) {
    stop = args.pos[0].as_int();
  } else {
    start = args.pos[0].as_int();
    stop = args.pos[1].as_int();
    if (args.pos.size() == 3) step = args.pos[2].as_int();
  }
  if (step == 0) fail("range() arg 3 must not be zero");
  long double count = step > 0 ? (stop > start ? ((long double)stop - start + step - 1) / step : 0)
                               : (start > stop ? ((long double)start - stop - step - 1) / -step : 0);
  if (count > 100000) fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
  std::vector<Value> out;
  for (std::int64_t i = 0; i < std::int64_t(count); ++i) out.push_back(Value::integer(start + i * step));
  ev.budget.charge(out.size());
  return ev.list(std::move(out));
}

// dict(...) and namespace(...): an optional mapping (or list of pairs), then keyword arguments.
Dict mapping_args(Evaluator& ev, const char* name, CallArgs& args) {
  Dict d;
  if (args.pos.size() > 1)
    fail(std::string(name) + " expected at most 1 argument, got " + std::to_string(args.pos.size()));
  if (!args.pos.empty()) {
    const Value& src = args.pos[0].defined();
    if (src.is(Type::Dict)) {
      for (const auto& [k, v] : src.dict().items) d.set(k, v);
    } else {
      for (const Value& pair : iterate(ev, src)) {
        if (!pair.is(Type::List) || pair.list().items.size() != 2 || !pair.list().items[0].is_str())
          fail(std::string(name) + "(): each item must be a (str, value) pair");
        d.set(pair.list().items[0].str().s, pair.list().items[1]);
      }
    }
  }
  for (auto& [k, v] : args.kw) d.set(k, v);
  return d;
}

Value strftime_now(Evaluator&, CallArgs& args) {
  Args a("strftime_now", args, {"format"});
  const Value& fmt = a.required(0);
  if (!fmt.is_str()) fail("strftime_now() argument must be str");
  if (fmt.str().s.empty()) return Value::text("");
  // SOURCE_DATE_EPOCH (the reproducible-builds convention), when set to whole seconds, stands for now:
  // a rendering that does not change with the clock (the tests' oracle reads it too, so a run across
  // midnight compares the same date).
  std::time_t now = std::time(nullptr);
  if (const char* epoch = std::getenv("SOURCE_DATE_EPOCH");
      epoch && *epoch && std::strspn(epoch, "0123456789") == std::strlen(epoch) && std::strlen(epoch) < 16)
    now = static_cast<std::time_t>(std::stoll(epoch));
  std::tm local{};
  localtime_r(&now, &local);
  std::string buf(256, '\0');
  for (;;) {  // strftime returns 0 when the buffer is too small
    std::size_t n = std::strftime(&buf[0], buf.size(), fmt.str().s.c_str(), &local);
    if (n > 0 || buf.size() > 4096) return Value::text(buf.substr(0, n));
    buf.resize(buf.size() * 2);
  }
}

}  // namespace

void add_globals(Frame& g) {
  g.set("range", function("range", range));
  g.set("dict", function("dict", [](Evaluator& ev, CallArgs& args) {
          return make_dict(mapping_args(ev, "dict", args), ev.budget);
        }));
  g.set("namespace", function("namespace", [](Evaluator& ev, CallArgs& args) {
          NsPtr ns = ev.new_namespace();
          for (auto& [k, v] : mapping_args(ev, "namespace", args).items) ns->attrs.set(k, v);
          return Value{ns};
        }));
  g.set("joiner", function("joiner", [](Evaluator&, CallArgs& args) {
          Args a("joiner", args, {"sep"});
          Value sep = a.get_or(0, Value::text(", "));
          auto used = std::make_shared<bool>(false);
          return function("joiner", [sep, used](Evaluator&, CallArgs&) {  // "" the first time, sep after
            bool first = !*used;
            *used = true;
            return first ? Value::text("") : sep;
          });
        }));
  g.set("raise_exception", function("raise_exception", [](Evaluator& ev, CallArgs& args) -> Value {
          Args a("raise_exception", args, {"message"});
          fail(py_str(a.get_or(0, Value::text("")), ev.budget)->s);
        }));
  g.set("strftime_now", function("strftime_now", strftime_now));
  for (const char* name : {"cycler", "lipsum"}) {
    std::string n = name;
    g.set(n, function(n, [n](Evaluator&, CallArgs&) -> Value { fail(n + "() is not supported in chat templates"); }));
  }
}

StrPtr percent_format(Evaluator& ev, const Str& fmt, const Value& args) {
  std::vector<Value> values;
  bool tuple = args.is(Type::List) && args.list().kind == List::Tuple;
  if (tuple)
    values = args.list().items;
  else
    values.push_back(args);
  std::size_t next = 0;
  auto take = [&]() -> const Value& {
    if (next >= values.size()) fail("not enough arguments for format string");
    return values[next++];
  };
  StrBuilder out = ev.builder();
  const std::string& f = fmt.s;
  std::size_t run = 0;
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (f[i] != '%') continue;
    out.copy(fmt, run, i);
    std::size_t j = i + 1;
    if (j < f.size() && f[j] == '(') fail("%(name) formatting is not supported");
    std::string flags;
    while (j < f.size() && std::string("-+ 0#").find(f[j]) != std::string::npos) flags += f[j++];
    // Digits or `*` (the next argument; a negative width left-justifies); capped, so no field is
    // larger than a C buffer and no padding is built before the size limits see it.
    auto number = [&](bool is_width) -> long {
      long n = -1;
      if (j < f.size() && f[j] == '*') {
        std::int64_t v = take().defined().as_int();
        ++j;
        if (v < 0 && is_width) flags += '-';
        n = long(std::min<std::int64_t>(v < 0 ? (is_width ? -v : 0) : v, 100000));
      } else {
        while (j < f.size() && f[j] >= '0' && f[j] <= '9')
          n = std::min<long>((n < 0 ? 0 : n) * 10 + (f[j++] - '0'), 100000);
      }
      if (n > 400) fail("a %-format width or precision above 400 is not supported");
      return n;
    };
    long width = number(true), precision = -1;
    bool has_precision = j < f.size() && f[j] == '.';
    if (has_precision) {
      ++j;
      precision = std::max(0L, number(false));
    }
    while (j < f.size() && (f[j] == 'h' || f[j] == 'l' || f[j] == 'L')) ++j;
    if (j >= f.size()) fail("incomplete format");
    char conv = f[j];
    run = j + 1;
    i = j;
    if (conv == '%') {
      out.lit("%");
      continue;
    }
    const Value& v = take().defined();
    std::string spec = "%" + flags + (width >= 0 ? std::to_string(width) : "") +
                       (has_precision ? "." + std::to_string(precision) : "");
    std::string piece;
    char buf[512];
    if (conv == 's' || conv == 'r' || conv == 'a') {
      StrPtr text = conv == 's' ? py_str(v, ev.budget) : Value::text(py_repr(v, ev.budget)).str_ptr();
      auto offsets = utf8_offsets(text->s);
      std::size_t n = offsets.size() - 1;
      if (has_precision) n = std::min<std::size_t>(n, std::size_t(precision));
      std::size_t w = width < 0 ? 0 : std::size_t(width);
      bool left = flags.find('-') != std::string::npos;
      std::string pad(w > n ? w - n : 0, ' ');
      if (!left) out.lit(pad);
      out.copy(*text, 0, offsets[n]);
      if (left) out.lit(pad);
      continue;
    }
    if (conv == 'd' || conv == 'i' || conv == 'u' || conv == 'x' || conv == 'X' || conv == 'o' || conv == 'c') {
      if (!v.is_number()) fail(std::string("%") + conv + " format: a real number is required, not " + type_name(v));
      if (v.is(Type::Float) && conv != 'd' && conv != 'i' && conv != 'u')
        fail(std::string("%") + conv + " format: an integer is required, not float");
      long long n = v.is(Type::Float) ? static_cast<long long>(v.as_double()) : v.as_int();
      if (conv == 'c') {
        if (n < 0 || n > 0x10ffff) fail("%c arg not in range(0x110000)");
        if (n >= 0xd800 && n <= 0xdfff) fail("%c of a surrogate code point is not text");
        utf8_append(piece, static_cast<char32_t>(n));
      } else {
        std::snprintf(buf, sizeof buf, (spec + "ll" + (conv == 'i' || conv == 'u' ? 'd' : conv)).c_str(), n);
        piece = buf;
      }
    } else if (std::string("fFeEgG").find(conv) != std::string::npos) {
      if (!v.is_number()) fail(std::string("must be real number, not ") + type_name(v));
      std::snprintf(buf, sizeof buf, (spec + conv).c_str(), v.as_double());
      piece = buf;
    } else {
      fail(std::string("unsupported format character '") + conv + "'");
    }
    out.lit(piece);
  }
  out.copy(fmt, run, f.size());
  if (next < values.size() && (tuple || !args.is(Type::Dict)))
    fail("not all arguments converted during string formatting");
  return out.done();
}

}  // namespace linearnexus::jinja
