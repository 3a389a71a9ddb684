#pragma once
// Finds, checks and loads plugin shared libraries into a Registry.
//
// Search order: the build/install plugin folder next to the executable (../lib/linearnexus/plugins),
// then $LINEARNEXUS_PLUGIN_PATH (colon-separated), then the experiment file's plugins.paths (never
// a checkpoint's: see PluginPaths in config.h).
#include <cstdint>
#include <string>
#include <vector>

#include "linearnexus/registry.h"

namespace linearnexus {

struct LoadedPlugin {
  std::string file;
  std::string name;
  std::string version;
  std::string description;
  std::vector<std::string> registered;  // "block attention", "optimizer adamw", ...
  uint32_t abi = 0;                     // the plugin ABI and LibTorch it was built for (the host's:
  std::string torch_version;            // others are refused before it is loaded)
};

struct PluginProblem {
  std::string file;
  std::string message;
};

class PluginHost {
 public:
  PluginHost();  // starts with the default folders (executable's plugin folder, $LINEARNEXUS_PLUGIN_PATH)

  // Load every *.so in `dir` (non-recursive). Files already loaded are skipped. Each file's symbols
  // are read first without loading it: one that does not export the plugin entry point is skipped
  // with a warning and never loaded (its static initialisers never run). A file that is not a
  // shared library, has the wrong ABI/LibTorch version, or whose registration throws is recorded as
  // a problem and skipped; the other plugins still load.
  void load_dir(const std::string& dir);
  // Load one file; throws Error (naming the file and both versions) on any problem, and before
  // loading it when it exports no entry point.
  void load_file(const std::string& file);
  void load_default_dirs();

  Registry& registry() { return registry_; }
  const Registry& registry() const { return registry_; }
  const std::vector<LoadedPlugin>& plugins() const { return plugins_; }
  const std::vector<PluginProblem>& problems() const { return problems_; }
  const std::vector<std::string>& searched_dirs() const { return searched_; }
  // "dir1:dir2:..." for error messages.
  std::string search_path_text() const;

  static std::vector<std::string> default_dirs();

 private:
  void load_exporting_file(const std::string& file);  // load_file after the entry point was found

  Registry registry_;
  std::vector<LoadedPlugin> plugins_;
  std::vector<PluginProblem> problems_;
  std::vector<std::string> searched_;
};

}  // namespace linearnexus
