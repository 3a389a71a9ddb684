// Python's operators and Jinja's sandboxed attribute / item access (jinja_ops.h).
#include "jinja_ops.h"

#include <cmath>

#include "jinja_globals.h"
#include "jinja_methods.h"

namespace linearnexus::jinja {
namespace {

[[noreturn]] void unsupported(const std::string& op, const Value& a, const Value& b) {
  fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
}

[[noreturn]] void overflow() { fail("integer overflow (LinearNexus's templates have 64-bit integers)"); }
std::int64_t add(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_add_overflow(a, b, &r)) overflow();
  return r;
}
std::int64_t sub(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_sub_overflow(a, b, &r)) overflow();
  return r;
}
std::int64_t mul(std::int64_t a, std::int64_t b) {
  std::int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) overflow();
  return r;
}

Value repeat(Evaluator& ev, const Value& seq, std::int64_t n) {
  if (n < 0) n = 0;
  if (seq.is_str()) {
    StrBuilder b = ev.builder();
    for (std::int64_t i = 0; i < n; ++i) b.add(seq.str());
    return Value::string(b.done());
  }
  const List& l = seq.list();
  if (l.kind == List::Iterator) fail("unsupported operand type(s) for *: 'generator' and 'int'");
  if (!l.items.empty() && std::uint64_t(n) > ev.budget.max_string / 16 / l.items.size()) fail("a list grew too large");
  std::vector<Value> out;
  for (std::int64_t i = 0; i < n; ++i) {
    ev.budget.charge(l.items.size());
    out.insert(out.end(), l.items.begin(), l.items.end());
  }
  return ev.list(std::move(out), l.kind);
}

std::int64_t int_pow(std::int64_t base, std::int64_t exp) {  // by squaring: O(log exp) even for 1 ** 10**18
  std::int64_t result = 1;
  while (exp > 0) {
    if (exp & 1) result = mul(result, base);
    exp >>= 1;
    if (exp > 0) base = mul(base, base);
  }
  return result;
}

bool is_list(const Value& v) { return v.is(Type::List) && v.list().kind != List::Iterator; }

}  // namespace

Value binary_op(Evaluator& ev, const std::string& op, const Value& a, const Value& b) {
  a.defined();
  b.defined();
  if (a.is_number() && b.is_number()) {
    bool ints = a.is_int() && b.is_int();
    std::int64_t x = ints ? a.as_int() : 0, y = ints ? b.as_int() : 0;
    double p = a.as_double(), q = b.as_double();
    if (op == "+") return ints ? Value::integer(add(x, y)) : Value::number(p + q);
    if (op == "-") return ints ? Value::integer(sub(x, y)) : Value::number(p - q);
    if (op == "*") return ints ? Value::integer(mul(x, y)) : Value::number(p * q);
    if (op == "/") {
      if (q == 0) fail("division by zero");
      return Value::number(p / q);
    }
    if (op == "//" || op == "%") {
      if (ints ? y == 0 : q == 0) fail(ints ? "integer division or modulo by zero" : "float division by zero");
      if (ints) {
        if (x == INT64_MIN && y == -1) overflow();
        std::int64_t d = x / y, m = x % y;
        if (m != 0 && ((m < 0) != (y < 0))) {  // Python floors toward -infinity
          --d;
          m += y;
        }
        return Value::integer(op == "//" ? d : m);
      }
      double m = std::fmod(p, q);
      if (m != 0 && ((m < 0) != (q < 0))) m += q;
      return Value::number(op == "//" ? std::floor((p - m) / q + 0.5) : m);
    }
    if (op == "**") {
      if (ints && y >= 0) return Value::integer(int_pow(x, y));
      if (p == 0 && q < 0) fail("0.0 cannot be raised to a negative power");
      return Value::number(std::pow(p, q));
    }
  }
  if (op == "+") {
    if (a.is_str() && b.is_str()) {
      StrBuilder out = ev.builder();
      out.add(a.str());
      out.add(b.str());
      return Value::string(out.done());
    }
    if (is_list(a) && is_list(b) && a.list().kind == b.list().kind) {
      std::vector<Value> items = a.list().items;
      ev.budget.charge(items.size() + b.list().items.size());
      items.insert(items.end(), b.list().items.begin(), b.list().items.end());
      return ev.list(std::move(items), a.list().kind);
    }
  }
  if (op == "*") {
    if ((a.is_str() || a.is(Type::List)) && b.is_int()) return repeat(ev, a, b.as_int());
    if ((b.is_str() || b.is(Type::List)) && a.is_int()) return repeat(ev, b, a.as_int());
  }
  if (op == "%" && a.is_str()) return Value::string(percent_format(ev, a.str(), b));
  unsupported(op, a, b);
}

Value negate(const Value& v, bool minus) {
  v.defined();
  if (v.is_int()) return Value::integer(minus ? sub(0, v.as_int()) : v.as_int());
  if (v.is(Type::Float)) return Value::number(minus ? -v.as_double() : v.as_double());
  fail(std::string("bad operand type for unary ") + (minus ? "-" : "+") + ": '" + type_name(v) + "'");
}

