// Model presets (presets.h).
#include "linearnexus/host/presets.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "linearnexus/host/config.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/preflight.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/model.h"

namespace fs = std::filesystem;

namespace linearnexus {

namespace {
// Model presets are YAML files of model fields, one per name: <exe>/../share/linearnexus/presets/NAME.yaml
// (configs/presets/ in the source tree; the build and `cmake --install` put them there), then the
// folders of $LINEARNEXUS_PRESET_PATH. Data, not code: no preset is named in the host.
std::vector<fs::path> preset_dirs() {
  std::vector<fs::path> dirs;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back(exe.parent_path().parent_path() / "share" / "linearnexus" / "presets");
  if (const char* env = std::getenv("LINEARNEXUS_PRESET_PATH")) {
    std::stringstream ss(env);
    for (std::string d; std::getline(ss, d, ':');)
      if (!d.empty()) dirs.push_back(d);
  }
  return dirs;
}
}  // namespace

std::map<std::string, fs::path> preset_files() {
  std::map<std::string, fs::path> out;
  for (const auto& dir : preset_dirs()) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().extension() == ".yaml" && !out.count(e.path().stem().string()))
        out[e.path().stem().string()] = e.path();
  }
  return out;
}

std::string preset_dirs_text() {
  std::string out;
  for (const auto& d : preset_dirs()) out += (out.empty() ? "" : ":") + d.string();
  return out;
}

std::vector<std::string> preset_names() {
  std::vector<std::string> out;
  for (const auto& [name, file] : preset_files()) out.push_back(name);
  return out;
}

std::string describe_presets(PluginHost& host) {
  std::ostringstream out;
  for (const auto& [name, file] : preset_files()) {
    const Experiment e = parse_experiment("data: {path: none}\nmodel: {preset: " + name + "}\n", file.string(), "", {},
                                          host, PluginPaths::Ignore);
    const bool auto_vocab = e.model.dims.vocab_size == 0;
    ModelConfig c = e.model_config(50257);
    const int64_t n_layer = c.dims.n_layer, cycle = static_cast<int64_t>(c.block_pattern.size());
    // The pattern's blocks once (each kind's size does not depend on its depth), then the repeats.
    c.dims.n_layer = std::min(n_layer, cycle);
    const auto model = build_model(c, host.registry(), file.string());
    double params = static_cast<double>(model->num_parameters());
    for (int64_t i = c.dims.n_layer; i < n_layer; ++i)
      for (const auto& p : model->blocks()[static_cast<size_t>(i % cycle)]->parameters())
        params += static_cast<double>(p.numel());
    std::string pattern, comment;
    for (size_t i = 0; i < c.block_pattern.size(); ++i) pattern += (i ? ", " : "") + c.block_pattern[i];
    std::istringstream text(read_file(file.string(), file_kind::kExperiment));
    for (std::string line; comment.empty() && std::getline(text, line);)
      if (line.rfind("# ", 0) == 0) comment = line.substr(2);
    char size[160];
    std::snprintf(size, sizeof size, "%.1fM parameters (%.0f with vocabulary %lld%s)", params / 1e6, params,
                  static_cast<long long>(c.dims.vocab_size), auto_vocab ? ", GPT-2's; the tokenizer's in a run" : "");
    out << name << ": " << size << ", " << n_layer << " layers of " << c.dims.hidden_size << ", block_pattern ["
        << pattern << "]\n";
    if (!comment.empty()) out << "    " << comment << "\n";
  }
  return out.str();
}

}  // namespace linearnexus
