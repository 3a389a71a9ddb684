// The chat-template interpreter (core/host/src/jinja*.cpp, issue 31), tag [jinja]:
//  * each language feature against python3-jinja2's output: test_jinja_features.cpp;
//  * every fixture chat template (tests/fixtures/chat_templates, the tokenizer fixtures' templates)
//    over tests/fixtures/chat_templates/conversations.json against python3-jinja2 run live (prints
//    SKIPPED and passes when python3 or jinja2 is missing), with the provenance spans checked on
//    every render;
//  * the spans loss masking uses, and bounds: hostile templates and contexts give an Error, never a
//    crash, a hang or unbounded memory (with mutated fixture templates as a small fuzz).
#include "catch.h"
#include "env_var.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "jinja.h"
#include "linearnexus/error.h"
#include "test_paths.h"

namespace {

using ojson = nlohmann::ordered_json;
namespace fs = std::filesystem;
namespace jj = linearnexus::jinja;

// The Error's message a template gives ("" when it renders); any other exception fails the test.
std::string render_error(const std::string& tmpl, const std::string& context = "{}", const jj::Limits& limits = {}) {
  try {
    jj::ChatTemplate(tmpl, limits).render(ojson::parse(context));
  } catch (const linearnexus::Error& e) {
    return e.what();
  }
  return "";
}

// ---- the live oracle ----

fs::path fixtures() { return fs::path(LINEARNEXUS_TEST_FIXTURES_DIR); }

// Debian's interpreter (where python3-jinja2 lives) when there, else whatever python3 is on PATH.
std::string python() { return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }

// Runs tests/jinja_oracle.py on the cases; false with the reason when python3 or jinja2 is missing.
bool run_oracle(const ojson& cases, ojson& results, std::string& why) {
  fs::path dir = fs::temp_directory_path() / ("ln_test_jinja_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "cases.json") << cases.dump();
  std::string cmd = python() + " '" + LINEARNEXUS_SOURCE_DIR + "/tests/jinja_oracle.py' '" +
                    (dir / "cases.json").string() + "' > '" + (dir / "results.json").string() + "' 2> '" +
                    (dir / "stderr.txt").string() + "'";
  int status = std::system(cmd.c_str());
  int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::stringstream err, out;
  err << std::ifstream(dir / "stderr.txt").rdbuf();
  out << std::ifstream(dir / "results.json").rdbuf();
  // Not fs::remove_all: libtorch exports a copy of it that crashes (tests/test_util.h, remove_tree).
  for (const char* f : {"cases.json", "results.json", "stderr.txt"}) std::remove((dir / f).c_str());
  ::rmdir(dir.c_str());
  if (rc == 127) why = "python3 is not installed";
  if (rc == 3) why = "python3 cannot import jinja2 (apt-get install python3-jinja2): " + err.str();
  if (!why.empty()) return false;
  INFO("jinja_oracle.py failed: " << err.str());
  REQUIRE(rc == 0);
  results = ojson::parse(out.str());
  REQUIRE(results.size() == cases.size());
  return true;
}

struct Template {
  std::string name, text;
  ojson tokens;  // the special tokens passed with it
};

// A tokenizer_config.json's special token: a string, or an AddedToken object's "content".
void add_token(ojson& tokens, const ojson& config, const char* key) {
  if (!config.contains(key)) return;
  const ojson& t = config[key];
  if (t.is_string()) tokens[key] = t;
  if (t.is_object() && t.contains("content") && t["content"].is_string()) tokens[key] = t["content"];
}

// Every chat template the project's fixtures have: the tokenizer fixtures' (tokenizer_config.json's
// chat_template, one string or a list of named ones, or chat_template.jinja) and the public ones.
std::vector<Template> fixture_templates() {
  std::vector<Template> out;
  for (const char* group : {"hf_tokenizers", "hf"}) {
    std::vector<fs::path> dirs;
    for (const auto& d : fs::directory_iterator(fixtures() / group))
      if (d.is_directory()) dirs.push_back(d.path());
    std::sort(dirs.begin(), dirs.end());
    for (const fs::path& d : dirs) {
      ojson config = ojson::object(), tokens = ojson::object();
      if (fs::exists(d / "tokenizer_config.json")) config = ojson::parse(std::ifstream(d / "tokenizer_config.json"));
      for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) add_token(tokens, config, key);
      std::string name = std::string(group) + "/" + d.filename().string();
      const ojson ct = config.value("chat_template", ojson());
      if (ct.is_string()) out.push_back({name, ct.get<std::string>(), tokens});
      if (ct.is_array())
        for (const auto& named : ct)
          out.push_back({name + ":" + named.value("name", ""), named.value("template", ""), tokens});
      if (fs::exists(d / "chat_template.jinja")) {
        std::stringstream s;
        s << std::ifstream(d / "chat_template.jinja").rdbuf();
        out.push_back({name + "/chat_template.jinja", s.str(), tokens});
      }
    }
  }
  std::vector<fs::path> files;
  for (const auto& f : fs::directory_iterator(fixtures() / "chat_templates"))
    if (f.path().extension() == ".jinja") files.push_back(f.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::stringstream s;
    s << std::ifstream(f, std::ios::binary).rdbuf();
    out.push_back({f.filename().string(),
                   s.str(),
                   {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}, {"pad_token", "<pad>"}}});
  }
  return out;
}

