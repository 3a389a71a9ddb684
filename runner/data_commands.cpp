// `tokenize`, `data prepare`, `data chat-render` (data_commands.h).
#include "data_commands.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <iostream>
#include <sstream>

#include "linearnexus/error.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/examples.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/host/tokenizers.h"

namespace linearnexus {

DataCommands::DataCommands(CLI::App& app) {
  // --tokenizer takes what data.tokenizer does, documented once in its schema.
  std::string tokenizer_doc;
  for (const auto& spec : data_schema())
    if (spec.key == "tokenizer") tokenizer_doc = spec.doc;

  tokenize_ = app.add_subcommand("tokenize", "UTF-8 text on stdin -> token ids on stdout (or --decode)");
  tokenize_->add_option("--tokenizer", tokenizer_, tokenizer_doc + " (not char)")->required();
  tokenize_->add_flag("--decode", decode_, "read space-separated ids, print the text");

  auto* data = app.add_subcommand("data", "prepare token files; render chat rows as the model sees them");
  data->require_subcommand(1);
  PrepareOptions& prep = prepare_options_;
  prepare_ = data->add_subcommand("prepare", "tokenize text files into train.bin / val.bin + meta.json");
  prepare_->add_option("--tokenizer", prep.tokenizer, tokenizer_doc)->required();
  prepare_->add_option("--input", prep.inputs, "text files (one document each)")->required()->expected(1, -1);
  prepare_->add_option("--out", prep.out_dir, "output folder")->required();
  prepare_->add_option("--val-fraction", prep.val_fraction, "fraction of the tokens (at the end) for val.bin")
      ->capture_default_str();
  // Callbacks rather than bound flags: CLI11 prints a bound flag's value as "{false}" in --help.
  prepare_->add_flag_callback(
      "--no-progress", [&prep] { prep.progress = false; }, "no progress bar on stderr (default: a progress bar)");
  prepare_->add_flag_callback(
      "--force", [&prep] { prep.force = true; }, "overwrite an output folder that is not empty (default: refuse)");

  chat_render_ = data->add_subcommand(
      "chat-render",
      "print each {\"messages\": [...]} row of a JSON Lines file rendered with the tokenizer's chat "
      "template, one JSON string per line");
  chat_render_->add_option("--tokenizer", tokenizer_, tokenizer_doc + " (one with a chat template)")->required();
  chat_render_->add_option("--input", input_, "JSON Lines file of {\"messages\": [...], \"tools\": ...} rows")
      ->required();
  chat_render_->add_flag("--add-generation-prompt", add_generation_prompt_,
                         "end with the assistant's header, as for generation (sample --chat)");
  chat_render_->add_flag(
      "--with-mask", with_mask_,
      "print {\"text\", \"trained\": [[begin, end], ...]} objects: the byte ranges that carry the loss "
      "in chat SFT");
}

bool DataCommands::parsed() const { return tokenize_->parsed() || prepare_->parsed() || chat_render_->parsed(); }

int DataCommands::run() {
  if (tokenize_->parsed()) return run_tokenize();
  if (chat_render_->parsed()) return run_chat_render();
  const PreparedSummary s = prepare_token_files(prepare_options_);
  std::cout << prepare_options_.out_dir << ": " << s.train_tokens << " train + " << s.val_tokens
            << " validation tokens (" << s.dtype << ", vocabulary " << s.vocab_size << ") from " << s.input_bytes
            << " bytes in " << s.seconds << " s\n";
  return 0;
}

// stdin text -> ids on one line, or (decode) ids -> text.
int DataCommands::run_tokenize() {
  // A character vocabulary exists only per corpus (saved with a run), so there is none to name here.
  if (tokenizer_ == "char")
    throw Error(
        "tokenize: --tokenizer must be gpt2, a tokenizer.json / tokenizer.model / .tiktoken file, or a folder "
        "holding one (a Hugging Face model or run folder) or encoder.json + vocab.bpe");
  auto tok = load_tokenizer(tokenizer_);
  if (decode_) {
    std::vector<int64_t> ids;
    std::string word;
    while (std::cin >> word) {
      char* end = nullptr;
      const long long id = std::strtoll(word.c_str(), &end, 10);
      if (*end) throw Error("tokenize --decode: '" + word + "' on stdin is not a token id");
      ids.push_back(id);
    }
    std::cout << tok->decode(ids) << std::flush;
    return 0;
  }
  std::stringstream text;
  text << std::cin.rdbuf();
  const auto ids = tok->encode(text.str());
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n";
  return 0;
}

int DataCommands::run_chat_render() {
  auto tok = load_tokenizer(tokenizer_);
  std::istringstream in;
  try {
    in.str(read_file(input_, file_kind::kText));  // a regular file within its limit (read_file.h)
  } catch (const Error& e) {
    throw Error(std::string("data chat-render: --input: ") + e.what());
  }
  int64_t line_no = 0;
  // Every row is rendered before anything is printed: a bad row stops the command with nothing
  // half-written on stdout.
  std::ostringstream out;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const RenderedChat r = render_chat(*tok, line, add_generation_prompt_, input_ + ":" + std::to_string(line_no));
    const nlohmann::json text = r.text;
    if (!with_mask_) {
      out << text.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      continue;
    }
    nlohmann::json row = {{"text", text}, {"trained", nlohmann::json::array()}};
    for (const auto& [b, e] : r.trained) row["trained"].push_back({b, e});
    out << row.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  std::cout << out.str() << std::flush;
  return 0;
}

}  // namespace linearnexus
