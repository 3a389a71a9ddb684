#pragma once
// Token datasets, batches and downloads (prepared token folders: token_files.h).
//
// A batch is a pure function of (seed, step, micro-batch, rank): a resumed run draws exactly the
// batches the uninterrupted run would have drawn, with no loader state to save.
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "linearnexus/params.h"
#include "linearnexus/trainer.h"
#include "linearnexus/host/tokenizers.h"

namespace linearnexus {

// One split's token stream.
class TokenDataset {
 public:
  virtual ~TokenDataset() = default;
  virtual int64_t size() const = 0;
  // Copy tokens [offset, offset + n) into out.
  virtual void read(int64_t offset, int64_t n, int64_t* out) const = 0;
  virtual std::string describe() const = 0;  // for messages: "tinyshakespeare.txt (train split)"
};

// An in-memory token stream.
std::shared_ptr<TokenDataset> make_memory_dataset(std::vector<int64_t> tokens, std::string description);

class ExampleSet;  // examples.h
// What data: reads. data.format text: token streams (train, val); the examples formats: examples
// (train_examples, val_examples) and no streams.
struct DataSplits {
  std::shared_ptr<TokenDataset> train;
  std::shared_ptr<TokenDataset> val;
  std::shared_ptr<ExampleSet> train_examples, val_examples;
  std::shared_ptr<Tokenizer> tokenizer;
  std::string describe() const;  // the training split's name, for messages
};

// How training windows are drawn (data.sampling).
enum class Sampling {
  Random,  // windows at uniformly random offsets, drawn independently (nanoGPT)
  Epoch,   // non-overlapping windows, each seen once per epoch in a fresh shuffled order
};
Sampling parse_sampling(const std::string& name);  // "random" | "epoch"

// The host's `data:` schema, and the section parsed once.
const Schema& data_schema();
struct DataSettings {
  std::string path;  // a text file, builtin:arithmetic, task, or a prepared folder
  std::string tokenizer = "char";
  int64_t seq_len = 256;
  double val_fraction = 0.1;
  std::string download, download_sha256;  // a URL fetched to path when it is missing; its hash
  int64_t download_size = 0;
  Sampling sampling = Sampling::Random;
  std::string format = "text";   // text | chat | prompt_completion | preference (examples.h)
  bool train_on_prompt = false;  // examples formats: the loss on every token
  static DataSettings from(const Params& data);
};
// Loads the `data` section: a text file (downloaded when missing and data.download names a URL),
// "builtin:arithmetic", or "task"; tokenizes it and splits off the last val_fraction for validation.
// `base_dir` resolves relative paths (the experiment file's folder). Existing tokenizer (from a
// checkpoint) is reused when given so ids stay the same.
// data.path "task": `task_text` is the text (the task's worked examples, made by the caller).
// data.format chat / prompt_completion / preference: data.path is a JSON Lines file of examples
// (examples.h's load_examples), the tokenizer one that is not "char".
DataSplits load_data(const DataSettings& data, const std::string& base_dir,
                     std::shared_ptr<Tokenizer> tokenizer = nullptr, const std::string& task_text = "");

// What load_data would load, checked without tokenizing a text file with a BPE (for `validate`,
// preflight.h): the tokenizer the data is, or would be, tokenized with (null: a char vocabulary of a
// file still to be downloaded) and a description of the data. A prepared folder's meta.json and shard
// sizes are checked, not their SHA-256; a text file's token count only when it is known without a BPE
// (char: one token per byte). Errors are load_data's.
std::shared_ptr<Tokenizer> preview_data(const DataSettings& data, const std::string& base_dir,
                                        std::shared_ptr<Tokenizer> tokenizer, const std::string& task_text,
                                        std::string* description);

// The generated corpus behind "builtin:arithmetic": lines like "12+35=47".
std::string builtin_arithmetic_corpus(int64_t n_lines, uint64_t seed);

struct BatchSpec {
  int64_t batch_size = 1;
  int64_t seq_len = 1;
  uint64_t seed = 0;
  Sampling sampling = Sampling::Random;
  int64_t micro_steps = 1;  // micro-batches per optimizer step (grad_accum)
  int64_t world_size = 1;   // data-parallel ranks
};
// Which batch_size of n items (token windows, examples) rows (step, micro_step, rank) take: a pure
// function of them and the spec. Random: drawn uniformly with replacement, one stream per (step,
// micro-batch) that rank r takes rows [r B, (r+1) B) of; Epoch: the run's g-th row is item
// permute(g mod n) of epoch g / n, a fresh permutation each epoch.
std::vector<int64_t> draw_items(const BatchSpec& spec, int64_t n, int64_t step, int64_t micro_step, int64_t rank);
// Windows of seq_len + 1 tokens. A pure function of (spec, step, micro_step, rank): a resumed run
// draws exactly the batches the uninterrupted one would have. Rank r of world_size W draws rows
// [r B, (r+1) B) of what one process with batch W B would draw, in both modes: a data-parallel run
// sees the same data as one process with the global batch, and a run resumed on another number of
// ranks continues from the same step on the new layout's batches. In Epoch mode the windows of all
// ranks and micro-steps of one step are disjoint, and each epoch is a different permutation.
Batch get_batch(const TokenDataset& data, const BatchSpec& spec, int64_t step, int64_t micro_step, int64_t rank = 0);
inline Batch get_batch(const TokenDataset& data, int64_t batch_size, int64_t seq_len, uint64_t seed, int64_t step,
                       int64_t micro_step, int64_t rank = 0) {
  return get_batch(data, BatchSpec{batch_size, seq_len, seed}, step, micro_step, rank);
}

// Download `url` to `dest` (via a temporary file) with libcurl; checks expected size/SHA-256
// when given (0 / ""). Throws Error saying where to put the file by hand when it fails.
void download_file(const std::string& url, const std::string& dest, int64_t expected_size,
                   const std::string& expected_sha256);
std::string sha256_file(const std::string& path);

}  // namespace linearnexus
