// Validation of a safetensors header (see safetensors_header.h). Format: 8-byte little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
// {str: str}}, then the tensors' bytes.
#include "safetensors_header.h"

#include <algorithm>

#include "json_limits.h"
#include "linearnexus/error.h"

using nlohmann::json;

namespace linearnexus {

namespace {

// {tensor: {shape: [..]}} is three levels; a little room for metadata written by other tools is
// still refused beyond this (every value must be a string anyway).
constexpr int kMaxDepth = 4;

[[noreturn]] void corrupt(const std::string& path, const std::string& what) {
  throw Error("checkpoint " + path + ": " + what +
              "; the file is corrupt or not a safetensors checkpoint: use another checkpoint (e.g. an earlier "
              "step_*.safetensors of the run)");
}

// A JSON number that is a non-negative integer (safetensors stores sizes and offsets so).
bool as_count(const json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

TensorSpan read_entry(const std::string& path, const std::string& name, const json& e, uint64_t data_bytes) {
  const std::string who = "tensor '" + name + "'";
  if (!e.is_object()) corrupt(path, who + " is not a {dtype, shape, data_offsets} entry");
  TensorSpan t;
  t.name = name;
  auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) corrupt(path, who + " has no dtype");
  t.dtype = dt->get<std::string>();
  const int64_t elem = safetensors_dtype_size(t.dtype);
  if (elem == 0) corrupt(path, who + " has an unknown dtype '" + t.dtype + "'");
  auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) corrupt(path, who + " has no shape list");
  uint64_t bytes = static_cast<uint64_t>(elem);
  for (const auto& d : *sh) {
    uint64_t n = 0;
    if (!as_count(d, &n) || n > static_cast<uint64_t>(INT64_MAX))
      corrupt(path, who + " has a shape dimension that is not a non-negative integer (" + d.dump() + ")");
    if (__builtin_mul_overflow(bytes, n, &bytes) || bytes > static_cast<uint64_t>(INT64_MAX))
      corrupt(path, who + " has a shape whose size overflows");
    t.shape.push_back(static_cast<int64_t>(n));
  }
  auto offs = e.find("data_offsets");
  if (offs == e.end() || !offs->is_array() || offs->size() != 2 || !as_count((*offs)[0], &t.begin) ||
      !as_count((*offs)[1], &t.end) || t.end < t.begin)
    corrupt(path, who + " has no valid data_offsets [begin, end]");
  if (t.end > data_bytes)
    corrupt(path, who + " has data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                      "] beyond the end of the file (" + std::to_string(data_bytes) + " data bytes)");
  if (t.end - t.begin != bytes)
    corrupt(path, who + " is " + std::to_string(t.end - t.begin) + " bytes in the file, but its dtype " + t.dtype +
                      " and shape need " + std::to_string(bytes));
  return t;
}

}  // namespace

int64_t safetensors_dtype_size(const std::string& dtype) {
  static const std::map<std::string, int64_t> sizes = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
                                                       {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

SafetensorsHeader read_safetensors_header(std::istream& in, uint64_t file_size, const std::string& path) {
  unsigned char len[8];
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(len), 8)) corrupt(path, "it is shorter than a header");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > file_size - 8 || n > kMaxSafetensorsHeaderBytes)
    corrupt(path, "its header length (" + std::to_string(n) + " bytes) does not fit the file (" +
                      std::to_string(file_size) + " bytes) or exceeds 100 MiB");
  std::string text(n, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(n))) corrupt(path, "its header is truncated");
  SafetensorsHeader h;
  h.data_start = 8 + n;
  json j;
  try {
    j = parse_json_limited(text, kMaxDepth);
  } catch (const std::exception& e) {
    corrupt(path, std::string("its header is not readable JSON (") + e.what() + ")");
  }
  if (!j.is_object()) corrupt(path, "its header is not a JSON object");
  const uint64_t data_bytes = file_size - h.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() != "__metadata__") {
      h.tensors.push_back(read_entry(path, it.key(), it.value(), data_bytes));
      continue;
    }
    if (!it->is_object()) corrupt(path, "its __metadata__ is not a map of strings");
    for (auto m = it->begin(); m != it->end(); ++m) {
      if (!m->is_string()) corrupt(path, "metadata '" + m.key() + "' is not a string");
      h.metadata[m.key()] = m->get<std::string>();
    }
  }
  // Two tensors sharing bytes would alias in a writer that trusts them; safetensors forbids it.
  std::vector<const TensorSpan*> by_offset;
  for (const auto& t : h.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorSpan* a, const TensorSpan* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      corrupt(path, "tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name + "' overlap in the file");
  // The tensors tile the data section: bytes no tensor owns (a gap, or bytes after the last one)
  // mean a truncated rewrite or an appended payload, which the safetensors library refuses too.
  // Empty tensors (begin == end) own no bytes and may sit anywhere inside.
  uint64_t covered = 0;
  for (const TensorSpan* t : by_offset) {
    if (t->begin == t->end) continue;
    if (t->begin != covered)
      corrupt(path, "its data section has " + std::to_string(t->begin - covered) +
                        " bytes that no tensor owns before tensor '" + t->name + "'");
    covered = t->end;
  }
  if (covered != data_bytes)
    corrupt(path,
            "its data section has " + std::to_string(data_bytes - covered) + " trailing bytes after the last tensor");
  return h;
}

}  // namespace linearnexus
