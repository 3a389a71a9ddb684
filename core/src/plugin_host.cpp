// The registry of named factories and the plugin host that fills it from shared libraries.
#define BOOST_DLL_USE_STD_FS
#include "linearnexus/plugin_host.h"

#include <boost/dll/shared_library.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/model.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/plugin.h"
#include "linearnexus/trainer.h"

namespace fs = std::filesystem;

namespace linearnexus {

// ---- Registry ---------------------------------------------------------------------------------

const char* plugin_kind_name(PluginKind k) {
  switch (k) {
    case PluginKind::Block: return "block";
    case PluginKind::Optimizer: return "optimizer";
    case PluginKind::Trainer: return "trainer";
    case PluginKind::Task: return "task";
  }
  return "?";
}

void Registry::add(Registration r) {
  r.origin = current_;
  auto key = std::make_pair(r.kind, r.name);
  auto it = entries_.find(key);
  if (it != entries_.end())
    throw Error(std::string(plugin_kind_name(r.kind)) + " '" + r.name + "' is registered by both " +
                (it->second.origin.file.empty() ? "the host" : it->second.origin.file) + " and " +
                (r.origin.file.empty() ? "the host" : r.origin.file) +
                "; the first one found is used: remove or rename the other");
  entries_.emplace(key, std::move(r));
}

void Registry::add_block(const std::string& name, const std::string& doc, Schema schema, BlockFactory f) {
  Registration r{PluginKind::Block, name, doc, std::move(schema)};
  r.block = std::move(f);
  add(std::move(r));
}
void Registry::add_optimizer(const std::string& name, const std::string& doc, Schema schema, OptimizerFactory f) {
  Registration r{PluginKind::Optimizer, name, doc, std::move(schema)};
  r.optimizer = std::move(f);
  add(std::move(r));
}
void Registry::add_trainer(const std::string& name, const std::string& doc, Schema schema, TrainerFactory f) {
  Registration r{PluginKind::Trainer, name, doc, std::move(schema)};
  r.trainer = std::move(f);
  add(std::move(r));
}
void Registry::add_task(const std::string& name, const std::string& doc, Schema schema, TaskFactory f) {
  Registration r{PluginKind::Task, name, doc, std::move(schema)};
  r.task = std::move(f);
  add(std::move(r));
}

const Registration* Registry::find(PluginKind kind, const std::string& name) const {
  auto it = entries_.find({kind, name});
  return it == entries_.end() ? nullptr : &it->second;
}

const Registration& Registry::get(PluginKind kind, const std::string& name, const std::string& where) const {
  if (const auto* r = find(kind, name)) return *r;
  auto avail = names(kind);
  std::string msg = (where.empty() ? "" : where + ": ") + "unknown " + plugin_kind_name(kind) + " '" + name + "'";
  std::string near = nearest_key(name, avail);
  if (!near.empty()) msg += "; did you mean '" + near + "'?";
  msg += " available: ";
  msg += avail.empty() ? "(none: is the plugin folder on LINEARNEXUS_PLUGIN_PATH?)" : names_text(kind);
  throw Error(msg);
}

std::vector<const Registration*> Registry::all() const {
  std::vector<const Registration*> out;
  for (const auto& [k, r] : entries_) out.push_back(&r);
  return out;
}

std::vector<std::string> Registry::names(PluginKind kind) const {
  std::vector<std::string> out;
  for (const auto& [k, r] : entries_)
    if (k.first == kind) out.push_back(k.second);
  return out;
}

std::string Registry::names_text(PluginKind kind) const {
  std::string out;
  for (const auto& n : names(kind)) out += (out.empty() ? "" : ", ") + n;
  return out;
}

void Registry::remove_plugin_file(const std::string& file) {
  for (auto it = entries_.begin(); it != entries_.end();)
    it = it->second.origin.file == file ? entries_.erase(it) : std::next(it);
}

namespace {
// Hand out a plugin-made object through a shared_ptr whose deleter (core code) first destroys the
// object and only then drops its reference on the library, so the code the object needs stays
// mapped for as long as it lives.
template <class T>
std::shared_ptr<T> keep_library_loaded(std::shared_ptr<T> obj, const std::shared_ptr<void>& library) {
  if (!obj || !library) return obj;
  T* raw = obj.get();
  return std::shared_ptr<T>(raw, [obj = std::move(obj), lib = library](T*) mutable {
    obj.reset();
    lib.reset();
  });
}
}  // namespace

std::shared_ptr<Block> Registry::make_block(const std::string& name, const ModelDims& dims, const Params& params,
                                            int64_t layer_index) const {
  const auto& r = get(PluginKind::Block, name);
  return keep_library_loaded(r.block(dims, params, layer_index), r.origin.library);
}
std::shared_ptr<Optimizer> Registry::make_optimizer(const std::string& name, const std::vector<NamedParameter>& params,
                                                    const Params& p) const {
  const auto& r = get(PluginKind::Optimizer, name);
  return keep_library_loaded(r.optimizer(params, p), r.origin.library);
}
std::shared_ptr<Trainer> Registry::make_trainer(const std::string& name, const Params& p) const {
  const auto& r = get(PluginKind::Trainer, name);
  return keep_library_loaded(r.trainer(p), r.origin.library);
}
std::shared_ptr<Task> Registry::make_task(const std::string& name, const Params& p) const {
  const auto& r = get(PluginKind::Task, name);
  return keep_library_loaded(r.task(p), r.origin.library);
}

// ---- PluginHost -------------------------------------------------------------------------------

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
    try {
      load_file(f);
    } catch (const std::exception& e) {
      problems_.push_back({f, e.what()});
      log_warn(std::string("plugin skipped: ") + e.what());
    }
  }
}

void PluginHost::load_file(const std::string& path) {
  std::error_code ec;
  const std::string file = fs::weakly_canonical(path, ec).string();
  for (const auto& p : plugins_)
    if (p.file == file) return;

  auto lib = std::make_shared<boost::dll::shared_library>();
  try {
    lib->load(file, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    throw Error(file + ": not a loadable plugin library (" + e.what() + ")");
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

  LoadedPlugin lp{file, info->name ? info->name : "?", info->version ? info->version : "?",
                  info->description ? info->description : ""};
  for (const auto& p : plugins_)
    if (p.name == lp.name)
      throw Error(file + ": plugin '" + lp.name + "' is already loaded from " + p.file +
                  "; the first one found is used: remove or rename the other");

  auto before = registry_.all();
  registry_.begin_plugin({lp.name, lp.version, file, lib});
  try {
    info->register_plugin(&registry_);
  } catch (const std::exception& e) {
    registry_.end_plugin();
    registry_.remove_plugin_file(file);
    throw Error(file + ": plugin '" + lp.name + "' failed to register: " + e.what());
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
