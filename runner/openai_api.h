#pragma once
// OpenAI's completions / chat completions wire format for `linearnexus serve`: a request body ->
// a validated, tokenized Job (batch_scheduler.h); finished rows -> the response object; text
// deltas -> server-sent-event chunks; errors -> {"error": {"message", "type", "param", "code"}}.
// No HTTP here (server.cpp has it), so every rule is in one place.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "batch_scheduler.h"

namespace linearnexus {

class Tokenizer;

// A request the server refuses: the HTTP status and OpenAI's error fields.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error")
      : std::runtime_error(message),
        status(status),
        type(std::move(type)),
        param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type, param, code;
};
std::string error_body(const std::string& message, const std::string& type, const std::string& param = "",
                       const std::string& code = "");

// What the server serves, and its limits.
struct ServedModel {
  std::string id;  // the name /v1/models lists (the run folder's name)
  const Tokenizer* tokenizer = nullptr;
  int64_t context = 0;            // model.max_seq_len: prompt + completion tokens
  int64_t max_prompt_tokens = 0;  // at most context - 1
  int64_t max_batch = 1;          // rows (prompts x n) per request at most this
};

struct ParsedRequest {
  Job job;
  bool chat = false, stream = false;
  int64_t prompt_tokens = 0;  // over all prompts (usage)
};

// The body of POST /v1/completions (chat false) or /v1/chat/completions (chat true). Fields as
// OpenAI's: prompt (a string or an array of strings) / messages, max_tokens (chat also
// max_completion_tokens), temperature, top_p, top_k, seed, stop, stream, n; others are ignored.
// Throws ApiError (400) naming the field.
ParsedRequest parse_request(const std::string& body, bool chat, const ServedModel& model);

// Serialised as JSON with invalid UTF-8 replaced by U+FFFD (a model may emit any bytes).
std::string dump_json(const nlohmann::json& j);

// The response of a non-streamed request: texts / finish reasons / token counts per row.
nlohmann::json response_json(const ParsedRequest& r, const std::string& id, int64_t created, const std::string& model,
                             const std::vector<std::string>& texts, const std::vector<std::string>& finish_reasons,
                             int64_t completion_tokens);
// One server-sent event of a streamed response: `data: {...}\n\n` (role_only: the chat stream's
// first chunk of a choice, {"role": "assistant"}).
std::string sse_chunk(const ParsedRequest& r, const std::string& id, int64_t created, const std::string& model,
                      int64_t index, const std::string& text, const std::string& finish_reason, bool role_only = false);

}  // namespace linearnexus
