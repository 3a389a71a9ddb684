#pragma once
// The safetensors header, read and validated completely before any tensor is allocated.
// Core-internal and free of LibTorch, so tests/fuzz builds it alone with sanitizers.
#include <cstdint>
#include <istream>
#include <map>
#include <string>
#include <vector>

namespace linearnexus {

struct TensorSpan {
  std::string name;
  std::string dtype;            // a safetensors dtype name: F32, BF16, I64, ...
  std::vector<int64_t> shape;   // every dimension >= 0
  uint64_t begin = 0, end = 0;  // byte offsets from the start of the data section
};

struct SafetensorsHeader {
  std::vector<TensorSpan> tensors;  // in the header's (sorted-by-name) order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + header length
};

// The longest header read (as Python's safetensors).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// Bytes per element of a safetensors dtype name; 0 when the name is unknown.
int64_t safetensors_dtype_size(const std::string& dtype);

// Reads the 8-byte length and the JSON header from `in` (positioned at the start of a file of
// `file_size` bytes) and checks everything: the length fits the file (and 100 MiB), the JSON is at
// most a few levels deep, every entry has a known dtype, a shape of non-negative dimensions whose
// byte size (without overflow) equals its data span, spans lie inside the file, do not overlap and
// leave no byte of the data section uncovered (no gap, no trailing bytes: as the safetensors library
// requires), and metadata values are strings. Throws Error "checkpoint PATH: <what, which tensor/key>; ...".
SafetensorsHeader read_safetensors_header(std::istream& in, uint64_t file_size, const std::string& path);

}  // namespace linearnexus
