// safetensors reading/writing and the run's checkpoint folder.
//
// Format: 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets},
// "__metadata__": {str: str}}, then the raw little-endian tensor bytes.
#include "linearnexus/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <regex>

#include <unistd.h>

#include "linearnexus/atomic_file.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/model.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

namespace {

const std::vector<std::pair<std::string, at::ScalarType>>& dtype_names() {
  static const std::vector<std::pair<std::string, at::ScalarType>> t = {
      {"F32", at::kFloat}, {"F64", at::kDouble}, {"F16", at::kHalf},  {"BF16", at::kBFloat16},
      {"I64", at::kLong},  {"I32", at::kInt},    {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},   {"BOOL", at::kBool}};
  return t;
}
std::string dtype_to_name(at::ScalarType t) {
  for (const auto& [n, s] : dtype_names())
    if (s == t) return n;
  throw Error(std::string("safetensors: cannot store dtype ") + c10::toString(t));
}

std::string shape_text(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

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
json read_header(std::ifstream& in, const std::string& path, uint64_t file_size, uint64_t* data_start) {
  unsigned char len[8];
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(len), 8))
    throw Error("checkpoint '" + path + "' is truncated or not a safetensors file");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > file_size - 8 || n > (100u << 20))
    throw Error("checkpoint '" + path + "' is corrupt: its header length (" + std::to_string(n) +
                " bytes) does not fit the file (" + std::to_string(file_size) + " bytes)");
  std::string h(n, '\0');
  in.read(h.data(), static_cast<std::streamsize>(n));
  *data_start = 8 + n;
  try {
    json j = json::parse(h);
    if (!j.is_object()) throw std::runtime_error("header is not an object");
    return j;
  } catch (const std::exception& e) {
    throw Error("checkpoint '" + path + "' is corrupt: unreadable header (" + e.what() + ")");
  }
}
}  // namespace

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("checkpoint '" + path + "' cannot be opened (does it exist?)");
  const uint64_t file_size = fs::file_size(path);
  uint64_t data_start = 0;
  json header = read_header(in, path, file_size, &data_start);
  SafetensorsFile out;
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        for (auto m = it->begin(); m != it->end(); ++m) out.metadata[m.key()] = m->get<std::string>();
        continue;
      }
      const std::string dt = it->at("dtype").get<std::string>();
      auto d = std::find_if(dtype_names().begin(), dtype_names().end(), [&](const auto& p) { return p.first == dt; });
      if (d == dtype_names().end()) throw std::runtime_error("unsupported dtype " + dt + " for " + it.key());
      auto shape = it->at("shape").get<std::vector<int64_t>>();
      auto offs = it->at("data_offsets").get<std::vector<uint64_t>>();
      auto t = at::empty(shape, at::TensorOptions().dtype(d->second));
      const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
      if (offs.size() != 2 || offs[1] < offs[0] || offs[1] - offs[0] != nbytes || data_start + offs[1] > file_size)
        throw std::runtime_error("tensor '" + it.key() + "' has offsets outside the file or a size that does not match its shape");
      in.seekg(static_cast<std::streamoff>(data_start + offs[0]));
      in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(nbytes));
      if (!in) throw std::runtime_error("tensor '" + it.key() + "' is truncated");
      out.tensors[it.key()] = t;
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("checkpoint '" + path + "' is corrupt: " + e.what());
  }
  return out;
}

Metadata read_safetensors_metadata(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("checkpoint '" + path + "' cannot be opened (does it exist?)");
  uint64_t data_start = 0;
  json header = read_header(in, path, fs::file_size(path), &data_start);
  Metadata m;
  if (header.contains("__metadata__"))
    for (auto it = header["__metadata__"].begin(); it != header["__metadata__"].end(); ++it)
      m[it.key()] = it->is_string() ? it->get<std::string>() : it->dump();
  return m;
}

std::string resolve_checkpoint(const std::string& p) {
  if (fs::is_directory(p)) {
    fs::path latest = fs::path(p) / "latest.safetensors";
    if (!fs::exists(latest)) throw Error("'" + p + "' holds no latest.safetensors checkpoint (has the run saved one yet?)");
    return latest.string();
  }
  if (!fs::exists(p)) throw Error("checkpoint '" + p + "' does not exist");
  return p;
}