// transformers' variables: messages, tools (null when none), documents (null), add_generation_prompt,
// the special tokens, then the conversation's extra kwargs.
ojson make_context(const ojson& conversation, const ojson& tool_list, const ojson& tokens, bool add_generation_prompt) {
  ojson ctx = ojson::object();
  ctx["messages"] = conversation["messages"];
  ctx["tools"] = conversation.value("tools", false) ? tool_list : ojson();
  ctx["documents"] = nullptr;
  ctx["add_generation_prompt"] = add_generation_prompt;
  for (const auto& [k, v] : tokens.items()) ctx[k] = v;
  if (conversation.contains("extra"))
    for (const auto& [k, v] : conversation["extra"].items()) ctx[k] = v;
  return ctx;
}

// The strings of a message a content span may copy from: all but its own "role".
void message_strings(const ojson& v, std::vector<std::string>& out, bool top) {
  if (v.is_string()) out.push_back(v.get<std::string>());
  if (v.is_array())
    for (const auto& x : v) message_strings(x, out, false);
  if (v.is_object())
    for (const auto& [k, x] : v.items())
      if (!(top && k == "role")) message_strings(x, out, false);
}

// Every content span is a verbatim copy from its message; spans lie in the text, in order; turns do
// not overlap. Where the text holds an assistant message's whole content once, a span of that message
// lies in it (a template may rebuild the content from pieces, as Qwen 3 does around <think>).
void check_spans(const jj::ChatRender& r, const ojson& messages) {
  std::size_t prev = 0;
  for (const auto& s : r.content) {
    REQUIRE(s.begin < s.end);
    REQUIRE(s.end <= r.text.size());
    REQUIRE(s.begin >= prev);
    REQUIRE(s.message >= 0);
    REQUIRE(std::size_t(s.message) < messages.size());
    std::vector<std::string> sources;
    message_strings(messages[s.message], sources, true);
    std::string copied = r.text.substr(s.begin, s.end - s.begin);
    INFO("span text: " << copied);
    CHECK(std::any_of(sources.begin(), sources.end(),
                      [&](const std::string& src) { return src.find(copied) != std::string::npos; }));
  }
  std::size_t turn_end = 0;
  for (const auto& t : r.turns) {
    REQUIRE(t.begin >= turn_end);
    REQUIRE(t.end <= r.text.size());
    turn_end = t.end;
  }
  for (const auto& g : r.generation) REQUIRE(g.end <= r.text.size());
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const ojson& m = messages[i];
    if (!m.is_object() || m.value("role", "") != "assistant" || !m.contains("content") || !m["content"].is_string())
      continue;
    std::string c = m["content"].get<std::string>();
    std::size_t at = r.text.find(c);
    if (c.empty() || at == std::string::npos || r.text.find(c, at + 1) != std::string::npos) continue;
    INFO("assistant message " << i << ": " << c);
    CHECK(std::any_of(r.content.begin(), r.content.end(), [&](const jj::OutputSpan& s) {
      return s.message == int(i) && s.begin < at + c.size() && at < s.end;
    }));
  }
}

}  // namespace

