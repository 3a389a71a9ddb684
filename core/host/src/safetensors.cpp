// safetensors reading and writing (safetensors.h); the header is read and validated by
// safetensors_header.cpp.
#include "linearnexus/host/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <sstream>

#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/error.h"
#include "safetensors_header.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

namespace {

const std::vector<std::pair<std::string, at::ScalarType>>& dtype_names() {
  static const std::vector<std::pair<std::string, at::ScalarType>> t = {
      {"F32", at::kFloat}, {"F64", at::kDouble}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"I64", at::kLong},
      {"I32", at::kInt},   {"I16", at::kShort},  {"I8", at::kChar},  {"U8", at::kByte},       {"BOOL", at::kBool}};
  return t;
}
std::string dtype_to_name(at::ScalarType t) {
  for (const auto& [n, s] : dtype_names())
    if (s == t) return n;
  throw Error(std::string("safetensors: cannot store dtype ") + c10::toString(t));
}

}  // namespace

void check_finite(const at::Tensor& t, const std::string& name, const std::string& file) {
  if (at::isFloatingType(t.scalar_type()) && !at::isfinite(t).all().item<bool>())
    throw Error("checkpoint " + file + ": tensor '" + name + "' holds NaN or infinite values; the run it came from " +
                "diverged or the file is corrupt: use an earlier checkpoint (step_*.safetensors)");
}

void save_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata) {
  json header = json::object();
  header["__metadata__"] = metadata;
  std::vector<at::Tensor> cpu;
  int64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    auto c = t.detach().to(at::kCPU).contiguous();
    const int64_t nbytes = c.numel() * static_cast<int64_t>(c.element_size());
    header[name] = {{"dtype", dtype_to_name(c.scalar_type())},
                    {"shape", std::vector<int64_t>(c.sizes().begin(), c.sizes().end())},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    cpu.push_back(c);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data section to 8 bytes
  AtomicFile file(path);
  std::ostream& out = file.stream();
  uint64_t n = h.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(h.data(), static_cast<std::streamsize>(h.size()));
  for (const auto& c : cpu)
    out.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
  file.commit();
}

namespace {
// The header of an open file through the validated reader (which bounds its length by the file and
// by 100 MiB before anything is allocated for it).
SafetensorsHeader read_header(const RegularFile& f) {
  std::string bytes(8, '\0');
  if (f.size() < 8) {
    std::istringstream empty;
    return read_safetensors_header(empty, f.size(), f.path());  // "shorter than a header"
  }
  f.read_at(0, 8, bytes.data());
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  const uint64_t take = std::min<uint64_t>(n, std::min<uint64_t>(f.size() - 8, kMaxSafetensorsHeaderBytes));
  bytes.resize(8 + take);
  f.read_at(8, take, bytes.data() + 8);
  std::istringstream in(bytes);
  return read_safetensors_header(in, f.size(), f.path());
}

// A checkpoint opened for reading: a regular file (never a FIFO or device: read_file.h), with the
// message this reader has always given for a missing one.
std::unique_ptr<RegularFile> open_checkpoint(const std::string& path) {
  if (!fs::exists(path)) throw Error("checkpoint " + path + ": cannot be opened (does it exist?)");
  return std::make_unique<RegularFile>(path, file_kind::kCheckpoint);
}
}  // namespace

SafetensorsFile load_safetensors(const std::string& path) {
  const auto f = open_checkpoint(path);
  // Everything is checked before anything is allocated: no shape or offset from the file reaches
  // LibTorch unvalidated.
  SafetensorsHeader header = read_header(*f);
  SafetensorsFile out;
  out.metadata = std::move(header.metadata);
  for (const auto& span : header.tensors) {
    auto d =
        std::find_if(dtype_names().begin(), dtype_names().end(), [&](const auto& p) { return p.first == span.dtype; });
    auto t = at::empty(span.shape, at::TensorOptions().dtype(d->second));
    try {
      f->read_at(header.data_start + span.begin, span.end - span.begin, static_cast<char*>(t.data_ptr()));
    } catch (const Error&) {
      throw Error("checkpoint " + path + ": tensor '" + span.name +
                  "' could not be read (was the file truncated while loading?)");
    }
    out.tensors[span.name] = t;
  }
  return out;
}

Metadata read_safetensors_metadata(const std::string& path) { return read_header(*open_checkpoint(path)).metadata; }

}  // namespace linearnexus
