// OpenAI's wire format for `linearnexus serve` (openai_api.h).
#include "openai_api.h"

#include <cmath>
#include <random>

#include "json_limits.h"  // core/host/src: depth-bounded parsing of untrusted JSON
#include "linearnexus/error.h"
#include "linearnexus/host/examples.h"
#include "linearnexus/tokenizer.h"

namespace linearnexus {

std::string dump_json(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string error_body(const std::string& message, const std::string& type, const std::string& param,
                       const std::string& code) {
  nlohmann::json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return dump_json({{"error", e}});
}

namespace {
ApiError bad(const std::string& param, const std::string& what) {
  return ApiError(400, "'" + param + "' " + what, param);
}

// A field that is absent or null keeps its default (OpenAI's clients send null for "not set").
const nlohmann::json* field(const nlohmann::json& body, const char* key) {
  auto it = body.find(key);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const nlohmann::json& body, const char* key, double fallback, double lo, double hi) {
  const auto* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number()) throw bad(key, "must be a number");
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    throw bad(key, "must be between " + nlohmann::json(lo).dump() + " and " + nlohmann::json(hi).dump());
  return x;
}

int64_t integer(const nlohmann::json& body, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  const auto* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number_integer()) throw bad(key, "must be an integer");
  // nlohmann reads every non-negative integer as unsigned: compare in that type where it is one.
  const bool in_range = v->is_number_unsigned() ? v->get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                                                      (lo <= 0 || v->get<uint64_t>() >= static_cast<uint64_t>(lo))
                                                : v->get<int64_t>() >= lo && v->get<int64_t>() <= hi;
  if (!in_range)
    throw bad(key, hi == INT64_MAX ? "must be at least " + std::to_string(lo)
                                   : "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return v->get<int64_t>();
}

// The prompts' texts: completions' `prompt` (a string or an array of strings), or chat's `messages`
// rendered with the tokenizer's chat template, as `sample --chat` renders its one user message.
std::vector<std::string> prompt_texts(const nlohmann::json& body, bool chat, const Tokenizer& tokenizer) {
  if (chat) {
    const auto* m = field(body, "messages");
    if (!m) throw ApiError(400, "'messages' is required", "messages");
    if (!m->is_array() || m->empty())
      throw bad("messages", "must be a non-empty array of {\"role\", \"content\"} objects");
    for (size_t i = 0; i < m->size(); ++i) {
      const auto& msg = (*m)[i];
      const std::string where = "messages[" + std::to_string(i) + "]";
      if (!msg.is_object()) throw bad(where, "must be an object");
      if (!msg.contains("role") || !msg["role"].is_string()) throw bad(where + ".role", "must be a string");
      if (!msg.contains("content") || !msg["content"].is_string()) throw bad(where + ".content", "must be a string");
    }
    if (tokenizer.chat_template().empty())
      throw ApiError(400, "this model's tokenizer has no chat template: use /v1/completions", "messages");
    try {
      return {render_chat(tokenizer, nlohmann::json{{"messages", *m}}.dump(), true, "messages").text};
    } catch (const std::exception& e) {
      throw ApiError(400, "messages: " + error_text(e), "messages");
    }
  }
  const auto* p = field(body, "prompt");
  if (!p) throw ApiError(400, "'prompt' is required", "prompt");
  if (p->is_string()) return {p->get<std::string>()};
  if (!p->is_array() || p->empty()) throw bad("prompt", "must be a string or a non-empty array of strings");
  std::vector<std::string> out;
  for (const auto& s : *p) {
    if (!s.is_string())
      throw bad("prompt", "must be a string or an array of strings (token-id prompts are not supported)");
    out.push_back(s.get<std::string>());
  }
  return out;
}

std::vector<std::string> stop_strings(const nlohmann::json& body) {
  const auto* s = field(body, "stop");
  if (!s) return {};
  std::vector<std::string> out;
  if (s->is_string())
    out.push_back(s->get<std::string>());
  else if (s->is_array() && s->size() <= 4)
    for (const auto& x : *s) {
      if (!x.is_string()) throw bad("stop", "must be a string or an array of at most 4 strings");
      out.push_back(x.get<std::string>());
    }
  else
    throw bad("stop", "must be a string or an array of at most 4 strings");
  for (const auto& x : out)
    if (x.empty()) throw bad("stop", "must not contain an empty string");
  return out;
}
}  // namespace

ParsedRequest parse_request(const std::string& text, bool chat, const ServedModel& model) {
  nlohmann::json body;
  try {
    body = parse_json_limited(text, 32);
  } catch (const std::exception& e) {
    throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) throw ApiError(400, "the body must be a JSON object");
  ParsedRequest r;
  r.chat = chat;
  Job& job = r.job;
  job.temperature = number(body, "temperature", 1.0, 0.0, 2.0);
  job.top_p = number(body, "top_p", 1.0, 0.0, 1.0);
  job.top_k = integer(body, "top_k", 0, 0, INT64_MAX);
  job.stop = stop_strings(body);
  job.eos_id = chat ? model.tokenizer->eos_id() : -1;  // as `sample` (--chat ends the reply at the end of turn)
  if (const auto* s = field(body, "stream")) {
    if (!s->is_boolean()) throw bad("stream", "must be a boolean");
    r.stream = s->get<bool>();
  }
  const int64_t n = integer(body, "n", 1, 1, model.max_batch);
  // No seed: a random one, as OpenAI draws differently each time.
  uint64_t seed = 0;
  if (const auto* s = field(body, "seed")) {
    if (!s->is_number_integer()) throw bad("seed", "must be an integer");
    seed = s->is_number_unsigned() ? s->get<uint64_t>() : static_cast<uint64_t>(s->get<int64_t>());
  } else {
    seed = std::random_device{}();
  }
  const char* max_key = chat && field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const int64_t max_tokens = integer(body, max_key, -1, 1, model.context);

  const auto texts = prompt_texts(body, chat, *model.tokenizer);
  if (static_cast<int64_t>(texts.size()) * n > model.max_batch)
    throw ApiError(400,
                   std::to_string(texts.size()) + " prompt(s) x n = " + std::to_string(n) +
                       " is more than --max-batch " + std::to_string(model.max_batch) + " completions in one request",
                   "n");
  for (size_t p = 0; p < texts.size(); ++p) {
    auto ids = model.tokenizer->encode(texts[p]);
    const int64_t len = static_cast<int64_t>(ids.size());
    const std::string param = chat ? "messages" : "prompt";
    if (len == 0) throw ApiError(400, "the prompt is empty (no tokens)", param);
    if (len > model.max_prompt_tokens)
      throw ApiError(400,
                     "the prompt is " + std::to_string(len) + " tokens; this server takes at most " +
                         std::to_string(model.max_prompt_tokens) + " (the model's context is " +
                         std::to_string(model.context) + ")",
                     param, "context_length_exceeded");
    // Without max_tokens: OpenAI's 16 for completions, the rest of the context for chat.
    int64_t budget = model.context - len;
    if (max_tokens < 0)
      budget = chat ? budget : std::min<int64_t>(16, budget);
    else if (len + max_tokens > model.context)
      throw ApiError(400,
                     "the model's context is " + std::to_string(model.context) + " tokens; the prompt is " +
                         std::to_string(len) + " and " + max_key + " asks for " + std::to_string(max_tokens) + " more",
                     max_key, "context_length_exceeded");
    else
      budget = max_tokens;
    r.prompt_tokens += len * n;
    // Choice j of a prompt draws what `sample --seed S` draws as its sample j + 1 (seed S + j).
    for (int64_t j = 0; j < n; ++j) job.rows.push_back({ids, seed + static_cast<uint64_t>(j), budget});
  }
  return r;
}

nlohmann::json response_json(const ParsedRequest& r, const std::string& id, int64_t created, const std::string& model,
                             const std::vector<std::string>& texts, const std::vector<std::string>& finish_reasons,
                             int64_t completion_tokens) {
  nlohmann::json choices = nlohmann::json::array();
  for (size_t i = 0; i < texts.size(); ++i) {
    nlohmann::json c = {{"index", i}, {"finish_reason", finish_reasons[i]}};
    if (r.chat)
      c["message"] = {{"role", "assistant"}, {"content", texts[i]}};
    else
      c["text"] = texts[i], c["logprobs"] = nullptr;
    choices.push_back(std::move(c));
  }
  return {{"id", id},
          {"object", r.chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", choices},
          {"usage",
           {{"prompt_tokens", r.prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", r.prompt_tokens + completion_tokens}}}};
}

std::string sse_chunk(const ParsedRequest& r, const std::string& id, int64_t created, const std::string& model,
                      int64_t index, const std::string& text, const std::string& finish_reason, bool role_only) {
  nlohmann::json c = {{"index", index}, {"finish_reason", nullptr}};
  if (!finish_reason.empty()) c["finish_reason"] = finish_reason;
  if (!r.chat)
    c["text"] = text, c["logprobs"] = nullptr;
  else if (role_only)
    c["delta"] = {{"role", "assistant"}};
  else
    c["delta"] = text.empty() ? nlohmann::json::object() : nlohmann::json{{"content", text}};
  const nlohmann::json chunk = {{"id", id},
                                {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
                                {"created", created},
                                {"model", model},
                                {"choices", nlohmann::json::array({c})}};
  return "data: " + dump_json(chunk) + "\n\n";
}

}  // namespace linearnexus
