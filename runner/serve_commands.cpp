// `linearnexus serve` and `linearnexus chat` (serve_commands.h).
#include "serve_commands.h"

#include <unistd.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "linearnexus/error.h"
#include "linearnexus/host/examples.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/model.h"
#include "linearnexus/tokenizer.h"
#include "openai_api.h"
#include "plugin_errors.h"
#include "sample_prompts.h"

namespace linearnexus {

#ifndef LINEARNEXUS_HAS_HTTPLIB
int serve(const ServeOptions&) {
  throw Error("serve: this build has no HTTP server (apt-get install libcpp-httplib-dev, then run cmake again)");
}
#endif

ServeCommands::ServeCommands(CLI::App& app) {
  ServeOptions& o = serve_options_;
  serve_ = app.add_subcommand("serve",
                              "an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions, "
                              "/v1/models, /health) batching concurrent requests on the decode engine");
  serve_->add_option("--checkpoint", o.checkpoint, "run folder (uses its latest) or checkpoint file")->required();
  serve_->add_option("--host", o.host, "address to listen on (0.0.0.0: every interface)")->capture_default_str();
  serve_->add_option("--port", o.port, "TCP port (0: any free one; the 'listening on' line says which)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65535));
  serve_
      ->add_option("--max-batch", o.max_batch,
                   "completions decoded together in one batch round (and at most per request)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  serve_->add_option("--api-key", o.api_key, "require 'Authorization: Bearer KEY' on /v1/ routes");
  serve_
      ->add_option("--max-prompt-tokens", o.max_prompt_tokens,
                   "longest prompt accepted, in tokens (0: the model's context - 1)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  serve_->add_option("--max-body-bytes", o.max_body_bytes, "largest request body accepted (413 beyond)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  serve_->add_option("--device", o.device, "cpu, cuda or auto")->capture_default_str();

  chat_ = app.add_subcommand("chat",
                             "talk with a checkpoint on stdin / stdout in its tokenizer's chat template "
                             "(/reset forgets the conversation, /exit or end of input ends)");
  chat_->add_option("--checkpoint", checkpoint_, "run folder (uses its latest) or checkpoint file")->required();
  chat_->add_option("--system", system_, "a system message that starts (and survives /reset of) the conversation");
  chat_->add_option("--seed", seed_, "sampling seed: reply k of a conversation is drawn with seed + k")
      ->capture_default_str();
  max_tokens_ = chat_->add_option("--max-tokens", max_tokens_value_,
                                  "reply length limit (default: the checkpoint's sample.max_tokens)");
  temperature_ = chat_->add_option("--temperature", temperature_value_, "default: the checkpoint's sample.temperature");
  top_k_ = chat_->add_option("--top-k", top_k_value_, "default: the checkpoint's sample.top_k");
  top_p_ = chat_->add_option("--top-p", top_p_value_, "default: the checkpoint's sample.top_p");
  chat_->add_option("--device", device_, "cpu, cuda or auto")->capture_default_str();
}

bool ServeCommands::parsed() const { return serve_->parsed() || chat_->parsed(); }

int ServeCommands::run() { return serve_->parsed() ? serve(serve_options_) : run_chat(); }

int ServeCommands::run_chat() {
  PluginHost host;
  return with_plugin_errors_copied([&] {
    // The flags override the checkpoint's sample: section, checked by its schema as `sample` does.
    std::vector<std::string> overrides;
    if (max_tokens_->count()) overrides.push_back("sample.max_tokens=" + std::to_string(max_tokens_value_));
    if (temperature_->count()) overrides.push_back("sample.temperature=" + nlohmann::json(temperature_value_).dump());
    if (top_k_->count()) overrides.push_back("sample.top_k=" + std::to_string(top_k_value_));
    if (top_p_->count()) overrides.push_back("sample.top_p=" + nlohmann::json(top_p_value_).dump());
    LoadedModel lm = load_model_from_checkpoint(checkpoint_, host, device_, overrides);
    const Tokenizer& tok = *lm.tokenizer;
    if (tok.chat_template().empty())
      throw Error("chat: the checkpoint's tokenizer has no chat template (use `sample --prompt` to continue text)");
    const SampleSettings& s = lm.experiment.sample;
    const int64_t context = lm.model->config().dims.max_seq_len;
    DecodeGenerator generator(*lm.model, host.registry());
    const nlohmann::json start =
        system_.empty() ? nlohmann::json::array() : nlohmann::json::array({{{"role", "system"}, {"content", system_}}});
    nlohmann::json messages = start;
    const bool interactive = ::isatty(0);
    int64_t turn = 0;
    for (std::string line;;) {
      if (interactive) std::cout << "> " << std::flush;
      if (!std::getline(std::cin, line) || line == "/exit") break;
      if (line == "/reset") {
        messages = start;
        turn = 0;
        std::cout << "(conversation cleared)\n" << std::flush;
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({{"role", "user"}, {"content", line}});
      // The whole history, rendered as `sample --chat` renders its one message.
      const auto ids = tok.encode(render_chat(tok, dump_json({{"messages", messages}}), true, "chat").text);
      if (static_cast<int64_t>(ids.size()) >= context) {
        messages.erase(messages.size() - 1);
        std::cout << "(the conversation is " << ids.size() << " tokens, the model's context " << context
                  << ": /reset to start over)\n"
                  << std::flush;
        continue;
      }
      SamplingParams sp = sampling_params(s);
      sp.max_new_tokens = std::min<int64_t>(s.max_tokens, context - static_cast<int64_t>(ids.size()));
      sp.seed = seed_ + static_cast<uint64_t>(turn);
      sp.eos_id = tok.eos_id();
      std::string reply;
      generator.generate(ids, sp, [&](int64_t t) {
        if (t == sp.eos_id) return true;  // the end of the turn is not shown
        const std::string piece = tok.decode({t});
        reply += piece;
        std::cout << piece << std::flush;
        return true;
      });
      std::cout << "\n" << std::flush;
      messages.push_back({{"role", "assistant"}, {"content", reply}});
      ++turn;
    }
    return 0;
  });
}

}  // namespace linearnexus
