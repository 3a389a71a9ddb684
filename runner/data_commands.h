#pragma once
// Commands on data and tokenizers: `tokenize --tokenizer T [--decode]`, `data prepare ...` (token
// files) and `data chat-render --tokenizer T --input FILE.jsonl [--add-generation-prompt]` (what a
// chat row looks like to the model, and which bytes carry the loss).
#include <CLI/CLI.hpp>

#include <string>

#include "linearnexus/host/token_files.h"

namespace linearnexus {

class DataCommands {
 public:
  explicit DataCommands(CLI::App& app);  // adds the subcommands to the program's CLI
  bool parsed() const;
  int run();  // the one that was parsed

 private:
  int run_tokenize();
  int run_chat_render();
  CLI::App *tokenize_ = nullptr, *prepare_ = nullptr, *chat_render_ = nullptr;
  std::string tokenizer_;
  bool decode_ = false;
  PrepareOptions prepare_options_;
  std::string input_;
  bool add_generation_prompt_ = false, with_mask_ = false;
};

}  // namespace linearnexus
