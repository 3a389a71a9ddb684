// `linearnexus sample --prompts FILE` (sample_prompts.h).
#include "sample_prompts.h"

#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "json_limits.h"
#include "linearnexus/error.h"
#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/config.h"
#include "linearnexus/host/decode_stream.h"
#include "linearnexus/host/examples.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/log.h"
#include "linearnexus/model.h"
#include "linearnexus/tokenizer.h"

namespace linearnexus {

namespace {
struct Prompt {
  std::string text;  // as given (what the output's "prompt" shows)
  std::vector<int64_t> ids;
  bool chat = false;  // rendered with the chat template: the reply ends at the end-of-turn token
};

// The prompts of FILE, each checked against the context as it is read (the error names its line).
std::vector<Prompt> read_prompts(const std::string& path, const Tokenizer& tok, bool chat, int64_t context) {
  const std::string text = RegularFile(path, file_kind::kText).read_all();
  const bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
  std::vector<Prompt> out;
  std::istringstream lines(text);
  std::string line;
  for (int64_t n = 1; std::getline(lines, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = "sample --prompts " + path + ", line " + std::to_string(n);
    Prompt p;
    std::string rendered;
    if (jsonl) {
      nlohmann::json row;
      try {
        row = parse_json_limited(line);
      } catch (const std::exception& e) {
        throw Error(where + ": not JSON (" + error_text(e) +
                    "): each line is {\"prompt\": TEXT} or {\"messages\": [...]}");
      }
      if (row.is_object() && row.contains("messages")) {
        p.text = row["messages"].dump();
        p.chat = true;
        rendered = render_chat(tok, line, true, where).text;
      } else if (row.is_object() && row.contains("prompt") && row["prompt"].is_string()) {
        p.text = rendered = row["prompt"].get<std::string>();
      } else {
        throw Error(where + ": each line is {\"prompt\": TEXT} or {\"messages\": [...]}");
      }
    } else if (chat) {
      p.text = line;
      p.chat = true;
      rendered = render_user_message(tok, line, where + " (sample.chat)");
    } else {
      p.text = rendered = line;
    }
    p.ids = tok.encode(rendered);
    if (p.ids.empty()) throw Error(where + ": the prompt encodes to no token");
    if (static_cast<int64_t>(p.ids.size()) >= context)
      throw Error(where + ": the prompt is " + std::to_string(p.ids.size()) + " tokens, the model's context " +
                  std::to_string(context) + " (leave room to generate)");
    out.push_back(std::move(p));
  }
  if (out.empty()) throw Error("sample --prompts " + path + ": no prompt in the file");
  return out;
}
}  // namespace

SamplingParams sampling_params(const SampleSettings& s) {
  SamplingParams sp;
  sp.temperature = s.temperature;
  sp.top_k = s.top_k;
  sp.top_p = s.top_p;
  sp.max_new_tokens = s.max_tokens;
  return sp;
}

std::string render_user_message(const Tokenizer& tok, const std::string& text, const std::string& where) {
  nlohmann::json row;
  row["messages"] = nlohmann::json::array({nlohmann::json{{"role", "user"}, {"content", text}}});
  return render_chat(tok, row.dump(), true, where).text;
}

int sample_prompts_file(const LMModel& model, const Registry& registry, const Tokenizer& tok, const SampleSettings& s,
                        uint64_t seed, const std::string& prompts_path, const std::string& output, int64_t max_batch) {
  const int64_t context = model.config().dims.max_seq_len;
  const std::vector<Prompt> prompts = read_prompts(prompts_path, tok, s.chat, context);
  bool any_chat = false;
  for (const auto& p : prompts) any_chat |= p.chat;
  SamplingParams sp = sampling_params(s);  // each row's budget: its StreamRequest's
  if (any_chat) sp.eos_id = tok.eos_id();  // one stream, one end token: a file with chats ends every row there
  DecodeGenerator generator(model, registry);
  DecodeStream stream(generator, std::min<int64_t>(max_batch, static_cast<int64_t>(prompts.size())), sp);

  std::vector<StreamRequest> waiting;
  for (size_t i = 0; i < prompts.size(); ++i) {
    StreamRequest r;
    r.id = static_cast<int64_t>(i);
    r.prompt = prompts[i].ids;
    r.seed = seed + i;
    r.max_new_tokens = std::min<int64_t>(s.max_tokens, context - static_cast<int64_t>(r.prompt.size()));
    waiting.push_back(std::move(r));
  }
  std::vector<std::vector<int64_t>> completions(prompts.size());
  std::vector<bool> stopped(prompts.size(), false);
  std::vector<int64_t> drawn(prompts.size(), 0);
  int64_t tokens = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (!waiting.empty() || !stream.idle()) {
    const int64_t n = stream.admit(waiting);
    waiting.erase(waiting.begin(), waiting.begin() + n);
    for (const StreamToken& t : stream.advance()) {
      ++tokens;
      ++drawn[static_cast<size_t>(t.id)];
      if (!(t.stopped && t.token == sp.eos_id)) completions[static_cast<size_t>(t.id)].push_back(t.token);
      if (t.last) stopped[static_cast<size_t>(t.id)] = t.stopped;
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::string lines;
  for (size_t i = 0; i < prompts.size(); ++i) {
    nlohmann::json row{{"index", i},
                       {"prompt", prompts[i].text},
                       {"completion", tok.decode(completions[i])},
                       {"finish_reason", stopped[i] ? "stop" : "length"},
                       {"completion_tokens", drawn[i]}};
    lines += row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  if (output.empty())
    std::cout << lines << std::flush;
  else
    write_file_atomically(output, lines);
  char rate[200];
  std::snprintf(
      rate, sizeof rate,
      "sample --prompts: %zu prompts, %lld new tokens in %.2f s (%.1f tokens/s, up to %lld rows decoded together)",
      prompts.size(), static_cast<long long>(tokens), seconds, seconds > 0 ? tokens / seconds : 0.0,
      static_cast<long long>(stream.rows()));
  log_info(rate);
  return 0;
}

}  // namespace linearnexus
