#pragma once
// Training examples with a loss mask: what `data.format: chat | prompt_completion | preference` reads
// from a JSON Lines file (data.path), as TRL's SFT and DPO trainers take them.
//
//   chat               {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": ...}, ...],
//                      optional "tools"}: rendered with the tokenizer's own chat template (its
//                      tokenizer_config.json's, through host/src/jinja.h); the loss is on the
//                      assistant messages' tokens only (the template's {% generation %} spans where it
//                      has them, else each assistant message's content to the end of its turn).
//   prompt_completion  {"prompt": "...", "completion": "..."} (the completion's tokens carry the loss,
//                      the tokenizer's end-of-text appended), or conversational: {"prompt": [messages],
//                      "completion": [messages]} rendered as chat, the loss on the completion's.
//   preference         {"prompt", "chosen", "rejected"}, plain or conversational as prompt_completion:
//                      each example is a pair, the chosen and the rejected completion of one prompt.
// data.train_on_prompt: true puts the loss on every token instead.
//
// The mask is made from where the rendered text's spans fall in its tokens (each token's bytes, from
// the tokenizer itself), never by tokenizing pieces apart and guessing; a token that has any byte in
// a span to train on carries the loss. Tokenizers whose tokens do not spell the text byte for byte
// (SentencePiece's normalisation) are refused for masked formats, naming the key.
//
// Batches are padded, not packed: one example per row, cut to data.seq_len + 1 tokens (counted in
// the log once), the rest of the row padding that carries no loss. Causal blocks never look ahead, so
// a padded row computes what the example would alone.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "linearnexus/tokenizer.h"
#include "linearnexus/trainer.h"

namespace linearnexus {

struct DataSettings;
struct BatchSpec;

enum class DataFormat { Text, Chat, PromptCompletion, Preference };
DataFormat parse_data_format(const std::string& name);  // "text" | "chat" | "prompt_completion" | "preference"

// One sequence: ids, and for each whether predicting it carries the loss (train[0] is never used:
// nothing predicts the first token).
struct Sequence {
  std::vector<int64_t> ids;
  std::vector<uint8_t> train;
};

// The examples of one split. A preference example is two sequences (chosen, rejected); others one.
class ExampleSet {
 public:
  ExampleSet(std::vector<std::vector<Sequence>> rows, std::string description);
  int64_t size() const { return static_cast<int64_t>(rows_.size()); }
  int64_t sequences_per_example() const { return rows_.empty() ? 1 : static_cast<int64_t>(rows_[0].size()); }
  const std::vector<Sequence>& at(int64_t i) const { return rows_.at(static_cast<size_t>(i)); }
  const std::string& describe() const { return description_; }
  int64_t trained_tokens() const;  // how many tokens carry the loss, over the split

 private:
  std::vector<std::vector<Sequence>> rows_;
  std::string description_;
};

struct ExampleSplits {
  std::shared_ptr<ExampleSet> train, val;
};

// Reads data.path (JSON Lines) in data.format with `tokenizer`: every row checked (an Error names the
// file, the line and the key), the last val_fraction of the rows (at least one) held out.
ExampleSplits load_examples(const DataSettings& data, const std::string& base_dir, const Tokenizer& tokenizer);

// The rendered text of one chat (`messages` a JSON array text) with the tokenizer's template, and its
// byte spans that carry the loss: what `linearnexus data chat-render` prints and load_examples trains on.
struct RenderedChat {
  std::string text;
  std::vector<std::pair<size_t, size_t>> trained;  // [begin, end) byte ranges
};
RenderedChat render_chat(const Tokenizer& tokenizer, const std::string& row_json, bool add_generation_prompt,
                         const std::string& where);

// Rows of `spec.batch_size` examples (a preference example: two consecutive rows, chosen then
// rejected) as padded windows: x [R, T] the ids (0 past an example's end), y [R, T] the next id where
// it carries the loss, else -1. Which examples: a pure function of (spec, step, micro_step, rank),
// as get_batch draws windows (random with replacement, or epochs of a permutation).
Batch get_example_batch(const ExampleSet& set, const BatchSpec& spec, int64_t step, int64_t micro_step,
                        int64_t rank = 0);
// Validation batch `index` (examples index * B .. in order, wrapping).
Batch get_example_batch_in_order(const ExampleSet& set, int64_t batch_size, int64_t seq_len, int64_t index);

}  // namespace linearnexus
