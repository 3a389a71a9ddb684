#pragma once
// Model presets (model.preset / --model): YAML files of model fields, one per name (configs/presets/
// NAME.yaml, installed in share/linearnexus/presets; $LINEARNEXUS_PRESET_PATH adds folders). An
// experiment's model section overrides a preset's fields (config.cpp merges them).
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace linearnexus {

class PluginHost;

// The presets by name -> file; a name found in several folders is the first folder's.
std::map<std::string, std::filesystem::path> preset_files();
std::vector<std::string> preset_names();
// The folders searched, ':'-separated (for errors).
std::string preset_dirs_text();

// What `linearnexus presets` prints: each preset's name, parameter count (with its vocab_size;
// 50257, GPT-2's, where the preset leaves it to the tokenizer), block pattern, width and depth, and the
// first line of its file's comment. The count is the model's own (LMModel::num_parameters), from a
// model built with one cycle of the block pattern plus the blocks the pattern repeats, each built once.
std::string describe_presets(PluginHost& host);

}  // namespace linearnexus
