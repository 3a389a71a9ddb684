#pragma once
// Hugging Face chat templates rendered in C++: the subset of Jinja2 that `tokenizer_config.json`
// templates use, with the semantics transformers renders them with (issue 31: chat SFT).
//
// Core-internal (the host's, never a plugin's): only the standard library, nlohmann-json and
// linearnexus/error.h. The files: jinja_lexer (template text -> tokens, with Jinja's whitespace
// control), jinja_parser + jinja_expr (tokens -> AST: statements, expressions), jinja_value (Python's
// values: str/repr, ==, <, truthiness), jinja_json (json.dumps), jinja_eval (scopes, statements,
// expressions, macros), jinja_ops (operators, attribute / item access, slicing), jinja_filters,
// jinja_tests (`is` tests), jinja_methods (str/dict/list methods), jinja_globals (range, namespace,
// raise_exception, strftime_now... and `%` formatting), jinja.cpp (this API).
//
// WHAT IS RENDERED LIKE transformers: an ImmutableSandboxedEnvironment with trim_blocks and
// lstrip_blocks, loopcontrols ({% break %}, {% continue %}), the `generation` tag, tojson as
// json.dumps(ensure_ascii=False, indent, separators, sort_keys), raise_exception and strftime_now.
// Values follow Python: insertion-ordered dicts (pass nlohmann::ordered_json to keep a row's key
// order, which `tojson` shows), ints vs floats (`4/2` is 2.0, floats print as Python's repr),
// `None`/`True` when printed, Jinja's Undefined (printing it gives "", using it is an error).
// tests/test_jinja.cpp compares every render with Debian's python3-jinja2 set up as transformers does.
//
// Values are our own small variant (jinja_value.h), not nlohmann::json: templates need what JSON has
// no room for (Undefined vs None, tuples, macros and bound methods, namespace() objects that are
// shared and mutable, one-shot generators such as `selectattr`'s), and every string carries its
// provenance (below).
//
// LOSS MASKING. render_with_spans() also says where each message's text landed in the output:
//  * content: every string in messages[i] except its "role" (content, content parts' text, tool
//    calls' names and arguments, reasoning...) is tagged with i when the context is read. Tags travel
//    with the bytes: concatenation, `~`, join, slicing, trim/strip, split, replace (the kept parts),
//    indent, `%s`, macros' and {% set %} blocks' captured output, tojson (characters copied
//    unescaped). What makes new text (upper, title, repr of containers, numbers) has no tags. So a
//    content span of message i is always a verbatim copy of one contiguous substring of one of
//    messages[i]'s strings: sound whatever the template does; a template that rewrites text gives
//    fewer spans, never wrong ones (test_jinja checks this on every fixture render).
//  * turns: the output written while the innermost `for` loop is at messages[i] (an element of the
//    context's `messages` list or of any slice of it): turn i's header, content and end-of-turn text.
//  * generation: the output of {% generation %} blocks, the spans transformers'
//    return_assistant_tokens_mask uses, where the template has them.
// assistant_spans() turns these into the bytes to train on (see there).
//
// BOUNDED: a hostile template is an Error, never a crash, a hang or unbounded memory: every
// evaluation step is counted (and strings, lists and copies are charged by size), and output size,
// string size, value nesting, run-time and parse-time nesting are capped (Limits). Errors are
// linearnexus::Error("chat template line N: ..."); raise_exception("msg") gives that with msg.
//
// NOT SUPPORTED (an Error naming it): template inheritance and inclusion (extends, block, include,
// import), recursive loops, {% autoescape %}, the filters groupby, slice, striptags, urlize, xmlattr,
// filesizeformat, random, wordwrap, pprint, urlencode and the globals cycler and lipsum; Python
// integers beyond 64 bits (an overflow is an Error); dict keys other than strings; %(name)s
// formatting and str.format. DIFFERENCES (no fixture template meets them): upper/lower/title/
// capitalize know Latin, Greek and Cyrillic letters only; printing `loop`, a macro, dict.items() or
// a generator shows other text than Python's repr; map/select/... check their arguments when applied,
// not lazily when iterated; markupsafe's escaping rules (|e, |safe) are plain text here.
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace linearnexus::jinja {

struct Program;  // the parsed template (jinja_parser.h)

// Defaults far above what any real chat template needs (a 100-turn conversation through the largest
// fixture template takes well under 1% of max_steps).
struct Limits {
  std::size_t max_output_bytes = 64u << 20;  // the rendered text
  std::size_t max_string_bytes = 64u << 20;  // any one string or list built while rendering
  std::uint64_t max_steps = 50'000'000;      // evaluation steps; bytes and items copied count 1 per 16 / 1
  // Run-time nesting (statements, expressions, macro calls): at 400 a render needs about 0.5 MiB of
  // stack (measured at -O1), so render on threads with at least 1 MiB (Linux's default is 8 MiB).
  int max_depth = 400;
  int max_parse_depth = 100;  // nested blocks / brackets / `not`s in the template text
  int max_value_depth = 64;   // nesting of lists and dicts built or passed in
};

// [begin, end) byte offsets into the rendered text; message indexes context["messages"] (-1: none).
struct OutputSpan {
  std::size_t begin = 0, end = 0;
  int message = -1;
};

struct ChatRender {
  std::string text;
  std::vector<OutputSpan> content;     // sorted by begin; adjacent runs of one message merged
  std::vector<OutputSpan> turns;       // one per stretch of output written at messages[i]
  std::vector<OutputSpan> generation;  // {% generation %} blocks (message: the turn they were in)
};

class ChatTemplate {
 public:
  // Parses the template; throws Error naming the line on a syntax error or an unsupported tag.
  explicit ChatTemplate(const std::string& text, Limits limits = {});
  ~ChatTemplate();
  ChatTemplate(const ChatTemplate&) = delete;
  ChatTemplate& operator=(const ChatTemplate&) = delete;

  bool has_generation_blocks() const;
  // The context's keys are the template's variables: transformers passes messages, tools (null
  // when none), documents (null), add_generation_prompt, its tokenizer's special tokens (bos_token,
  // eos_token, unk_token, pad_token: those that are set) and any extra kwargs (enable_thinking...).
  // Safe to call from several threads at once.
  std::string render(const nlohmann::ordered_json& context) const;
  ChatRender render_with_spans(const nlohmann::ordered_json& context) const;

 private:
  std::unique_ptr<Program> program_;
  Limits limits_;
};

std::string render_chat_template(const std::string& template_text, const nlohmann::ordered_json& context);
// Sorted keys (nlohmann::json's order): prefer the ordered_json overload when tojson output matters.
std::string render_chat_template(const std::string& template_text, const nlohmann::json& context);

// The bytes of the render to train on for messages[i] (one span per assistant message that has any):
// the template's {% generation %} spans when it has them; otherwise from the first byte copied from
// the message (its content, or a tool call when content is empty) to the end of its turn, so the
// end-of-turn text the template writes after the content (<|im_end|>, <|eot_id|>, </s>...) is
// trained too while the turn's header is not. A message with no content span gets none.
std::vector<OutputSpan> assistant_spans(const ChatRender& render, const nlohmann::ordered_json& messages,
                                        bool template_has_generation_blocks);

}  // namespace linearnexus::jinja
