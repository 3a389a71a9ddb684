// A run's checkpoint (run_checkpoint.h): the file's parts, the run folder's step files, and a
// checkpoint's model ready to sample from.
#include "linearnexus/host/run_checkpoint.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <regex>

#include "json_limits.h"
#include "linearnexus/error.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/preflight.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/host/tokenizers.h"
#include "linearnexus/log.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/registry.h"
#include "linearnexus/rng.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

namespace {
const char* kFormat = "linearnexus-checkpoint-1";

// A metadata entry a run's checkpoint always has: Error naming the file when absent.
const std::string& entry(const Metadata& metadata, const std::string& key, const std::string& file) {
  auto it = metadata.find(key);
  if (it == metadata.end())
    throw Error("checkpoint " + file + ": its metadata has no '" + key +
                "' entry; it was not written by linearnexus (or was edited): use a checkpoint of a linearnexus run");
  return it->second;
}

int64_t step_entry(const Metadata& metadata, const std::string& file) {
  const std::string& text = entry(metadata, "step", file);
  int64_t step = -1;
  auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), step);
  if (text.empty() || err != std::errc() || end != text.data() + text.size() || step < 0)
    throw Error("checkpoint " + file + ": metadata 'step' is '" + text +
                "', not a non-negative whole number; the file is corrupt: use another checkpoint of the run");
  return step;
}

std::string shape_text(at::IntArrayRef s) { return c10::str(s); }

std::string optim_prefix(const std::string& group) { return group.empty() ? "optim." : "extra." + group + "_optim."; }
}  // namespace

std::string resolve_checkpoint(const std::string& p) {
  if (fs::is_directory(p)) {
    fs::path latest = fs::path(p) / "latest.safetensors";
    if (!fs::exists(latest))
      throw Error("'" + p + "' holds no latest.safetensors checkpoint (has the run saved one yet?)");
    return latest.string();
  }
  if (!fs::exists(p)) throw Error("checkpoint '" + p + "' does not exist");
  return p;
}

TensorMap model_tensors(const torch::nn::Module& model, const std::string& prefix) {
  TensorMap out;
  for (const auto& kv : model.named_parameters()) out[prefix + kv.key()] = kv.value();
  for (const auto& kv : model.named_buffers()) out[prefix + kv.key()] = kv.value();
  return out;
}

void load_model_tensors(torch::nn::Module& model, const TensorMap& tensors, const std::string& source,
                        const std::string& prefix, const std::string& optional) {
  torch::NoGradGuard g;
  // Returns whether the tensor was in the map (an absent optional one is not).
  auto load = [&](const std::string& name, at::Tensor& dst) -> size_t {
    auto it = tensors.find(prefix + name);
    if (it == tensors.end() && !optional.empty() && name.rfind(optional, 0) == 0) return 0;
    if (it == tensors.end())
      throw Error("checkpoint '" + source + "' does not match the model: it has no tensor '" + prefix + name +
                  "' (was it made with another model config?)");
    if (it->second.sizes() != dst.sizes())
      throw Error("checkpoint '" + source + "' does not match the model: tensor '" + prefix + name + "' is " +
                  shape_text(it->second.sizes()) + " in the checkpoint but " + shape_text(dst.sizes()) +
                  " in the model");
    // copy_ would convert silently: a tensor relabelled to another dtype of the same width reads as
    // garbage numbers of the right size.
    if (it->second.scalar_type() != dst.scalar_type())
      throw Error("checkpoint " + source + ": tensor '" + prefix + name + "' is " +
                  c10::toString(it->second.scalar_type()) + ", but the model's is " + c10::toString(dst.scalar_type()) +
                  "; the file is corrupt or edited: use another checkpoint");
    check_finite(it->second, prefix + name, source);
    dst.copy_(it->second);
    return 1;
  };
  size_t loaded = 0;
  for (auto& kv : model.named_parameters()) loaded += load(kv.key(), kv.value());
  for (auto& kv : model.named_buffers()) loaded += load(kv.key(), kv.value());
  // A tensor under the prefix that the module does not have: a file for another model, or edited.
  size_t under_prefix = 0;
  for (auto it = tensors.lower_bound(prefix); it != tensors.end() && it->first.rfind(prefix, 0) == 0; ++it)
    ++under_prefix;
  if (under_prefix != loaded) {
    const auto own = model_tensors(model, prefix);
    for (auto it = tensors.lower_bound(prefix); it != tensors.end() && it->first.rfind(prefix, 0) == 0; ++it)
      if (!own.count(it->first))
        throw Error("checkpoint " + source + ": tensor '" + it->first +
                    "' is not part of the model (was it made with " + "another model config, or edited?)");
  }
}

