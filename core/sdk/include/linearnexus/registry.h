#pragma once
// The registry: named factories of each plugin kind, with their parameter schemas.
//
// A plugin's register callback adds entries here. Objects a factory makes are handed out wrapped so
// that they keep the plugin's shared library loaded for as long as they live (see make_*).
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "linearnexus/params.h"

namespace linearnexus {

class Block;
class Optimizer;
class Trainer;
class Task;
struct HFAdapter;
struct ModelDims;
struct NamedParameter;

enum class PluginKind { Block, Optimizer, Trainer, Task };
const char* plugin_kind_name(PluginKind k);

using BlockFactory =
    std::function<std::shared_ptr<Block>(const ModelDims& dims, const Params& params, int64_t layer_index)>;
using OptimizerFactory =
    std::function<std::shared_ptr<Optimizer>(const std::vector<NamedParameter>& params, const Params& p)>;
using TrainerFactory = std::function<std::shared_ptr<Trainer>(const Params& params)>;
using TaskFactory = std::function<std::shared_ptr<Task>(const Params& params)>;

// Optional extras a block registration carries (as torchtitan's train specs and state-dict
// adapters): the host calls them, and never names a block's modules or parameters itself.
struct BlockHooks {
  // Training FLOPs per token of one layer beyond 6 x its parameters: what it computes that is not a
  // matmul with one of its weights (attention's scores and weighted sum: 12 C T, counted as full
  // T x T), for the logged mfu. Empty: 0.
  std::function<double(const ModelDims& dims, const Params& params, int64_t seq_len)> extra_flops_per_token;
  // The Hugging Face architectures a model of this block converts to and from (hf_adapter.h);
  // null: `convert` refuses such models, naming the block.
  std::shared_ptr<const HFAdapter> hf;
};

// Where a registration came from (filled in by the plugin host while a plugin registers).
struct PluginOrigin {
  std::string plugin_name;
  std::string plugin_version;
  std::string file;
  std::shared_ptr<void> library;  // keeps the shared library loaded
};

struct Registration {
  PluginKind kind;
  std::string name;
  std::string doc;
  Schema schema;
  PluginOrigin origin;
  BlockFactory block;
  BlockHooks hooks;  // blocks only
  OptimizerFactory optimizer;
  TrainerFactory trainer;
  TaskFactory task;
};

class Registry {
 public:
  void add_block(const std::string& name, const std::string& doc, Schema schema, BlockFactory f, BlockHooks hooks = {});
  void add_optimizer(const std::string& name, const std::string& doc, Schema schema, OptimizerFactory f);
  void add_trainer(const std::string& name, const std::string& doc, Schema schema, TrainerFactory f);
  void add_task(const std::string& name, const std::string& doc, Schema schema, TaskFactory f);

  // Throws Error listing the available names when `name` is unknown; `where` names the config key.
  const Registration& get(PluginKind kind, const std::string& name, const std::string& where = "") const;
  const Registration* find(PluginKind kind, const std::string& name) const;
  std::vector<const Registration*> all() const;
  std::vector<std::string> names(PluginKind kind) const;
  // The same names as "a, b, c", for error messages.
  std::string names_text(PluginKind kind) const;

  std::shared_ptr<Block> make_block(const std::string& name, const ModelDims& dims, const Params& params,
                                    int64_t layer_index) const;
  std::shared_ptr<Optimizer> make_optimizer(const std::string& name, const std::vector<NamedParameter>& params,
                                            const Params& p) const;
  std::shared_ptr<Trainer> make_trainer(const std::string& name, const Params& p) const;
  std::shared_ptr<Task> make_task(const std::string& name, const Params& p) const;

  // Used by the plugin host around a plugin's register callback.
  void begin_plugin(PluginOrigin origin) { current_ = std::move(origin); }
  void end_plugin() { current_ = PluginOrigin{}; }
  // Drop everything a plugin registered (when its register callback threw).
  void remove_plugin_file(const std::string& file);

 private:
  void add(Registration r);
  std::map<std::pair<PluginKind, std::string>, Registration> entries_;
  PluginOrigin current_;
};

}  // namespace linearnexus
