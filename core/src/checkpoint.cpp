// safetensors reading/writing and the run's checkpoint folder (the header is read and validated by
// safetensors_header.cpp).
#include "linearnexus/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
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
#include "safetensors_header.h"

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

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  if (!in || ec) throw Error("checkpoint " + path + ": cannot be opened (does it exist?)");
  // Everything is checked before anything is allocated: no shape or offset from the file reaches
  // LibTorch unvalidated.
  SafetensorsHeader header = read_safetensors_header(in, file_size, path);
  SafetensorsFile out;
  out.metadata = std::move(header.metadata);
  for (const auto& span : header.tensors) {
    auto d = std::find_if(dtype_names().begin(), dtype_names().end(), [&](const auto& p) { return p.first == span.dtype; });
    auto t = at::empty(span.shape, at::TensorOptions().dtype(d->second));
    in.seekg(static_cast<std::streamoff>(header.data_start + span.begin));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(span.end - span.begin));
    if (!in) throw Error("checkpoint " + path + ": tensor '" + span.name + "' could not be read (was the file truncated while loading?)");
    out.tensors[span.name] = t;
  }
  return out;
}

Metadata read_safetensors_metadata(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  const uint64_t file_size = fs::file_size(path, ec);
  if (!in || ec) throw Error("checkpoint " + path + ": cannot be opened (does it exist?)");
  return read_safetensors_header(in, file_size, path).metadata;
}

const std::string& checkpoint_entry(const Metadata& metadata, const std::string& key, const std::string& file) {
  auto it = metadata.find(key);
  if (it == metadata.end())
    throw Error("checkpoint " + file + ": its metadata has no '" + key +
                "' entry; it was not written by linearnexus (or was edited): use a checkpoint of a linearnexus run");
  return it->second;
}

int64_t checkpoint_step(const Metadata& metadata, const std::string& file) {
  const std::string& text = checkpoint_entry(metadata, "step", file);
  int64_t step = -1;
  auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), step);
  if (text.empty() || err != std::errc() || end != text.data() + text.size() || step < 0)
    throw Error("checkpoint " + file + ": metadata 'step' is '" + text +
                "', not a non-negative whole number; the file is corrupt: use another checkpoint of the run");
  return step;
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
    // copy_ would convert silently: a tensor relabelled to another dtype of the same width reads as
    // garbage numbers of the right size.
    if (it->second.scalar_type() != dst.scalar_type())
      throw Error("checkpoint " + source + ": tensor '" + prefix + name + "' is " + c10::toString(it->second.scalar_type()) +
                  ", but the model's is " + c10::toString(dst.scalar_type()) + "; the file is corrupt or edited: use another checkpoint");
    check_finite(it->second, prefix + name, source);
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
void set_rng_state(const at::Tensor& state, const at::Device& device, const std::string& file) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  // LibTorch checks the bytes itself, but with a raw c10 message and backtrace ("Invalid mt19937
  // state"); the size and dtype are checked here, and whatever it still refuses is named.
  const at::Tensor current = gen.get_state();
  const std::string what = "checkpoint " + file + ": tensor 'rng." + std::string(device.is_cuda() ? "cuda" : "cpu") + "' ";
  if (state.scalar_type() != at::kByte || state.dim() != 1 || state.numel() != current.numel())
    throw Error(what + "is not a random generator state of this LibTorch (" + c10::toString(state.scalar_type()) + " " +
                shape_text(state.sizes()) + ", expected Byte [" + std::to_string(current.numel()) +
                "]); the file is corrupt: use another checkpoint");
  try {
    gen.set_state(state);
  } catch (const c10::Error& e) {
    throw Error(what + "is refused by LibTorch (" + error_text(e) + "); the file is corrupt: use another checkpoint");
  }
}

}  // namespace linearnexus
