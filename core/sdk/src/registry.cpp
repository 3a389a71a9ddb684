// The registry of named factories (see registry.h); the plugin host fills it.
#include "linearnexus/registry.h"

#include "linearnexus/error.h"
#include "linearnexus/model.h"
#include "linearnexus/optimizer.h"
#include "linearnexus/task.h"
#include "linearnexus/trainer.h"

namespace linearnexus {

const char* plugin_kind_name(PluginKind k) {
  switch (k) {
    case PluginKind::Block:
      return "block";
    case PluginKind::Optimizer:
      return "optimizer";
    case PluginKind::Trainer:
      return "trainer";
    case PluginKind::Task:
      return "task";
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

void Registry::add_block(const std::string& name, const std::string& doc, Schema schema, BlockFactory f,
                         BlockHooks hooks) {
  Registration r{PluginKind::Block, name, doc, std::move(schema)};
  r.block = std::move(f);
  r.hooks = std::move(hooks);
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

}  // namespace linearnexus