// ---- RunCheckpoint ------------------------------------------------------------------------------

RunCheckpoint::RunCheckpoint(const LMModel& model, const Registry& registry, const std::string& config_yaml,
                             const Tokenizer& tokenizer, int64_t step)
    : step_(step), config_yaml_(config_yaml), tokenizer_json_(tokenizer.to_json()) {
  // Which plugin (and version) made each piece of the model, for checks when loading elsewhere.
  json plugins = json::object();
  for (const auto& kind : model.config().block_pattern)
    if (const auto* r = registry.find(PluginKind::Block, kind))
      plugins["block:" + kind] = {{"plugin", r->origin.plugin_name}, {"version", r->origin.plugin_version}};
  plugins_json_ = plugins.dump();
  set_model(model);
}

std::string RunCheckpoint::read_config(const std::string& run_dir_or_file) {
  const std::string file = resolve_checkpoint(run_dir_or_file);
  return entry(read_safetensors_metadata(file), "config", file);
}

RunCheckpoint RunCheckpoint::read(const std::string& run_dir_or_file, bool header_only) {
  RunCheckpoint c;
  c.file_ = resolve_checkpoint(run_dir_or_file);
  SafetensorsFile f;
  if (header_only)
    f.metadata = read_safetensors_metadata(c.file_);
  else
    f = load_safetensors(c.file_);
  c.step_ = step_entry(f.metadata, c.file_);
  c.config_yaml_ = entry(f.metadata, "config", c.file_);
  c.tokenizer_json_ = entry(f.metadata, "tokenizer", c.file_);
  if (f.metadata.count("plugins")) c.plugins_json_ = f.metadata.at("plugins");
  if (f.metadata.count("lora_base")) c.lora_base_json_ = f.metadata.at("lora_base");
  for (const auto& [k, v] : f.tensors) {
    // Only what a run writes (run_checkpoint.h): anything else was added by hand or by another program.
    const bool known = k.rfind("model.", 0) == 0 || k.rfind("optim.", 0) == 0 || k.rfind("extra.", 0) == 0 ||
                       k == "rng.cpu" || k == "rng.cuda";
    if (!known)
      throw Error(
          "checkpoint " + c.file_ + ": tensor '" + k + "' is not one a run writes (model.*, optim.*, extra.*, " +
          "rng.cpu, rng.cuda); the file was edited or made by another program: use a checkpoint of a linearnexus run");
    if (k.rfind("optim.", 0) == 0 || k.rfind("extra.", 0) == 0) check_finite(v, k, c.file_);
  }
  c.tensors_ = std::move(f.tensors);
  return c;
}

void RunCheckpoint::write(const std::string& file) {
  Metadata meta = {{"format", kFormat},
                   {"step", std::to_string(step_)},
                   {"config", config_yaml_},
                   {"tokenizer", tokenizer_json_},
                   {"plugins", plugins_json_.empty() ? "{}" : plugins_json_}};
  if (!lora_base_json_.empty()) meta["lora_base"] = lora_base_json_;
  save_safetensors(file, tensors_, meta);
  file_ = file;
}

std::shared_ptr<Tokenizer> RunCheckpoint::tokenizer() const {
  try {
    // A tokenizer file it names (an imported model's tokenizer.json) may sit beside the checkpoint.
    return tokenizer_from_json(tokenizer_json_, fs::path(file_).parent_path().string());
  } catch (const Error& e) {
    if (std::string(e.what()).rfind("checkpoint ", 0) == 0) throw;
    throw Error("checkpoint " + file_ + ": metadata 'tokenizer': " + e.what());
  }
}