TEST_CASE("jinja: every fixture chat template renders as python3-jinja2 does", "[jinja]") {
  // One "now" for the oracle and us (templates print today's date): a run across midnight once
  // compared two dates.
  const lntest::EnvVar epoch("SOURCE_DATE_EPOCH", std::to_string(std::time(nullptr)).c_str());
  std::vector<Template> templates = fixture_templates();
  REQUIRE(templates.size() > 100);
  ojson convs = ojson::parse(std::ifstream(fixtures() / "chat_templates" / "conversations.json"));
  ojson cases = ojson::array();
  std::vector<std::string> names;
  for (const Template& t : templates)
    for (const auto& conv : convs["conversations"])
      for (bool agp : {false, true}) {
        cases.push_back({{"template", t.text}, {"context", make_context(conv, convs["tool_list"], t.tokens, agp)}});
        names.push_back(t.name + " / " + conv["name"].get<std::string>() + (agp ? " / add_generation_prompt" : ""));
      }
  ojson results;
  std::string why;
  if (!run_oracle(cases, results, why)) LN_SKIP(why);
  std::size_t rendered = 0, raised = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    INFO(names[i]);
    const ojson& expected = results[i];
    const ojson& ctx = cases[i]["context"];
    jj::ChatRender got;
    std::string error;
    try {
      jj::ChatTemplate t(cases[i]["template"].get<std::string>());
      got = t.render_with_spans(ctx);
    } catch (const linearnexus::Error& e) {
      error = e.what();
    }
    if (expected.contains("error")) {
      ++raised;
      INFO("python3-jinja2 raised " << expected["error"].get<std::string>());
      CHECK_FALSE(error.empty());
      std::string py = expected["error"].get<std::string>();
      if (py.rfind("TemplateError: ", 0) == 0) CHECK_CONTAINS(error, py.substr(15));  // raise_exception's message
      continue;
    }
    ++rendered;
    INFO("error: " << error);
    REQUIRE(error.empty());
    CHECK(got.text == expected["text"].get<std::string>());
    std::vector<std::pair<std::size_t, std::size_t>> gen, want;
    for (const auto& g : got.generation)
      if (g.end > g.begin) gen.emplace_back(g.begin, g.end);
    for (const auto& g : expected["generation"]) want.emplace_back(g[0].get<std::size_t>(), g[1].get<std::size_t>());
    CHECK(gen == want);
    check_spans(got, ctx["messages"]);
  }
  CHECK(rendered > 3000);  // most cases render; the rest exercise errors (alternation, missing tools...)
  CHECK(raised > 300);
}

namespace {

std::string read_fixture(const std::string& name) {
  REQUIRE(fs::exists(fixtures() / "chat_templates" / name));
  std::stringstream s;
  s << std::ifstream(fixtures() / "chat_templates" / name, std::ios::binary).rdbuf();
  return s.str();
}

const char* kChatML =
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

const char* kTwoTurns = R"({"messages": [
  {"role": "system", "content": "Be brief."},
  {"role": "user", "content": "Hi there"},
  {"role": "assistant", "content": "Hello!"},
  {"role": "user", "content": "Bye"},
  {"role": "assistant", "content": "  See you.  "}]})";

std::string cut(const std::string& text, const jj::OutputSpan& s) { return text.substr(s.begin, s.end - s.begin); }

}  // namespace

