// Activation checkpointing (activation_checkpoint.h): a custom autograd node around one block.
#include "activation_checkpoint.h"

#include <torch/autograd.h>

#include "linearnexus/rng.h"
#include "linearnexus/compat.h"

namespace linearnexus {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The states of the generators a block may draw from (dropout): the CPU's, and x's device's when
// it is a GPU (else undefined).
struct GeneratorStates {
  at::Tensor cpu, device;
};
GeneratorStates generator_states(const at::Device& device) {
  return {rng_state(at::kCPU), device.is_cuda() ? rng_state(device) : at::Tensor()};
}
void restore_generators(const GeneratorStates& s, const at::Device& device) {
  set_rng_state(s.cpu, at::kCPU, "activation checkpoint");
  if (device.is_cuda()) set_rng_state(s.device, device, "activation checkpoint");
}

// The block's parameters that take gradients, in a fixed order (the node's inputs after x).
variable_list trained_parameters(Block& block) {
  variable_list out;
  for (const auto& p : block.parameters())
    if (p.requires_grad()) out.push_back(p);
  return out;
}

struct CheckpointedBlock : public torch::autograd::Function<CheckpointedBlock> {
  // params: the block's parameters, inputs of this node so that their gradients leave through it
  // (a TensorList: LibTorch counts each of its tensors as an input; a std::vector would be one
  // opaque argument in 1.13).
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList params, Block* block,
                               const ForwardContext* fctx, bool autocast, at::ScalarType autocast_dtype) {
    // x: [B, T, C]
    auto rng = generator_states(x.device());
    at::Tensor y;
    {
      at::NoGradGuard no_grad;
      y = block->forward(x, LayerState{}, *fctx).y;
    }
    ctx->save_for_backward({x});
    // What backward needs to run the block again. The block outlives the step (the model owns it).
    ctx->saved_data["block"] = reinterpret_cast<int64_t>(block);
    ctx->saved_data["positions"] = fctx->positions;
    ctx->saved_data["key_padding"] = fctx->key_padding;
    ctx->saved_data["autocast"] = autocast;
    ctx->saved_data["autocast_dtype"] = static_cast<int64_t>(autocast_dtype);
    ctx->saved_data["rng_cpu"] = rng.cpu;
    ctx->saved_data["rng_device"] = rng.device;
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* block = reinterpret_cast<Block*>(ctx->saved_data["block"].toInt());
    const at::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    ForwardContext fctx;
    fctx.mode = Mode::Train;
    fctx.positions = ctx->saved_data["positions"].toTensor();
    fctx.key_padding = ctx->saved_data["key_padding"].toTensor();
    const variable_list params = trained_parameters(*block);
    // Run the block again on the generator states of the forward, then put them back where the
    // step left them: the rest of the run draws what it would have drawn without checkpointing.
    const auto now = generator_states(x.device());
    restore_generators({ctx->saved_data["rng_cpu"].toTensor(), ctx->saved_data["rng_device"].toTensor()}, x.device());
    at::Tensor y;
    {
      at::AutoGradMode grad_mode(true);
      compat::AutocastGuard guard(ctx->saved_data["autocast"].toBool(),
                                  static_cast<at::ScalarType>(ctx->saved_data["autocast_dtype"].toInt()));
      y = block->forward(x, LayerState{}, fctx).y;
    }
    restore_generators(now, x.device());
    std::vector<at::Tensor> inputs{x};
    inputs.insert(inputs.end(), params.begin(), params.end());
    auto g = torch::autograd::grad({y}, inputs, {grads[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                   /*allow_unused=*/true);
    // One gradient per input of forward: x, each parameter, then the four non-tensor arguments.
    variable_list out(g.begin(), g.end());
    for (int i = 0; i < 4; ++i) out.emplace_back();
    return out;
  }
};

}  // namespace

at::Tensor checkpointed_block(Block& block, const at::Tensor& x, const ForwardContext& ctx, bool autocast,
                              at::ScalarType autocast_dtype) {
  const variable_list params = trained_parameters(block);
  return CheckpointedBlock::apply(x, at::TensorList(params), &block, &ctx, autocast, autocast_dtype)[0];
}

}  // namespace linearnexus