// The plugins that built a checkpoint's model (its "plugins" metadata) must be loaded; the same
// version is expected, another one only warns.
void RunCheckpoint::check_plugins(const PluginHost& host) const {
  if (plugins_json_.empty()) return;
  json plugins;
  try {
    plugins = parse_json_limited(plugins_json_, 2);
  } catch (const std::exception& e) {
    plugins = nullptr;
  }
  auto text = [](const json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  for (auto it = plugins.begin(); plugins.is_object() && it != plugins.end(); ++it)
    if (!it->is_object() || text(*it, "plugin").empty() || text(*it, "version").empty()) plugins = nullptr;
  if (!plugins.is_object())
    throw Error("checkpoint " + file_ +
                ": metadata 'plugins' is not a map of {plugin, version} entries; the file is "
                "corrupt or edited: use another checkpoint of the run");
  for (auto it = plugins.begin(); it != plugins.end(); ++it) {
    const std::string block = it.key().substr(it.key().find(':') + 1);
    const std::string plugin = text(*it, "plugin"), version = text(*it, "version");
    const auto* r = host.registry().find(PluginKind::Block, block);
    if (!r)
      throw Error("checkpoint '" + file_ + "' needs block '" + block + "' from plugin '" + plugin + "' " + version +
                  ", which is not on the plugin path (" + host.search_path_text() +
                  "); add its folder to LINEARNEXUS_PLUGIN_PATH");
    if (r->origin.plugin_version != version)
      log_warn("checkpoint '" + file_ + "' was made with plugin '" + plugin + "' " + version + ", loading it with " +
               r->origin.plugin_version + " from " + r->origin.file);
  }
}

void RunCheckpoint::set_model(const LMModel& model) {
  for (auto& [k, v] : model_tensors(model, "model.")) tensors_[k] = v;
}

void RunCheckpoint::load_model(LMModel& model) const {
  const bool has_adapters = std::any_of(tensors_.begin(), tensors_.end(),
                                        [](const auto& kv) { return kv.first.rfind("model.lora.", 0) == 0; });
  if (has_adapters && !model.lora())
    throw Error("checkpoint " + file_ + " holds LoRA adapters (model.lora) and this model has none: keep the " +
                "checkpoint's model.lora (model.preset: init_from does), or merge them into the weights first " +
                "(linearnexus convert merge-lora)");
  // A model with adapters starting from a checkpoint without them (the base model) keeps their
  // initialisation: B = 0, so it computes exactly what the checkpoint does.
  load_model_tensors(model, tensors_, file_, "model.", has_adapters ? "" : "lora.");
}

void RunCheckpoint::set_optimizer(const Optimizer& optimizer, const std::string& group) {
  for (const auto& [k, v] : optimizer.state_dict()) tensors_[optim_prefix(group) + k] = v;
}

void RunCheckpoint::load_optimizer(Optimizer& optimizer, const at::Device& device, const std::string& group) const {
  const std::string prefix = optim_prefix(group);
  TensorMap state;
  for (const auto& [k, v] : tensors_)
    if (k.rfind(prefix, 0) == 0) state[k.substr(prefix.size())] = v.to(device);
  // The optimizer copies its state in place: a tensor of another shape or dtype would surface as a
  // bare LibTorch broadcast error, so it is named here against the optimizer's own state.
  for (const auto& [k, v] : optimizer.state_dict()) {
    auto it = state.find(k);
    if (it != state.end() && (it->second.sizes() != v.sizes() || it->second.scalar_type() != v.scalar_type()))
      throw Error("checkpoint " + file_ + ": tensor '" + prefix + k + "' is " +
                  c10::toString(it->second.scalar_type()) + " " + shape_text(it->second.sizes()) +
                  ", but the optimizer's is " + c10::toString(v.scalar_type()) + " " + shape_text(v.sizes()) +
                  "; was it saved by another optimizer or model config? (the file may be corrupt)");
  }
  // The optimizer validates its own state (every entry present, none unknown, counts >= 0, second
  // moments >= 0); its errors name the entry by its key under `prefix`.
  try {
    optimizer.load_state_dict(state);
  } catch (const std::exception& e) {
    throw Error("checkpoint " + file_ + " (optimizer state, stored as '" + prefix + "<key>'): " + error_text(e));
  }
}

void RunCheckpoint::set_extra(const std::string& group, const torch::nn::Module& tensors) {
  for (auto& [k, v] : model_tensors(tensors, "extra." + group + ".")) tensors_[k] = v;
}

bool RunCheckpoint::has_extra(const std::string& group) const {
  const std::string prefix = "extra." + group + ".";
  auto it = tensors_.lower_bound(prefix);
  return it != tensors_.end() && it->first.rfind(prefix, 0) == 0;
}

void RunCheckpoint::load_extra(const std::string& group, torch::nn::Module& tensors) const {
  load_model_tensors(tensors, tensors_, file_, "extra." + group + ".");
}

void RunCheckpoint::check_extra_groups(const std::vector<std::string>& groups) const {
  for (auto it = tensors_.lower_bound("extra."); it != tensors_.end() && it->first.rfind("extra.", 0) == 0; ++it) {
    bool known = false;
    for (const auto& g : groups)
      known = known || it->first.rfind("extra." + g + ".", 0) == 0 || it->first.rfind("extra." + g + "_optim.", 0) == 0;
    if (!known)
      throw Error("checkpoint " + file_ + ": tensor '" + it->first + "' belongs to no trainable group of this run (" +
                  (groups.empty() ? std::string("it has none") : "it has " + std::to_string(groups.size())) +
                  "); was it saved by another trainer, or edited?");
  }
}

void RunCheckpoint::set_rng(const at::Device& device) {
  tensors_["rng.cpu"] = rng_state(at::kCPU);
  if (device.is_cuda()) tensors_["rng.cuda"] = rng_state(device);
}

void RunCheckpoint::restore_rng(const at::Device& device) const {
  // Every checkpoint a run saves holds the CPU generator's state; without it the resumed run would
  // draw other batches' dropout masks (and Sophia's labels) than an uninterrupted one, silently. So
  // its absence is an error (an edited or foreign file), not a warning: trainer.init_from still
  // starts a fresh run from the weights. A missing rng.cuda is allowed: a run saved on the CPU may
  // resume on a GPU (its draws then differ, as any change of device makes them).
  if (!tensors_.count("rng.cpu"))
    throw Error(
        "checkpoint " + file_ + ": it has no 'rng.cpu' tensor (the random generator's state, which every " +
        "checkpoint a run saves holds), so the run could not continue exactly; the file was edited or made by " +
        "another program: use another checkpoint of the run, or start afresh from its weights with trainer.init_from");
  set_rng_state(tensors_.at("rng.cpu"), at::kCPU, "checkpoint " + file_);
  if (device.is_cuda() && tensors_.count("rng.cuda"))
    set_rng_state(tensors_.at("rng.cuda"), device, "checkpoint " + file_);
}

// ---- CheckpointManager ------------------------------------------------------------------------

CheckpointManager::CheckpointManager(std::string dir, int64_t keep_last_n, bool create)
    : dir_(std::move(dir)), keep_last_n_(keep_last_n) {
  if (create) fs::create_directories(dir_);
}

std::string CheckpointManager::save(RunCheckpoint& checkpoint) {
  char name[64];
  std::snprintf(name, sizeof name, "step_%08lld.safetensors", static_cast<long long>(checkpoint.step()));
  const fs::path file = fs::path(dir_) / name;
  checkpoint.write(file.string());
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

std::optional<RunCheckpoint> CheckpointManager::newest_loadable(bool header_only) const {
  std::vector<std::string> candidates = step_files();
  if (auto l = latest()) candidates.insert(candidates.begin(), *l);
  if (candidates.empty()) return std::nullopt;
  std::string skipped;
  for (const auto& file : candidates) {
    try {
      // A full read: the header alone does not show a truncated or overwritten data section. The
      // run resumes from what was read here.
      RunCheckpoint c = RunCheckpoint::read(file, header_only);
      if (!skipped.empty()) log_warn("resume: auto: " + skipped + "; resuming from " + file + " instead");
      return c;
    } catch (const Error& e) {
      skipped += std::string(skipped.empty() ? "" : "; ") + e.what();
    }
  }
  throw Error("trainer.out_dir '" + dir_ + "' holds checkpoints but none of them loads (" + skipped +
              "); move them away to start fresh");
}

// ---- a checkpoint's model ---------------------------------------------------------------------

LoadedModel load_model_from_checkpoint(const std::string& run_dir_or_file, PluginHost& host, const std::string& device,
                                       const std::vector<std::string>& overrides) {
  RunCheckpoint ck = RunCheckpoint::read(run_dir_or_file);
  LoadedModel lm;
  lm.file = ck.file();
  // A checkpoint is data: the plugins.paths its experiment lists are never loaded (that would run
  // any .so a downloaded file points at); its blocks must come from the host's own plugin folders.
  ck.check_plugins(host);
  lm.experiment = parse_experiment(ck.config_yaml(), "checkpoint " + lm.file, "", overrides, host, PluginPaths::Ignore);
  lm.tokenizer = ck.tokenizer();
  lm.model =
      build_model(lm.experiment.model_config(lm.tokenizer->vocab_size()), host.registry(), "checkpoint " + lm.file);
  ck.load_model(*lm.model);
  const at::Device dev = resolve_device(device);
  lm.model->to(dev);
  // Sampling on a GPU keeps the precision the model trained in; on the CPU it is fp32.
  if (dev.is_cuda()) lm.model->set_compute_dtype(compute_dtype(lm.experiment, dev));
  lm.model->eval();
  return lm;
}

}  // namespace linearnexus
