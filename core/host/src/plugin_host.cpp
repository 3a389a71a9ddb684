// The plugin host: finds plugin shared libraries, checks their ABI and lets them fill the registry.
#define BOOST_DLL_USE_STD_FS
#include "linearnexus/host/plugin_host.h"

#include <boost/dll/shared_library.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "linearnexus/error.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/log.h"
#include "linearnexus/plugin.h"
#include "elf_exports.h"

namespace fs = std::filesystem;

namespace linearnexus {

PluginHost::PluginHost() { load_default_dirs(); }

std::vector<std::string> PluginHost::default_dirs() {
  std::vector<std::string> dirs;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back((exe.parent_path().parent_path() / "lib" / "linearnexus" / "plugins").string());
  if (const char* env = std::getenv("LINEARNEXUS_PLUGIN_PATH")) {
    std::stringstream ss(env);
    for (std::string d; std::getline(ss, d, ':');)
      if (!d.empty()) dirs.push_back(d);
  }
  return dirs;
}

void PluginHost::load_default_dirs() {
  for (const auto& d : default_dirs()) load_dir(d);
}

std::string PluginHost::search_path_text() const {
  std::string out;
  for (const auto& d : searched_) out += (out.empty() ? "" : ":") + d;
  return out;
}

void PluginHost::load_dir(const std::string& dir) {
  std::error_code ec;
  std::string canon = fs::weakly_canonical(dir, ec).string();
  if (std::find(searched_.begin(), searched_.end(), canon) != searched_.end()) return;
  searched_.push_back(canon);
  if (!fs::is_directory(canon, ec)) return;
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(canon, ec))
    if (entry.path().extension() == ".so") files.push_back(entry.path().string());
  std::sort(files.begin(), files.end());  // a stable, documented order: precedence is first found
  for (const auto& f : files) {
    // A named pipe or device called x.so is no library: reading it would block or never end.
    if (!is_regular_file(f)) {
      log_warn(f + ": skipped: not a regular file (a named pipe, device or folder), so not a plugin library");
      continue;
    }
    try {
      // Loading a library runs its static initialisers: a library that is not a plugin (a copy of
      // libc10.so, say) is passed over, unloaded, with a warning, rather than given that chance.
      if (!elf_exports_symbol(f, LINEARNEXUS_PLUGIN_ENTRY_SYMBOL)) {
        log_warn(f + ": skipped: it exports no '" LINEARNEXUS_PLUGIN_ENTRY_SYMBOL
                     "' entry point, so it is not a "
                     "LinearNexus plugin (move it out of the plugin folder to silence this)");
        continue;
      }
      load_exporting_file(f);
    } catch (const std::exception& e) {
      problems_.push_back({f, error_text(e)});
      log_warn("plugin skipped: " + error_text(e));
    }
  }
}

void PluginHost::load_file(const std::string& path) {
  if (!elf_exports_symbol(path, LINEARNEXUS_PLUGIN_ENTRY_SYMBOL))
    throw Error(path + ": not a LinearNexus plugin (it exports no '" LINEARNEXUS_PLUGIN_ENTRY_SYMBOL "' entry point)");
  load_exporting_file(path);
}

void PluginHost::load_exporting_file(const std::string& path) {
  std::error_code ec;
  const std::string file = fs::weakly_canonical(path, ec).string();
  for (const auto& p : plugins_)
    if (p.file == file) return;

  auto lib = std::make_shared<boost::dll::shared_library>();
  try {
    lib->load(file, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    throw Error(file + ": not a loadable plugin library (" + error_text(e) + ")");
  }
  if (!lib->has(LINEARNEXUS_PLUGIN_ENTRY_SYMBOL))
    throw Error(file + ": not a LinearNexus plugin (it exports no '" LINEARNEXUS_PLUGIN_ENTRY_SYMBOL "' entry point)");
  auto entry = lib->get<const LinearNexusPluginInfo*()>(LINEARNEXUS_PLUGIN_ENTRY_SYMBOL);
  const LinearNexusPluginInfo* info = entry();
  if (!info) throw Error(file + ": its plugin entry point returned nothing");
  // Check the versions before touching anything else in the struct.
  if (info->abi_version != LINEARNEXUS_PLUGIN_ABI_VERSION)
    throw Error(file + ": built for plugin ABI version " + std::to_string(info->abi_version) +
                ", but this LinearNexus uses ABI version " + std::to_string(LINEARNEXUS_PLUGIN_ABI_VERSION) +
                "; rebuild the plugin against this LinearNexus");
  const std::string torch_version = info->torch_version ? info->torch_version : "?";
  if (torch_version != LINEARNEXUS_TORCH_VERSION)
    throw Error(file + ": built against LibTorch " + torch_version + ", but this LinearNexus uses LibTorch " +
                LINEARNEXUS_TORCH_VERSION + "; rebuild the plugin against this LibTorch");

  LoadedPlugin lp{file,
                  info->name ? info->name : "?",
                  info->version ? info->version : "?",
                  info->description ? info->description : "",
                  {},
                  info->abi_version,
                  torch_version};
  for (const auto& p : plugins_)
    if (p.name == lp.name)
      throw Error(file + ": plugin '" + lp.name + "' is already loaded from " + p.file +
                  "; the first one found is used: remove or rename the other");

  registry_.begin_plugin({lp.name, lp.version, file, lib});
  try {
    info->register_plugin(&registry_);
  } catch (const std::exception& e) {
    registry_.end_plugin();
    registry_.remove_plugin_file(file);
    throw Error(file + ": plugin '" + lp.name + "' failed to register: " + error_text(e));
  } catch (...) {
    registry_.end_plugin();
    registry_.remove_plugin_file(file);
    throw Error(file + ": plugin '" + lp.name + "' failed to register (unknown exception)");
  }
  registry_.end_plugin();
  for (const auto* r : registry_.all())
    if (r->origin.file == file) lp.registered.push_back(std::string(plugin_kind_name(r->kind)) + " " + r->name);
  plugins_.push_back(std::move(lp));
}

}  // namespace linearnexus
