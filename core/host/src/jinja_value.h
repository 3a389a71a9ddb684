#pragma once
// The values chat templates compute with (jinja.h says why our own variant): Python's types as
// Jinja exposes them, strings that carry provenance spans, and the Python behaviours templates
// observe (str()/repr(), ==, <, truthiness; json.dumps is jinja_json.h's).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace linearnexus::jinja {

// A failure while rendering; the evaluator adds the template line and rethrows it as linearnexus::Error.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] void fail(const std::string& message);

// Where a run of a string's bytes came from (jinja.h: loss masking). A Content span is one
// contiguous copy: bytes [offset, offset + end - begin) of the context string numbered `source`.
struct Span {
  enum Kind : std::uint8_t { Content, Generation };
  std::size_t begin = 0, end = 0;
  int message = -1;
  Kind kind = Content;
  std::uint32_t source = 0;
  std::size_t offset = 0;
};

// UTF-8 text with its provenance spans (sorted by begin; spans of one kind never overlap).
struct Str {
  std::string s;
  std::vector<Span> spans;
};
using StrPtr = std::shared_ptr<const Str>;

// Steps, sizes and nesting a render may use (jinja.h: Limits); shared by everything that allocates.
struct Budget {
  std::uint64_t steps = 0, max_steps = 0;
  std::size_t max_string = 0;
  int max_value_depth = 64;
  void charge(std::uint64_t n) {
    steps += n;
    if (steps > max_steps) over_steps();
  }
  void charge_bytes(std::size_t n) { charge(n / 16 + 1); }
  [[noreturn]] void over_steps() const;
};

struct Value;
struct List;
struct Dict;
struct Namespace;
struct Callable;
struct Undefined {
  std::shared_ptr<const std::string> what;  // the error using it gives, e.g. "'x' is undefined"
};
struct None {};

using ListPtr = std::shared_ptr<const List>;
using DictPtr = std::shared_ptr<const Dict>;
using NsPtr = std::shared_ptr<Namespace>;
using FnPtr = std::shared_ptr<const Callable>;

// The variant's order is Type's.
enum class Type { Undefined, None, Bool, Int, Float, Str, List, Dict, Namespace, Callable };

struct Value {
  std::variant<Undefined, None, bool, std::int64_t, double, StrPtr, ListPtr, DictPtr, NsPtr, FnPtr> v;

  static Value undefined(std::string what);
  static Value none() { return Value{None{}}; }
  static Value boolean(bool b) { return Value{b}; }
  static Value integer(std::int64_t i) { return Value{i}; }
  static Value number(double d) { return Value{d}; }
  static Value text(std::string s);
  static Value string(StrPtr s) { return Value{std::move(s)}; }

  Type type() const { return static_cast<Type>(v.index()); }
  bool is(Type t) const { return type() == t; }
  bool is_undefined() const { return is(Type::Undefined); }
  bool is_none() const { return is(Type::None); }
  bool is_str() const { return is(Type::Str); }
  bool is_int() const { return is(Type::Int) || is(Type::Bool); }  // Python's bool is an int
  bool is_number() const { return is_int() || is(Type::Float); }
  const Str& str() const { return *std::get<StrPtr>(v); }
  const StrPtr& str_ptr() const { return std::get<StrPtr>(v); }
  const List& list() const { return *std::get<ListPtr>(v); }
  const Dict& dict() const { return *std::get<DictPtr>(v); }
  std::int64_t as_int() const { return is(Type::Bool) ? std::get<bool>(v) : std::get<std::int64_t>(v); }
  double as_double() const { return is(Type::Float) ? std::get<double>(v) : double(as_int()); }
  // Using an Undefined for anything but printing, testing or iterating fails with its message.
  const Value& defined() const;
};

struct List {
  // Iterator: a generator (map, select, items...): always true, no len(), iterated once.
  enum Kind : std::uint8_t { Plain, Tuple, Iterator };
  std::vector<Value> items;
  Kind kind = Plain;
  int depth = 1;                  // nesting of lists / dicts inside, checked against max_value_depth
  mutable bool consumed = false;  // an Iterator already iterated
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;  // insertion order, as Python's dicts
  int message = -1;                                  // >= 0: this dict is context["messages"][message] (jinja.h: turns)
  int depth = 1;
  const Value* find(std::string_view key) const;
  void set(std::string key, Value value);

 private:
  std::unordered_map<std::string, std::size_t> index_;  // built once a dict is large
};

struct Namespace {  // namespace(): the one mutable object templates have
  Dict attrs;
};

class Evaluator;
struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};
struct Callable {
  std::string name;
  std::function<Value(Evaluator&, CallArgs&)> fn;
};

Value make_list(std::vector<Value> items, List::Kind kind, const Budget& budget);
Value make_dict(Dict dict, const Budget& budget);  // computes depth, checks it

// ---- UTF-8: Python indexes strings by code point ----
std::size_t utf8_length(std::string_view s);
// Byte offset where each code point starts, plus s.size() at the end.
std::vector<std::size_t> utf8_offsets(std::string_view s);
char32_t utf8_next(std::string_view s, std::size_t& i);  // an invalid byte decodes as itself
void utf8_append(std::string& out, char32_t c);
bool utf8_valid(std::string_view s);
bool py_isspace(char32_t c);  // str.isspace / str.split() / str.strip()

// Builds a Str from literal text and slices of tagged strings, keeping the slices' spans.
class StrBuilder {
 public:
  StrBuilder(Budget& budget, std::size_t max_bytes) : budget_(&budget), max_(max_bytes) {}
  void lit(std::string_view text);
  void copy(const Str& src, std::size_t begin, std::size_t end);
  void add(const Str& src) { copy(src, 0, src.s.size()); }
  void tag(std::size_t begin, Span::Kind kind, int message);  // marks [begin, size()) as one span
  std::size_t size() const { return out_.s.size(); }
  const Str& peek() const { return out_; }
  StrPtr done();

 private:
  void reserve_more(std::size_t n);
  void push_span(Span s);
  Budget* budget_;
  std::size_t max_;
  Str out_;
};

// ---- Python behaviours ----
const char* type_name(const Value& v);  // Python's name for errors: 'int', 'NoneType', 'list'...
bool truthy(const Value& v);
bool equals(const Value& a, const Value& b, int depth = 0);
int compare(const Value& a, const Value& b, int depth = 0);  // <0, 0, >0; fails where Python raises
std::string py_float(double d);                              // repr(float)
std::string py_repr(const Value& v, Budget& budget);
StrPtr py_str(const Value& v, Budget& budget);  // str(v): a string keeps its spans

}  // namespace linearnexus::jinja
