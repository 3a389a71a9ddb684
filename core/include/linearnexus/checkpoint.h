#pragma once
// Checkpoints in the safetensors format (readable by Python's `safetensors`), written atomically.
#include <ATen/ATen.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "linearnexus/tensor_map.h"

namespace linearnexus {

using Metadata = std::map<std::string, std::string>;

struct SafetensorsFile {
  TensorMap tensors;
  Metadata metadata;
};

// Written to `path`.tmp, flushed, then renamed: a crash never leaves a half-written `path`.
void save_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata);
// Validates the whole header first (dtypes, shapes, spans inside the file and disjoint, metadata
// strings, bounded size and nesting); a corrupt or truncated file throws Error naming it and the
// tensor or key at fault.
SafetensorsFile load_safetensors(const std::string& path);
Metadata read_safetensors_metadata(const std::string& path);
// A LinearNexus metadata entry ("config", "tokenizer", ...): Error naming the file when absent.
const std::string& checkpoint_entry(const Metadata& metadata, const std::string& key, const std::string& file);
// The "step" entry: Error unless it is a non-negative whole number.
int64_t checkpoint_step(const Metadata& metadata, const std::string& file);
// Error naming the file and tensor when a floating-point tensor holds NaN or infinity.
void check_finite(const at::Tensor& t, const std::string& name, const std::string& file);

// A run folder or a checkpoint file -> the checkpoint file (a folder means its latest.safetensors).
std::string resolve_checkpoint(const std::string& run_dir_or_file);

class LMModel;
// The model's parameters and buffers, named with `prefix`.
TensorMap model_tensors(const LMModel& model, const std::string& prefix = "model.");
// Copy `prefix`-named tensors into the model; a missing tensor, a shape or dtype mismatch, or a
// NaN/infinite value throws Error naming the first such tensor (and both shapes).
void load_model_tensors(LMModel& model, const TensorMap& tensors, const std::string& source,
                        const std::string& prefix = "model.");

// step_XXXXXXXX.safetensors files plus a `latest.safetensors` hard link to the newest; keeps the
// last keep_last_n step files (0 = only latest).
class CheckpointManager {
 public:
  CheckpointManager(std::string dir, int64_t keep_last_n);
  std::string save(int64_t step, const TensorMap& tensors, const Metadata& metadata);
  std::optional<std::string> latest() const;
  // The newest checkpoint that loads (trainer.resume: auto): latest, else the step files from the
  // newest down, each one skipped a warning. A corrupt latest is a hard link to the newest step
  // file, so the fallback is the step before it (keep_last_n >= 1 keeps one). nullopt when there
  // is no checkpoint; an Error when there are some but none loads.
  std::optional<std::string> newest_loadable() const;
  // The step_XXXXXXXX files, newest first.
  std::vector<std::string> step_files() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int64_t keep_last_n_;
};

// For exact resumes: the default generator's state on `device` (dropout and sampling draw from the device's own
// generator, so a run on CUDA checkpoints the CUDA one too).
at::Tensor rng_state(const at::Device& device = at::kCPU);
// `file`: the checkpoint the state came from, named when the state is not one (wrong size, refused).
void set_rng_state(const at::Tensor& state, const at::Device& device, const std::string& file);

}  // namespace linearnexus
