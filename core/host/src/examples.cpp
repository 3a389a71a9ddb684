// Training examples with a loss mask from JSON Lines (examples.h): chat rows rendered with the
// tokenizer's chat template, prompt / completion rows, preference pairs; padded batches of them.
#include "linearnexus/host/examples.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "jinja.h"
#include "linearnexus/error.h"
#include "linearnexus/host/data.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/log.h"

namespace fs = std::filesystem;
using nlohmann::ordered_json;

namespace linearnexus {

DataFormat parse_data_format(const std::string& name) {
  if (name == "text") return DataFormat::Text;
  if (name == "chat") return DataFormat::Chat;
  if (name == "prompt_completion") return DataFormat::PromptCompletion;
  if (name == "preference") return DataFormat::Preference;
  throw Error("data.format must be text, chat, prompt_completion or preference (got '" + name + "')");
}

ExampleSet::ExampleSet(std::vector<std::vector<Sequence>> rows, std::string description)
    : rows_(std::move(rows)), description_(std::move(description)) {}

int64_t ExampleSet::trained_tokens() const {
  int64_t n = 0;
  for (const auto& row : rows_)
    for (const auto& s : row) n += std::count(s.train.begin() + (s.train.empty() ? 0 : 1), s.train.end(), 1);
  return n;
}

namespace {

using Spans = std::vector<std::pair<size_t, size_t>>;

// The text of a special token ("" when the tokenizer has none), for the template's bos_token / eos_token.
std::string special_text(const Tokenizer& tok, int64_t id) { return id >= 0 ? tok.decode({id}) : std::string(); }

// The template and its context's special tokens, once per tokenizer.
struct Renderer {
  const Tokenizer& tok;
  std::shared_ptr<jinja::ChatTemplate> tmpl;
  explicit Renderer(const Tokenizer& t, const std::string& where) : tok(t) {
    const std::string text = t.chat_template();
    if (text.empty())
      throw Error(where + ": the tokenizer (" + t.kind() +
                  ") has no chat template; data.format chat and conversational " +
                  "prompts need a tokenizer whose tokenizer_config.json (or chat_template.jinja) has one");
    tmpl = std::make_shared<jinja::ChatTemplate>(text);
  }
  // messages [a JSON array] -> the rendered text and the assistant spans (every message counted).
  RenderedChat render(const ordered_json& messages, const ordered_json* tools, bool generation_prompt,
                      size_t trained_from_message = 0) const {
    ordered_json ctx = {{"messages", messages},
                        {"add_generation_prompt", generation_prompt},
                        {"bos_token", special_text(tok, tok.bos_id())},
                        {"eos_token", special_text(tok, tok.eos_id())}};
    ctx["tools"] = tools ? *tools : ordered_json(nullptr);
    ctx["documents"] = nullptr;
    const jinja::ChatRender r = tmpl->render_with_spans(ctx);
    RenderedChat out;
    out.text = r.text;
    for (const auto& s : jinja::assistant_spans(r, messages, tmpl->has_generation_blocks()))
      if (s.message >= static_cast<int>(trained_from_message)) out.trained.emplace_back(s.begin, s.end);
    return out;
  }
};

// One JSON Lines row. Key order kept (a template's tojson prints keys as the file has them, as
// Python does), and depth-limited (json_limits.h says why): messages with tool calls nest a few
// levels, never 64.
ordered_json parse_row(const std::string& text, const std::string& where) {
  try {
    return ordered_json::parse(text, [&](int depth, ordered_json::parse_event_t, ordered_json&) {
      if (depth > 64) throw Error(where + ": nested deeper than 64 levels");
      return true;
    });
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(where + ": not valid JSON (" + std::string(e.what()) + ")");
  }
}

// A row's messages: an array of {role, content...} objects (the template reads the rest).
const ordered_json& messages_of(const ordered_json& v, const std::string& where, const char* key) {
  if (!v.is_array() || v.empty()) throw Error(where + ": '" + key + "' must be a non-empty list of messages");
  for (const auto& m : v)
    if (!m.is_object() || !m.contains("role") || !m.at("role").is_string())
      throw Error(where + ": every message of '" + key + "' must be an object with a string 'role'");
  return v;
}

// ids of `text` and, for each, whether it carries the loss: any of its bytes inside `trained`
// (all of them when `everything`). Each token's bytes come from the tokenizer, and must spell the
// text exactly: otherwise token and text offsets cannot be matched.
Sequence tokenize_masked(const Tokenizer& tok, const std::string& text, const Spans& trained, bool everything,
                         const std::string& where) {
  Sequence s;
  s.ids = tok.encode(text);
  s.train.assign(s.ids.size(), everything ? 1 : 0);
  if (everything) return s;
  size_t pos = 0;
  for (size_t i = 0; i < s.ids.size(); ++i) {
    const std::string piece = tok.decode({s.ids[i]});
    if (text.compare(pos, piece.size(), piece) != 0)
      throw Error(where + ": the " + tok.kind() + " tokenizer's tokens do not spell the text byte for byte (at byte " +
                  std::to_string(pos) + "), so the loss mask cannot be placed on them; use a byte-level tokenizer " +
                  "(tokenizer.json), or data.train_on_prompt: true");
    const size_t end = pos + piece.size();
    for (const auto& [b, e] : trained) s.train[i] = s.train[i] || (pos < e && end > b);
    pos = end;
  }
  if (pos != text.size())
    throw Error(where + ": the " + tok.kind() +
                " tokenizer's tokens do not spell the whole text; use a byte-level "
                "tokenizer (tokenizer.json), or data.train_on_prompt: true");
  return s;
}

// A plain prompt + completion: the completion and the end-of-text token carry the loss.
Sequence plain_pair(const Tokenizer& tok, const std::string& prompt, const std::string& completion, bool everything,
                    const std::string& where) {
  const std::string eos = special_text(tok, tok.eos_id());
  const std::string text = prompt + completion + eos;
  return tokenize_masked(tok, text, {{prompt.size(), text.size()}}, everything, where);
}

const std::string& text_of(const ordered_json& row, const char* key, const std::string& where) {
  if (!row.contains(key) || !row.at(key).is_string()) throw Error(where + ": '" + key + "' must be a string");
  return row.at(key).get_ref<const std::string&>();
}

// prompt + one completion (plain strings, or lists of messages rendered together).
Sequence completion_of(const Tokenizer& tok, const Renderer* chat, const ordered_json& row, const char* completion_key,
                       bool everything, const std::string& where) {
  const ordered_json& prompt = row.at("prompt");
  if (prompt.is_string())
    return plain_pair(tok, prompt.get<std::string>(), text_of(row, completion_key, where), everything, where);
  const ordered_json& p = messages_of(prompt, where, "prompt");
  if (!row.contains(completion_key)) throw Error(where + ": '" + completion_key + "' is missing");
  const ordered_json& c = messages_of(row.at(completion_key), where, completion_key);
  ordered_json all = p;
  for (const auto& m : c) all.push_back(m);
  const ordered_json* tools = row.contains("tools") ? &row.at("tools") : nullptr;
  RenderedChat r = chat->render(all, tools, false, p.size());
  return tokenize_masked(tok, r.text, r.trained, everything, where);
}

std::vector<Sequence> example_of(const Tokenizer& tok, const Renderer* chat, DataFormat format, const ordered_json& row,
                                 bool everything, const std::string& where) {
  if (!row.is_object()) throw Error(where + ": each line must be a JSON object");
  switch (format) {
    case DataFormat::Chat: {
      if (!row.contains("messages")) throw Error(where + ": no 'messages' (data.format: chat)");
      const ordered_json* tools = row.contains("tools") ? &row.at("tools") : nullptr;
      RenderedChat r = chat->render(messages_of(row.at("messages"), where, "messages"), tools, false);
      if (r.trained.empty() && !everything)
        throw Error(where + ": no assistant message: nothing to train on (data.format: chat)");
      return {tokenize_masked(tok, r.text, r.trained, everything, where)};
    }
    case DataFormat::PromptCompletion:
      if (!row.contains("prompt")) throw Error(where + ": no 'prompt' (data.format: prompt_completion)");
      return {completion_of(tok, chat, row, "completion", everything, where)};
    case DataFormat::Preference:
      if (!row.contains("prompt")) throw Error(where + ": no 'prompt' (data.format: preference)");
      return {completion_of(tok, chat, row, "chosen", everything, where),
              completion_of(tok, chat, row, "rejected", everything, where)};
    case DataFormat::Text:
      break;
  }
  throw Error(where + ": data.format text is not read as examples");
}

}  // namespace

RenderedChat render_chat(const Tokenizer& tokenizer, const std::string& row_json, bool add_generation_prompt,
                         const std::string& where) {
  const ordered_json row = parse_row(row_json, where);
  if (!row.is_object() || !row.contains("messages")) throw Error(where + ": expected {\"messages\": [...]}");
  Renderer chat(tokenizer, where);
  const ordered_json* tools = row.contains("tools") ? &row.at("tools") : nullptr;
  return chat.render(messages_of(row.at("messages"), where, "messages"), tools, add_generation_prompt);
}

ExampleSplits load_examples(const DataSettings& data, const std::string& base_dir, const Tokenizer& tok) {
  const DataFormat format = parse_data_format(data.format);
  fs::path path(data.path);
  if (path.is_relative() && !base_dir.empty()) path = fs::path(base_dir) / path;
  if (!fs::exists(path))
    throw Error("data.path: '" + path.string() + "' does not exist (data.format " + data.format +
                " reads a JSON Lines file)");
  std::istringstream in;
  try {
    in.str(read_file(path.string(), file_kind::kText));  // a regular file within its limit (read_file.h)
  } catch (const Error& e) {
    throw Error(std::string("data.path: ") + e.what() + " (data.format " + data.format + " reads a JSON Lines file)");
  }
  std::unique_ptr<Renderer> chat;
  std::vector<std::vector<Sequence>> rows;
  int64_t line_no = 0, cut = 0;
  const size_t max_len = static_cast<size_t>(data.seq_len) + 1;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path.string() + ":" + std::to_string(line_no);
    const ordered_json row = parse_row(line, where);
    const bool needs_template =
        format == DataFormat::Chat || (row.is_object() && row.contains("prompt") && row.at("prompt").is_array());
    if (needs_template && !chat) chat = std::make_unique<Renderer>(tok, where);
    auto example = example_of(tok, chat.get(), format, row, data.train_on_prompt, where);
    for (auto& s : example)
      if (s.ids.size() > max_len) {
        s.ids.resize(max_len), s.train.resize(max_len);
        ++cut;
      }
    rows.push_back(std::move(example));
  }
  if (rows.size() < 2)
    throw Error("data.path: '" + path.string() + "' holds " + std::to_string(rows.size()) +
                " example(s); a training and a validation split need at least 2");
  if (cut > 0)
    log_warn("data: " + std::to_string(cut) + " sequence(s) of " + path.string() +
             " cut to data.seq_len + 1 = " + std::to_string(max_len) + " tokens");
  const size_t n_val = std::max<size_t>(1, static_cast<size_t>(static_cast<double>(rows.size()) * data.val_fraction));
  std::vector<std::vector<Sequence>> val(std::make_move_iterator(rows.end() - static_cast<std::ptrdiff_t>(n_val)),
                                         std::make_move_iterator(rows.end()));
  rows.resize(rows.size() - n_val);
  ExampleSplits out;
  out.train = std::make_shared<ExampleSet>(std::move(rows), path.string() + " (train split, " + data.format + ")");
  out.val = std::make_shared<ExampleSet>(std::move(val), path.string() + " (validation split, " + data.format + ")");
  return out;
}

