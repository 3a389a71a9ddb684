// A test plugin that loads: block `test_identity` (y = x, no parameters, no state), versioned by the
// GOOD_VERSION definition so tests can build a checkpoint with one version and load it with another.
#include <linearnexus/model.h>
#include <linearnexus/plugin.h>

namespace {
class IdentityBlock : public linearnexus::Block {
 public:
  linearnexus::BlockOutput forward(const at::Tensor& x, linearnexus::LayerState state,
                                   const linearnexus::ForwardContext&) override {
    return {x, std::move(state)};  // x: [B, T, C] -> [B, T, C]
  }
  linearnexus::LayerState init_state(int64_t, int64_t, const at::TensorOptions&) const override { return {}; }
};

void register_identity(linearnexus::Registry& r) {
  r.add_block("test_identity", "y = x (test plugin)", {},
              [](const linearnexus::ModelDims&, const linearnexus::Params&, int64_t) {
                return std::make_shared<IdentityBlock>();
              });
}
}  // namespace

LINEARNEXUS_PLUGIN("good_identity", GOOD_VERSION, "identity block for the plugin tests", register_identity)
