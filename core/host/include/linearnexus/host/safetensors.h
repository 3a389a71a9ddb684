#pragma once
// The safetensors file format (readable by Python's `safetensors`), written atomically: the layer
// under a run's checkpoints (run_checkpoint.h) and Hugging Face weights (hf_convert.h).
#include <ATen/ATen.h>

#include <map>
#include <string>

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
// Error naming the file and tensor when a floating-point tensor holds NaN or infinity.
void check_finite(const at::Tensor& t, const std::string& name, const std::string& file);

}  // namespace linearnexus
