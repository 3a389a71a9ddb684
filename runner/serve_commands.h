#pragma once
// Commands that talk with a model: `serve --checkpoint DIR ...` (the OpenAI-compatible HTTP server,
// server.h) and `chat --checkpoint DIR` (a REPL on stdin / stdout: the history rendered with the
// tokenizer's chat template each turn, the reply streamed; /reset, /exit, end of input).
#include <CLI/CLI.hpp>

#include <string>

#include "server.h"

namespace linearnexus {

class ServeCommands {
 public:
  explicit ServeCommands(CLI::App& app);  // adds the subcommands to the program's CLI
  bool parsed() const;
  int run();  // the one that was parsed

 private:
  int run_chat();
  CLI::App *serve_ = nullptr, *chat_ = nullptr;
  ServeOptions serve_options_;
  // chat: the checkpoint's sample: section, with what the flags give
  std::string checkpoint_, device_ = "cpu", system_;
  uint64_t seed_ = 0;
  CLI::Option *max_tokens_ = nullptr, *temperature_ = nullptr, *top_k_ = nullptr, *top_p_ = nullptr;
  int64_t max_tokens_value_ = 0, top_k_value_ = 0;
  double temperature_value_ = 0, top_p_value_ = 0;
};

}  // namespace linearnexus