namespace {
// Rows for examples `items` of `set`: every sequence of each in turn, padded to T + 1.
Batch pad_rows(const ExampleSet& set, const std::vector<int64_t>& items, int64_t T) {
  const int64_t per = set.sequences_per_example(), R = static_cast<int64_t>(items.size()) * per;
  auto x = at::zeros({R, T}, at::kLong), y = at::full({R, T}, -1, at::kLong);
  auto xa = x.accessor<int64_t, 2>(), ya = y.accessor<int64_t, 2>();
  int64_t r = 0;
  for (int64_t item : items)
    for (const auto& s : set.at(item)) {
      const int64_t n = std::min<int64_t>(static_cast<int64_t>(s.ids.size()), T + 1);
      for (int64_t t = 0; t + 1 < n; ++t) {
        xa[r][t] = s.ids[t];
        if (s.train[t + 1]) ya[r][t] = s.ids[t + 1];
      }
      ++r;
    }
  return {x, y};
}
}  // namespace

Batch get_example_batch(const ExampleSet& set, const BatchSpec& spec, int64_t step, int64_t micro_step, int64_t rank) {
  return pad_rows(set, draw_items(spec, set.size(), step, micro_step, rank), spec.seq_len);
}

Batch get_example_batch_in_order(const ExampleSet& set, int64_t batch_size, int64_t seq_len, int64_t index) {
  std::vector<int64_t> items;
  for (int64_t b = 0; b < batch_size; ++b) items.push_back((index * batch_size + b) % set.size());
  return pad_rows(set, items, seq_len);
}

}  // namespace linearnexus