bool contains(const Value& container, const Value& needle) {
  switch (container.type()) {
    case Type::Undefined:
      return false;
    case Type::Str:
      if (!needle.is_str())
        fail(std::string("'in <string>' requires string as left operand, not ") + type_name(needle));
      return container.str().s.find(needle.str().s) != std::string::npos;
    case Type::List: {
      const List& l = container.list();
      if (l.kind == List::Iterator) {
        if (l.consumed) return false;
        l.consumed = true;
      }
      for (const Value& item : l.items)
        if (equals(item, needle)) return true;
      return false;
    }
    case Type::Dict:
      return needle.is_str() && container.dict().find(needle.str().s) != nullptr;
    default:
      fail(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

Value getattr(Evaluator& ev, const Value& obj, const std::string& name) {
  obj.defined();
  if (name.empty() || name[0] == '_') return Value::undefined("access to attribute '" + name + "' is unsafe");
  Value method = bound_method(ev, obj, name);
  if (!method.is_undefined()) return method;
  if (obj.is(Type::Dict)) {
    if (const Value* v = obj.dict().find(name)) return *v;
  } else if (obj.is(Type::Namespace)) {
    if (const Value* v = std::get<NsPtr>(obj.v)->attrs.find(name)) return *v;
  }
  return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute '" + name + "'");
}

Value getitem(Evaluator& ev, const Value& obj, const Value& key) {
  obj.defined();
  if (key.is_int()) {
    std::int64_t i = key.as_int();
    if (obj.is_str()) {
      auto offsets = utf8_offsets(obj.str().s);
      std::int64_t n = std::int64_t(offsets.size()) - 1;
      if (i < 0) i += n;
      if (i >= 0 && i < n) return substring(ev, obj.str(), offsets[i], offsets[i + 1]);
    } else if (is_list(obj)) {
      std::int64_t n = std::int64_t(obj.list().items.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.list().items[i];
    }
    return Value::undefined(std::string("'") + type_name(obj) + " object' has no element " +
                            std::to_string(key.as_int()));
  }
  if (key.is_str()) {
    // Jinja tries obj[key] then getattr(obj, key): for a dict the key wins over its methods.
    if (obj.is(Type::Dict))
      if (const Value* v = obj.dict().find(key.str().s)) return *v;
    return getattr(ev, obj, key.str().s);
  }
  return Value::undefined(std::string("'") + type_name(obj) + " object' has no element " + py_repr(key, ev.budget));
}

Value substring(Evaluator& ev, const Str& s, std::size_t b, std::size_t e) {
  StrBuilder out = ev.builder();
  out.copy(s, b, e);
  return Value::string(out.done());
}

Value slice(Evaluator& ev, const Value& obj, const Value& start, const Value& stop, const Value& step) {
  obj.defined();
  bool is_str = obj.is_str();
  if (!is_str && !is_list(obj))
    return Value::undefined(std::string("'") + type_name(obj) + "' object is not subscriptable");
  for (const Value* v : {&start, &stop, &step})
    if (!v->is_none() && !v->is_int()) fail("slice indices must be integers or None");
  std::vector<std::size_t> offsets;
  if (is_str) offsets = utf8_offsets(obj.str().s);
  std::int64_t n = is_str ? std::int64_t(offsets.size()) - 1 : std::int64_t(obj.list().items.size());
  std::int64_t st = step.is_none() ? 1 : step.as_int();
  if (st == 0) fail("slice step cannot be zero");
  // slice.indices(n), as CPython computes it.
  std::int64_t lower = st > 0 ? 0 : -1, upper = st > 0 ? n : n - 1;
  auto clamp = [&](const Value& v, std::int64_t fallback) {
    if (v.is_none()) return fallback;
    std::int64_t i = v.as_int();
    if (i < 0) i = std::max(i + n, lower);
    return std::min(i, upper);
  };
  std::int64_t b = clamp(start, st > 0 ? lower : upper), e = clamp(stop, st > 0 ? upper : lower);
  ev.budget.charge(std::size_t(std::max<std::int64_t>(0, (e - b) / st)));
  if (is_str) {
    StrBuilder out = ev.builder();
    if (st == 1) {
      if (b < e) out.copy(obj.str(), offsets[b], offsets[e]);
    } else {
      for (std::int64_t i = b; st > 0 ? i < e : i > e; i += st) out.copy(obj.str(), offsets[i], offsets[i + 1]);
    }
    return Value::string(out.done());
  }
  std::vector<Value> items;
  for (std::int64_t i = b; st > 0 ? i < e : i > e; i += st) items.push_back(obj.list().items[i]);
  return ev.list(std::move(items), obj.list().kind);
}

std::vector<Value> iterate(Evaluator& ev, const Value& v) {
  std::vector<Value> out;
  switch (v.type()) {
    case Type::Undefined:
      return out;
    case Type::Str: {
      auto offsets = utf8_offsets(v.str().s);
      ev.budget.charge(offsets.size());
      for (std::size_t i = 0; i + 1 < offsets.size(); ++i)
        out.push_back(substring(ev, v.str(), offsets[i], offsets[i + 1]));
      return out;
    }
    case Type::List: {
      const List& l = v.list();
      if (l.kind == List::Iterator) {
        if (l.consumed) return out;
        l.consumed = true;
      }
      ev.budget.charge(l.items.size());
      return l.items;
    }
    case Type::Dict:
      ev.budget.charge(v.dict().items.size());
      for (const auto& item : v.dict().items) out.push_back(Value::text(item.first));
      return out;
    default:
      fail(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

}  // namespace linearnexus::jinja