TEST_CASE("jinja: spans say where each message's text landed", "[jinja]") {
  ojson ctx = ojson::parse(kTwoTurns);
  SECTION("ChatML: content copied verbatim, one turn per message, assistant spans through <|im_end|>") {
    jj::ChatTemplate t(kChatML);
    jj::ChatRender r = t.render_with_spans(ctx);
    REQUIRE(r.content.size() == 5);
    for (int i = 0; i < 5; ++i) {
      CHECK(r.content[i].message == i);
      CHECK(cut(r.text, r.content[i]) == ctx["messages"][i]["content"].get<std::string>());
    }
    REQUIRE(r.turns.size() == 5);
    CHECK(cut(r.text, r.turns[2]) == "<|im_start|>assistant\nHello!<|im_end|>\n");
    auto spans = jj::assistant_spans(r, ctx["messages"], t.has_generation_blocks());
    REQUIRE(spans.size() == 2);
    CHECK(cut(r.text, spans[0]) == "Hello!<|im_end|>\n");
    CHECK(spans[0].message == 2);
    CHECK(cut(r.text, spans[1]) == "  See you.  <|im_end|>\n");
  }
  SECTION("Llama 3.1: trimmed content keeps its span; the role header is not content") {
    jj::ChatTemplate t(read_fixture("meta-llama-Llama-3.1-8B-Instruct.jinja"));
    ctx["tools"] = nullptr;
    ctx["bos_token"] = "<|begin_of_text|>";
    jj::ChatRender r = t.render_with_spans(ctx);
    auto spans = jj::assistant_spans(r, ctx["messages"], false);
    REQUIRE(spans.size() == 2);
    CHECK(cut(r.text, spans[0]) == "Hello!<|eot_id|>");
    CHECK(cut(r.text, spans[1]) == "See you.<|eot_id|>");
    for (const auto& s : r.content) CHECK(cut(r.text, s).find("assistant") == std::string::npos);
  }
  SECTION("Qwen 2.5 tool calls: the call's name and arguments are the assistant's") {
    jj::ChatTemplate t(read_fixture("ollama-qwen2.5-0.5b.jinja"));
    ojson c = ojson::parse(R"({"messages": [
      {"role": "user", "content": "Weather?"},
      {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo \"N\""}}}]},
      {"role": "tool", "content": "cold"},
      {"role": "assistant", "content": "Cold."}], "tools": null})");
    jj::ChatRender r = t.render_with_spans(c);
    auto spans = jj::assistant_spans(r, c["messages"], false);
    REQUIRE(spans.size() == 2);
    CHECK(cut(r.text, spans[0]) ==
          "get_weather\", \"arguments\": {\"city\": \"Oslo \\\"N\\\"\"}}\n</tool_call><|im_end|>\n");
    CHECK(cut(r.text, spans[1]) == "Cold.<|im_end|>\n");
  }
  SECTION("generation blocks: the template's own spans, as transformers' return_assistant_tokens_mask") {
    jj::ChatTemplate t(
        "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}<end>"
        "{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}");
    REQUIRE(t.has_generation_blocks());
    jj::ChatRender r = t.render_with_spans(ctx);
    auto spans = jj::assistant_spans(r, ctx["messages"], true);
    REQUIRE(spans.size() == 2);
    CHECK(cut(r.text, spans[0]) == "Hello!<end>");
    CHECK(spans[0].message == 2);
    CHECK(cut(r.text, spans[1]) == "  See you.  <end>");
    CHECK(spans[1].message == 4);
  }
  SECTION("through macros, set blocks, slicing, split, replace and tojson the copied bytes stay tagged") {
    jj::ChatTemplate t(
        "{% macro show(m) %}[{{ m.content }}]{% endmacro %}{% set ns = namespace(out='') %}"
        "{% for m in messages %}{% set ns.out = ns.out + show(m) %}{% endfor %}{{ ns.out }}|"
        "{% set s %}{{ messages[2].content[1:4] }}{% endset %}{{ s }}|{{ messages[4].content.split()[-1] }}|"
        "{{ messages[1].content|replace(' ', '_') }}|{{ messages[2].content|upper }}|{{ messages[2]|tojson }}");
    jj::ChatRender r = t.render_with_spans(ctx);
    std::vector<std::string> from2;
    for (const auto& s : r.content)
      if (s.message == 2) from2.push_back(cut(r.text, s));
    // [Hello!] via the macro and the namespace, "ell" via the slice, "Hello!" inside the JSON;
    // upper() makes new text: no span.
    CHECK(from2 == std::vector<std::string>{"Hello!", "ell", "Hello!"});
    std::vector<std::string> from1;
    for (const auto& s : r.content)
      if (s.message == 1) from1.push_back(cut(r.text, s));
    CHECK(from1 == std::vector<std::string>{"Hi there", "Hi", "there"});  // replace keeps the kept parts
    CHECK(r.text.find("HELLO!") != std::string::npos);
  }
}

