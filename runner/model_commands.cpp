// `linearnexus convert ...` and `linearnexus eval` (see model_commands.h).
#include "model_commands.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "linearnexus/error.h"
#include "linearnexus/host/hf_convert.h"
#include "linearnexus/host/lora_convert.h"
#include "linearnexus/log.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/host/scoring.h"
#include "linearnexus/host/run_checkpoint.h"
#include "plugin_errors.h"

namespace linearnexus {

ModelCommands::ModelCommands(CLI::App& app) {
  convert_ = app.add_subcommand("convert", "convert checkpoints to and from Hugging Face folders");
  convert_->require_subcommand(1);
  import_ = convert_->add_subcommand(
      "hf-import",
      "a Hugging Face model folder (GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, MambaForCausalLM) "
      "-> a run folder for sample, eval and trainer.init_from (weights fp32)");
  import_
      ->add_option("hf_dir", from_,
                   "folder with config.json, model.safetensors (or an index and shards), tokenizer files")
      ->required();
  import_->add_option("out_dir", to_, "the new run folder")->required();
  import_->add_flag(
      "--no-tokenizer", no_tokenizer_,
      "import the weights even when the folder's tokenizer is not one this build reads (then only token ids work)");
  import_->add_option("--tokenizer", tokenizer_dir_,
                      "take the tokenizer files from this folder (a model folder without them, e.g. the base model's)");
  export_ = convert_->add_subcommand("hf-export",
                                     "a run folder or checkpoint -> a folder transformers' AutoModelForCausalLM loads");
  export_->add_option("run_dir", from_, "run folder (its latest checkpoint) or checkpoint file")->required();
  export_->add_option("out_dir", to_, "the new Hugging Face folder")->required();
  merge_ = convert_->add_subcommand("merge-lora",
                                    "a run with LoRA adapters -> a run folder with them merged into its weights");
  merge_->add_option("run_dir", from_, "run folder (its latest checkpoint) or checkpoint file")->required();
  merge_->add_option("out_dir", to_, "the new run folder")->required();
  peft_ = convert_->add_subcommand("peft-export",
                                   "a run's LoRA adapters -> adapter_config.json + adapter_model.safetensors (PEFT)");
  peft_->add_option("run_dir", from_, "run folder (its latest checkpoint) or checkpoint file")->required();
  peft_->add_option("out_dir", to_, "the new adapter folder")->required();

  eval_ =
      app.add_subcommand("eval", "mean negative log-likelihood and perplexity of a checkpoint on a text or token ids");
  eval_->add_option("--checkpoint", checkpoint_, "run folder (uses its latest) or checkpoint file")->required();
  auto* text = eval_->add_option("--text", text_file_, "a text file, tokenized with the run's tokenizer");
  auto* ids = eval_->add_option("--ids", ids_, "token ids separated by spaces, e.g. \"1 2 3\"");
  text->excludes(ids);
  eval_->add_flag("--per-token", per_token_, "print JSON with every token's log-probability");
  eval_
      ->add_option("--window", window_,
                   "tokens per window (0 = model.max_seq_len); the context restarts at each window")
      ->check(CLI::NonNegativeNumber);
  eval_->add_option("--device", device_, "cpu, cuda or auto");
}

bool ModelCommands::parsed() const { return convert_->parsed() || eval_->parsed(); }

int ModelCommands::run() {
  PluginHost host;
  return with_plugin_errors_copied([&] {
    if (import_->parsed()) {
      HfImportOptions options;
      options.tokenizer = !no_tokenizer_;
      options.tokenizer_dir = tokenizer_dir_;
      log_info(hf_import(from_, to_, host, options));
      return 0;
    }
    if (export_->parsed()) {
      log_info(hf_export(from_, to_, host));
      return 0;
    }
    if (merge_->parsed()) {
      log_info(merge_lora(from_, to_, host));
      return 0;
    }
    if (peft_->parsed()) {
      log_info(peft_export(from_, to_, host));
      return 0;
    }
    return run_eval(host);
  });
}

int ModelCommands::run_eval(PluginHost& host) {
  if (text_file_.empty() == ids_.empty())
    throw Error("eval: give the tokens to score with --text FILE or --ids \"1 2 3\"");
  LoadedModel lm = load_model_from_checkpoint(checkpoint_, host, device_);
  std::vector<int64_t> ids;
  if (!text_file_.empty()) {
    std::string text;
    try {
      text = read_file(text_file_, file_kind::kText);
    } catch (const Error& e) {
      throw Error(std::string("eval --text: ") + e.what());
    }
    ids = lm.tokenizer->encode(text);
  } else {
    std::istringstream in(ids_);
    for (std::string word; in >> word;) {
      size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(word, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != word.size()) throw Error("eval --ids: '" + word + "' is not a token id");
      ids.push_back(id);
    }
  }
  // Progress on stderr every few seconds: a long text (a whole corpus in small windows) takes minutes.
  const auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  const TokenScores s = score_tokens(*lm.model, ids, window_, [&](int64_t scored, int64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (scored == total || now - last < std::chrono::seconds(2)) return;
    last = now;
    const double seconds = std::chrono::duration<double>(now - t0).count();
    char line[160];
    std::snprintf(line, sizeof line, "eval: %lld/%lld tokens (%.0f%%), %.0f tokens/s, about %.0f s left",
                  static_cast<long long>(scored), static_cast<long long>(total), 100.0 * scored / total,
                  scored / seconds, seconds / scored * (total - scored));
    log_info(line);
  });
  if (per_token_) {
    const nlohmann::json out = {
        {"checkpoint", lm.file},    {"tokens", ids.size()},         {"scored_tokens", s.logprobs.size()},
        {"mean_nll", s.mean_nll()}, {"perplexity", s.perplexity()}, {"ids", ids},
        {"logprobs", s.logprobs}};
    std::cout << out.dump() << "\n";
  } else {
    std::printf("%s: %zu tokens scored, mean NLL %.6f nats/token, perplexity %.4f\n", lm.file.c_str(),
                s.logprobs.size(), s.mean_nll(), s.perplexity());
  }
  return 0;
}

}  // namespace linearnexus
