#pragma once
// `linearnexus serve`: an OpenAI-compatible HTTP server (cpp-httplib) in front of the batch
// scheduler (batch_scheduler.h), the wire format in openai_api.h.
//
//   POST /v1/completions, POST /v1/chat/completions (JSON, or server-sent events with "stream": true)
//   GET /v1/models, GET /health
//
// SIGTERM / SIGINT: new requests get 503, the ones in flight finish, then the program exits 0.
#include <cstdint>
#include <string>

namespace linearnexus {

struct ServeOptions {
  std::string checkpoint, device = "cpu";
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8000;                 // 0: any free port (the "listening on" line says which)
  int64_t max_batch = 16;          // rows decoded together in one round
  std::string api_key;             // "": no key needed
  int64_t max_prompt_tokens = 0;   // 0: the model's context - 1
  int64_t max_body_bytes = 1 << 20;
};

// Runs until SIGTERM / SIGINT; 0 after draining. Errors before listening (a bad checkpoint, a
// taken port) throw linearnexus::Error.
int serve(const ServeOptions& options);

}  // namespace linearnexus
