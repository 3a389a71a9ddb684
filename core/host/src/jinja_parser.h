#pragma once
// Tokens -> the AST of a chat template, following jinja2/parser.py's grammar and precedence
// (`-2 ** 2` is 4, `not a == b` is not (a == b), filters bind tighter than any operator).
#include <memory>
#include <string>
#include <vector>

#include "jinja_lexer.h"
#include "jinja_value.h"

namespace linearnexus::jinja {

enum class ExprKind {
  Const,
  Name,
  GetAttr,
  GetItem,
  Slice,
  Call,
  Filter,
  Test,
  Neg,
  Pos,
  Not,
  And,
  Or,
  Binary,
  Compare,
  Concat,
  Cond,
  ListLit,
  TupleLit,
  DictLit
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
struct Keyword {
  std::string name;
  ExprPtr value;
};

struct Expr {
  ExprKind kind = ExprKind::Const;
  int line = 0;
  Value value;       // Const
  std::string name;  // Name; GetAttr's attribute; Filter's / Test's name; Binary's / Compare's operators
  std::vector<ExprPtr> args;
  // GetItem: [object, key]; Slice: [object, start, stop, step] (null when absent); Call: [callee,
  // positional...]; Filter: [operand (null inside {% filter %} / {% set %} blocks), positional...];
  // Test: [operand, positional...]; unary: [operand]; And/Or/Binary: [lhs, rhs]; Compare: operands
  // (ops holds the operators between them); Concat: parts; Cond: [test, then, else (may be null)];
  // ListLit/TupleLit: items; DictLit: key, value, key, value...
  std::vector<std::string> ops;
  std::vector<Keyword> kwargs;
  ExprPtr dyn_args, dyn_kwargs;  // f(*a, **k)
};

enum class StmtKind {
  Data,
  Print,
  If,
  For,
  Set,
  SetBlock,
  Macro,
  CallBlock,
  FilterBlock,
  With,
  Break,
  Continue,
  Generation
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// What `set`, `for` and `with` assign to: a name, names to unpack, or a namespace attribute.
struct Target {
  std::vector<std::string> names;
  bool unpack = false;  // `a, b` (also a one-name tuple `a,`)
  std::string attr;     // `ns.attr`: names[0] is the namespace
};

struct Param {
  std::string name;
  ExprPtr default_value;  // null: required
};

struct Stmt {
  StmtKind kind = StmtKind::Data;
  int line = 0;
  std::string text;            // Data; Macro's name
  std::vector<ExprPtr> exprs;  // Print: values; If: conditions; For: [iterable, filter or null];
      // Set: [value]; CallBlock: [call]; FilterBlock / SetBlock: [filter chain or null]; With: values
  std::vector<Body> bodies;     // If: one per condition, then else; For: [body, else]; others: [body]
  std::vector<Target> targets;  // Set / SetBlock / For: [target]; With: one per value
  std::vector<Param> params;    // Macro; CallBlock's caller
  bool uses_varargs = false, uses_kwargs = false;  // Macro / CallBlock: the body reads varargs / kwargs
};

struct Program {
  Body body;
  bool has_generation = false;
};

// Throws linearnexus::Error("chat template line N: ...") on syntax errors, unknown tags, filters or
// tests (Jinja rejects those when compiling) and what the module does not support.
std::unique_ptr<Program> parse_template(const std::string& source, int max_depth);

}  // namespace linearnexus::jinja
