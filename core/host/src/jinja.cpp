// The chat-template API (jinja.h): the context read into template values, messages' strings tagged
// with their message, and the render's spans handed back.
#include "jinja.h"

#include <algorithm>

#include "jinja_eval.h"
#include "jinja_globals.h"
#include "jinja_parser.h"
#include "linearnexus/error.h"

namespace linearnexus::jinja {
namespace {

using ojson = nlohmann::ordered_json;

// `message` >= 0: the value is (inside) messages[message]; its strings are tagged with it, except the
// message's own "role" (never text anyone wrote).
// Each tagged string gets its own source number (spans merge only within one source).
Value from_json(const ojson& j, const Budget& budget, int message, int depth, bool is_message, std::uint32_t& sources) {
  if (depth > budget.max_value_depth)
    fail("the context nests more than " + std::to_string(budget.max_value_depth) + " levels deep");
  switch (j.type()) {
    case ojson::value_t::null:
      return Value::none();
    case ojson::value_t::boolean:
      return Value::boolean(j.get<bool>());
    case ojson::value_t::number_integer:
      return Value::integer(j.get<std::int64_t>());
    case ojson::value_t::number_unsigned: {
      auto u = j.get<std::uint64_t>();
      if (u > std::uint64_t(INT64_MAX)) fail("the context has an integer beyond 64 bits: " + std::to_string(u));
      return Value::integer(std::int64_t(u));
    }
    case ojson::value_t::number_float:
      return Value::number(j.get<double>());
    case ojson::value_t::string: {
      auto s = std::make_shared<Str>();
      s->s = j.get<std::string>();
      if (!utf8_valid(s->s)) fail("the context has a string that is not valid UTF-8");
      if (message >= 0 && !s->s.empty()) s->spans.push_back(Span{0, s->s.size(), message, Span::Content, ++sources, 0});
      return Value::string(std::move(s));
    }
    case ojson::value_t::array: {
      std::vector<Value> items;
      for (const auto& item : j) items.push_back(from_json(item, budget, message, depth + 1, false, sources));
      return make_list(std::move(items), List::Plain, budget);
    }
    case ojson::value_t::object: {
      Dict d;
      if (is_message) d.message = message;
      for (const auto& [key, val] : j.items())
        d.set(key, from_json(val, budget, is_message && key == "role" ? -1 : message, depth + 1, false, sources));
      return make_dict(std::move(d), budget);
    }
    default:
      fail("the context holds a value JSON text cannot (binary data)");
  }
}

FramePtr make_root(const ojson& context, const Limits& limits) {
  if (!context.is_object())
    throw Error("chat template context must be a JSON object, not " + std::string(context.type_name()));
  Budget budget;
  budget.max_steps = limits.max_steps;
  budget.max_string = limits.max_string_bytes;
  budget.max_value_depth = limits.max_value_depth;
  auto globals = std::make_shared<Frame>();
  add_globals(*globals);
  auto root = std::make_shared<Frame>();
  root->parent = globals;
  std::uint32_t sources = 0;
  try {
    for (const auto& [key, val] : context.items()) {
      if (key == "messages" && val.is_array()) {
        std::vector<Value> messages;
        int i = 0;
        for (const auto& m : val) {
          messages.push_back(from_json(m, budget, i, 1, m.is_object(), sources));
          ++i;
        }
        root->set(key, make_list(std::move(messages), List::Plain, budget));
      } else {
        root->set(key, from_json(val, budget, -1, 0, false, sources));
      }
    }
  } catch (const Failure& f) {
    throw Error(std::string("chat template context: ") + f.what());
  }
  return root;
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& text, Limits limits)
    : program_(parse_template(text, limits.max_parse_depth)), limits_(limits) {}

ChatTemplate::~ChatTemplate() = default;

bool ChatTemplate::has_generation_blocks() const { return program_->has_generation; }

ChatRender ChatTemplate::render_with_spans(const nlohmann::ordered_json& context) const {
  FramePtr root = make_root(context, limits_);
  ChatRender r;
  Str out;
  {
    Evaluator ev(*program_, limits_);
    out = ev.render(root, r.turns);
  }
  root->vars.clear();
  r.text = std::move(out.s);
  for (const Span& s : out.spans)
    (s.kind == Span::Generation ? r.generation : r.content).push_back(OutputSpan{s.begin, s.end, s.message});
  auto by_begin = [](const OutputSpan& a, const OutputSpan& b) { return a.begin < b.begin; };
  std::stable_sort(r.content.begin(), r.content.end(), by_begin);
  std::stable_sort(r.generation.begin(), r.generation.end(), by_begin);
  return r;
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  return render_with_spans(context).text;
}

std::string render_chat_template(const std::string& template_text, const nlohmann::ordered_json& context) {
  return ChatTemplate(template_text).render(context);
}

std::string render_chat_template(const std::string& template_text, const nlohmann::json& context) {
  return ChatTemplate(template_text).render(nlohmann::ordered_json(context));
}

std::vector<OutputSpan> assistant_spans(const ChatRender& render, const nlohmann::ordered_json& messages,
                                        bool template_has_generation_blocks) {
  if (template_has_generation_blocks) return render.generation;
  std::vector<OutputSpan> out;
  if (!messages.is_array()) return out;
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    if (!m.is_object() || m.value("role", std::string()) != "assistant") continue;
    const OutputSpan* first = nullptr;
    const OutputSpan* last = nullptr;
    for (const OutputSpan& s : render.content)
      if (s.message == int(i)) {
        if (!first) first = &s;
        last = &s;
      }
    if (!first) continue;
    std::size_t end = last->end;
    for (const OutputSpan& t : render.turns)  // through the end of the turn holding the last copied byte
      if (t.message == int(i) && t.begin < last->end && last->end <= t.end) end = std::max(end, t.end);
    out.push_back(OutputSpan{first->begin, end, int(i)});
  }
  return out;
}

}  // namespace linearnexus::jinja
