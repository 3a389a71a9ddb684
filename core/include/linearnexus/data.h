#pragma once
// Token datasets and batches.
//
// A batch is a pure function of (seed, step, micro-batch, rank): a resumed run draws exactly the
// batches the uninterrupted run would have drawn, with no loader state to save.
#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "linearnexus/params.h"
#include "linearnexus/tokenizer.h"

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

struct DataSplits {
  std::shared_ptr<TokenDataset> train;
  std::shared_ptr<TokenDataset> val;
  std::shared_ptr<Tokenizer> tokenizer;
};

// The host's `data:` schema.
const Schema& data_schema();
// Loads the `data` section: a text file (downloaded when missing and data.download names a URL),
// or "builtin:arithmetic"; tokenizes it and splits off the last val_fraction for validation.
// `base_dir` resolves relative paths (the experiment file's folder). Existing tokenizer (from a
// checkpoint) is reused when given so ids stay the same.
DataSplits load_data(const Params& data, const std::string& base_dir,
                     std::shared_ptr<Tokenizer> tokenizer = nullptr);

// The generated corpus behind "builtin:arithmetic": lines like "12+35=47".
std::string builtin_arithmetic_corpus(int64_t n_lines, uint64_t seed);

struct Batch {
  at::Tensor x;  // [B, T] int64 inputs
  at::Tensor y;  // [B, T] int64 next-token targets
};
// Random windows of seq_len + 1 tokens.
Batch get_batch(const TokenDataset& data, int64_t batch_size, int64_t seq_len, uint64_t seed, int64_t step,
                int64_t micro_step, int64_t rank = 0);

// Download `url` to `dest` (via a temporary file) with libcurl; checks expected size/SHA-256
// when given (0 / ""). Throws Error saying where to put the file by hand when it fails.
void download_file(const std::string& url, const std::string& dest, int64_t expected_size,
                   const std::string& expected_sha256);
std::string sha256_file(const std::string& path);

}  // namespace linearnexus