TensorMap model_tensors(const LMModel& model, const std::string& prefix) {
  TensorMap out;
  for (const auto& kv : model.named_parameters()) out[prefix + kv.key()] = kv.value();
  for (const auto& kv : model.named_buffers()) out[prefix + kv.key()] = kv.value();
  return out;
}

void load_model_tensors(LMModel& model, const TensorMap& tensors, const std::string& source, const std::string& prefix) {
  torch::NoGradGuard g;
  auto load = [&](const std::string& name, at::Tensor& dst) {
    auto it = tensors.find(prefix + name);
    if (it == tensors.end())
      throw Error("checkpoint '" + source + "' does not match the model: it has no tensor '" + prefix + name +
                  "' (was it made with another model config?)");
    if (it->second.sizes() != dst.sizes())
      throw Error("checkpoint '" + source + "' does not match the model: tensor '" + prefix + name + "' is " +
                  shape_text(it->second.sizes()) + " in the checkpoint but " + shape_text(dst.sizes()) + " in the model");
    dst.copy_(it->second);
  };
  for (auto& kv : model.named_parameters()) load(kv.key(), kv.value());
  for (auto& kv : model.named_buffers()) load(kv.key(), kv.value());
}

// ---- CheckpointManager ------------------------------------------------------------------------

CheckpointManager::CheckpointManager(std::string dir, int64_t keep_last_n) : dir_(std::move(dir)), keep_last_n_(keep_last_n) {
  fs::create_directories(dir_);
}

std::string CheckpointManager::save(int64_t step, const TensorMap& tensors, const Metadata& metadata) {
  char name[64];
  std::snprintf(name, sizeof name, "step_%08lld.safetensors", static_cast<long long>(step));
  const fs::path file = fs::path(dir_) / name;
  save_safetensors(file.string(), tensors, metadata);
  // latest.safetensors: a hard link to the newest step file, swapped in atomically by rename.
  const fs::path latest = fs::path(dir_) / "latest.safetensors", tmp = fs::path(dir_) / "latest.safetensors.tmp";
  fs::remove(tmp);
  fs::create_hard_link(file, tmp);
  fs::rename(tmp, latest);
  // Prune old step files (latest keeps its own link to the newest).
  auto steps = step_files();  // newest first
  const size_t keep = static_cast<size_t>(std::max<int64_t>(keep_last_n_, 0));
  for (size_t i = keep; i < steps.size(); ++i) fs::remove(steps[i]);
  return file.string();
}

std::optional<std::string> CheckpointManager::latest() const {
  fs::path latest = fs::path(dir_) / "latest.safetensors";
  if (fs::exists(latest)) return latest.string();
  return std::nullopt;
}

std::vector<std::string> CheckpointManager::step_files() const {
  std::vector<std::string> steps;
  static const std::regex pat("step_[0-9]{8}\\.safetensors");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec))
    if (std::regex_match(e.path().filename().string(), pat)) steps.push_back(e.path().string());
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

std::optional<std::string> CheckpointManager::newest_loadable() const {
  std::vector<std::string> candidates = step_files();
  if (auto l = latest()) candidates.insert(candidates.begin(), *l);
  if (candidates.empty()) return std::nullopt;
  std::string skipped;
  for (const auto& file : candidates) {
    try {
      // A full read: the header alone does not show a truncated or overwritten data section. The
      // resume reads the file again (from the page cache, usually).
      auto ck = load_safetensors(file);
      if (!ck.metadata.count("step")) throw Error("checkpoint '" + file + "' has no step in its metadata");
      if (!skipped.empty()) log_warn("resume: auto: " + skipped + "; resuming from " + file + " instead");
      return file;
    } catch (const Error& e) {
      skipped += std::string(skipped.empty() ? "" : "; ") + e.what();
    }
  }
  throw Error("trainer.out_dir '" + dir_ + "' holds checkpoints but none of them loads (" + skipped +
              "); move them away to start fresh");
}

at::Tensor rng_state(const at::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
void set_rng_state(const at::Tensor& state, const at::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace linearnexus
