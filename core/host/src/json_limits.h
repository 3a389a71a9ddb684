#pragma once
// Parsing JSON that comes from files LinearNexus did not necessarily write (checkpoint headers and
// metadata, meta.json, tokenizer files). Core-internal; free of LibTorch so tests/fuzz builds it alone.
#include <nlohmann/json.hpp>

#include <string_view>

namespace linearnexus {

// nlohmann's parser keeps its own stack, but dump(), comparisons and our own walks recurse once per
// level: a file nested 100k levels deep overflowed the stack. Every format we read is a few levels
// deep, so deeper text is refused before it is parsed. Throws std::runtime_error (callers add the
// file's name) on too deep or malformed text.
nlohmann::json parse_json_limited(std::string_view text, int max_depth = 16);

}  // namespace linearnexus
