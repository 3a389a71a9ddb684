#pragma once
// Prepared token folders (`linearnexus data prepare`), implemented in token_files.cpp.
#include <string>
#include <vector>

#include "linearnexus/host/data.h"

namespace linearnexus {

// A prepared folder holds meta.json (format, dtype, vocabulary size, the tokenizer, and for each
// split its .bin shard files with token counts and SHA-256) and the shards: raw little-endian
// uint16 tokens when the vocabulary fits, else uint32. data.path may name such a folder; batches
// read just their windows of the shards (never the whole file into memory).
struct PrepareOptions {
  std::vector<std::string> inputs;  // text files; each is one document (GPT-2: <|endoftext|> between)
  std::string tokenizer = "gpt2";   // char, or what load_tokenizer reads (tokenizer.h)
  std::string out_dir;
  double val_fraction = 0.005;    // the last tokens go to val.bin
  int64_t chunk_bytes = 1 << 20;  // text encoded per task; two tasks run at once
  bool progress = true;           // a progress bar on stderr
  bool force = false;             // overwrite a folder that is not empty (a prepared dataset, a run)
};
struct PreparedSummary {
  std::string dtype;
  int64_t vocab_size = 0, train_tokens = 0, val_tokens = 0, input_bytes = 0;
  double seconds = 0;
};
// Writes out_dir/{train.bin, val.bin, meta.json}, each through a temporary file renamed at the end,
// so an interrupted run never leaves a complete-looking .bin. Errors name the file at fault.
PreparedSummary prepare_token_files(const PrepareOptions& options);
bool is_prepared_dir(const std::string& path);
// The splits and the tokenizer of a prepared folder. Checked before training: meta.json field by
// field, each shard's size and SHA-256 (the hash cached in DIR/verified.json by size + mtime), the
// tokenizer against vocab_size; while reading: every token id < vocab_size, and a shard that
// shrinks is an Error, not a crash. verify_hashes false (`validate`): everything but the SHA-256s,
// and nothing written.
DataSplits load_prepared(const std::string& dir, bool verify_hashes = true);

}  // namespace linearnexus
