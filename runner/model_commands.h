#pragma once
// Commands on whole models: `convert hf-import HF_DIR OUT_DIR [--no-tokenizer]`,
// `convert hf-export RUN_DIR OUT_DIR`, `convert merge-lora RUN OUT_DIR`, `convert peft-export RUN OUT_DIR` and `eval --checkpoint RUN (--text FILE | --ids "1 2 3") [--per-token]`.
#include <CLI/CLI.hpp>

#include <string>

namespace linearnexus {

class PluginHost;

class ModelCommands {
 public:
  explicit ModelCommands(CLI::App& app);  // adds the subcommands to the program's CLI
  bool parsed() const;
  int run();  // the one that was parsed

 private:
  int run_eval(PluginHost& host);
  CLI::App *convert_ = nullptr, *import_ = nullptr, *export_ = nullptr, *merge_ = nullptr, *peft_ = nullptr,
           *eval_ = nullptr;
  std::string from_, to_;
  bool no_tokenizer_ = false;
  std::string tokenizer_dir_;  // convert hf-import --tokenizer
  std::string checkpoint_, text_file_, ids_, device_ = "cpu";
  bool per_token_ = false;
  int64_t window_ = 0;
};

}  // namespace linearnexus
