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

// Python's json module writes float("inf") and float("nan") as the bare words Infinity, -Infinity and
// NaN, which JSON does not have (transformers' Mamba-2 config.json: "time_step_limit": [0.0,
// Infinity]). The same text with those words, outside strings, as 1e308, -1e308 and null: values no
// configuration reaches, which nlohmann's parser reads.
std::string python_json_floats(std::string_view text);

}  // namespace linearnexus
