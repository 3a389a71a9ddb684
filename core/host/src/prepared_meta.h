#pragma once
// meta.json of a prepared token folder, read and validated (core-internal, free of LibTorch so
// tests/fuzz builds it alone with sanitizers; token_files.cpp writes and uses it).
#include <cstdint>
#include <string>
#include <vector>

namespace linearnexus {

constexpr const char* kPreparedFormat = "linearnexus-tokens-1";

struct PreparedSplit {
  std::vector<std::string> files;   // plain file names inside the folder
  std::vector<int64_t> tokens;      // per file
  std::vector<std::string> sha256;  // per file, lowercase hex
};

struct PreparedMeta {
  int width = 2;  // bytes per token: 2 (uint16) or 4 (uint32)
  int64_t vocab_size = 0;
  std::string tokenizer_json;  // for tokenizer_from_json
  PreparedSplit train, val;
};

// Every field checked: format, dtype, a vocabulary that fits the dtype, a tokenizer object, and per
// split one token count and one SHA-256 per shard, shards named plainly (no folders). Throws Error
// naming `meta_path` and the field.
PreparedMeta parse_prepared_meta(const std::string& text, const std::string& meta_path);

}  // namespace linearnexus