TEST_CASE("jinja: hostile templates and contexts are bounded Errors", "[jinja]") {
  jj::Limits small;
  small.max_steps = 2'000'000;
  small.max_output_bytes = small.max_string_bytes = 1 << 20;
  CHECK_CONTAINS(
      render_error(
          "{% for i in range(10000) %}{% for j in range(10000) %}{{ '0123456789' * 10 }}{% endfor %}{% endfor %}", "{}",
          small),
      "grew past");  // the output limit first
  CHECK_CONTAINS(
      render_error("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", "{}", small),
      "ran too long");
  CHECK_CONTAINS(render_error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
                 "ran too long");  // the default limits: a few seconds
  CHECK_CONTAINS(render_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"), "recurses");
  CHECK_CONTAINS(render_error("{{ 'x' * 1000000000 }}", "{}", small), "string grew past");
  CHECK_CONTAINS(render_error("{{ [1] * 1000000000 }}", "{}", small), "list grew");
  CHECK_CONTAINS(
      render_error("{% set ns = namespace(s='ab') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                   "{}", small),
      "string grew past");
  CHECK_CONTAINS(
      render_error("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}{% set ns.l = [ns.l] %}{% endfor %}"),
      "nested more than");
  CHECK_CONTAINS(render_error("{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}", "{}", small),
                 "grew past");
  CHECK_CONTAINS(render_error("{{ 2 ** 64 }}"), "overflow");
  CHECK_CONTAINS(render_error("{{ range(1000000) }}"), "MAX_RANGE");
  CHECK_CONTAINS(render_error("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}"), "too deeply");
  CHECK_CONTAINS(render_error("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}"),
                 "nests more than");
  CHECK_CONTAINS(render_error("{{ " + std::string(100000, '[') + std::string(100000, ']') + " }}"), "nests more than");
  std::string nots;
  for (int i = 0; i < 100000; ++i) nots += "not ";
  CHECK_CONTAINS(render_error("{{ " + nots + "x }}"), "nests more than");
  CHECK_CONTAINS(render_error("{{ " + std::string(100000, '-') + "1 }}"), "nests more than");
  std::string ifs;
  for (int i = 0; i < 10000; ++i) ifs += "{% if true %}";
  CHECK_CONTAINS(render_error(ifs), "nests more than");
  std::string deep(100000, '[');
  deep += std::string(100000, ']');
  CHECK_CONTAINS(render_error("{{ x }}", "{\"x\": " + std::string(1000, '[') + std::string(1000, ']') + "}"),
                 "nests more than");
  CHECK_CONTAINS(render_error("{{ 'a' }}\xff"), "not valid UTF-8");
  CHECK_THROWS_AS(jj::ChatTemplate(kChatML).render(ojson::array()), linearnexus::Error);
}

TEST_CASE("jinja: mutated fixture templates render or give an Error, never anything else", "[jinja]") {
  std::vector<Template> templates = fixture_templates();
  static const char* const pieces[] = {"{%",
                                       "%}",
                                       "{{",
                                       "}}",
                                       "{#",
                                       "#}",
                                       "(",
                                       ")",
                                       "[",
                                       "]",
                                       "{",
                                       "}",
                                       "|",
                                       "'",
                                       "\"",
                                       " if ",
                                       " for ",
                                       " in ",
                                       " endfor ",
                                       " endif ",
                                       " else ",
                                       " set ",
                                       " macro ",
                                       " endmacro ",
                                       "loop.",
                                       "namespace(",
                                       "ns.",
                                       "~",
                                       ".",
                                       ",",
                                       "*",
                                       "**",
                                       "-",
                                       ":",
                                       "::-1",
                                       " is ",
                                       " not ",
                                       "raise_exception(",
                                       "messages",
                                       "-%}",
                                       "{%-",
                                       "\n",
                                       "caller()",
                                       " call ",
                                       " generation ",
                                       "|tojson",
                                       "|items",
                                       "[0]",
                                       "range(99)"};
  ojson ctx = ojson::parse(kTwoTurns);
  ctx["add_generation_prompt"] = true;
  ctx["tools"] = nullptr;
  jj::Limits limits;
  limits.max_steps = 200'000;
  limits.max_output_bytes = limits.max_string_bytes = 1 << 20;
  std::mt19937 rng(31);
  int rendered = 0, errors = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string t = templates[rng() % templates.size()].text;
    int edits = 1 + int(rng() % 4);
    for (int k = 0; k < edits && !t.empty(); ++k) {
      std::size_t at = rng() % t.size(), len = 1 + rng() % 12;
      switch (rng() % 4) {
        case 0:
          t.erase(at, len);
          break;
        case 1:
          t.insert(at, pieces[rng() % (sizeof pieces / sizeof *pieces)]);
          break;
        case 2:
          t.insert(at, t.substr(rng() % t.size(), len));
          break;
        default:
          t[at] = static_cast<char>(rng() % 128);
          break;
      }
    }
    try {
      jj::ChatTemplate(t, limits).render_with_spans(ctx);
      ++rendered;
    } catch (const linearnexus::Error&) {
      ++errors;
    }  // anything else escapes and fails the test
  }
  CHECK(rendered > 100);
  CHECK(errors > 100);
}

TEST_CASE("jinja: one parsed template renders from several threads", "[jinja]") {
  jj::ChatTemplate t(read_fixture("ollama-qwen2.5-0.5b.jinja"));
  ojson ctx = ojson::parse(kTwoTurns);
  const std::string expected = t.render(ctx);
  std::vector<std::string> got(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      for (int k = 0; k < 50; ++k) got[i] = t.render(ctx);
    });
  for (auto& th : threads) th.join();
  for (const auto& g : got) CHECK(g == expected);
}

TEST_CASE("jinja: render_chat_template takes either JSON flavour", "[jinja]") {
  nlohmann::json sorted =
      nlohmann::json::parse(R"({"messages": [{"role": "user", "content": "hi"}], "x": {"b": 1, "a": 2}})");
  CHECK(jj::render_chat_template(kChatML, sorted) == "<|im_start|>user\nhi<|im_end|>\n");
  // nlohmann::json sorts keys; ordered_json keeps the row's order, as Python's dicts do.
  CHECK(jj::render_chat_template("{{ x|tojson }}", sorted) == R"({"a": 2, "b": 1})");
  CHECK(jj::render_chat_template("{{ x|tojson }}", ojson::parse(R"({"x": {"b": 1, "a": 2}})")) ==
        R"({"b": 1, "a": 2})");
  CHECK_CONTAINS(render_error("{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}",
                              R"({"messages": [1, 2]})"),
                 "chat template line 1: only one message");
  CHECK_CONTAINS(render_error("line one\n{{ undefined_thing.attribute }}"),
                 "chat template line 2: 'undefined_thing' is undefined");
  CHECK_THROWS_AS(jj::ChatTemplate("{% for %}"), linearnexus::Error);
}
