// Activation checkpointing of one block (trainer.activation_checkpointing; LMModel::forward_hidden
// uses it): core-internal.
#pragma once

#include "linearnexus/model.h"

namespace linearnexus {

// block.forward(x, {}, ctx).y for a training forward (ctx.mode Train, no state), keeping only x
// for backward: the forward runs without autograd, and backward runs the block again (same random
// generator states, so dropout masks match; under autocast to `autocast_dtype` when `autocast`) and
// back-propagates through that. Gradients equal the plain forward's; the block's parameters get
// theirs through this node (so parameter hooks, e.g. data-parallel averaging, fire as usual).
// Cost: one more forward of the block per step (~1/3 more compute for the checkpointed blocks).
// x: [B, T, C] -> [B, T, C]
at::Tensor checkpointed_block(Block& block, const at::Tensor& x, const ForwardContext& ctx, bool autocast,
                              at::ScalarType autocast_dtype);

}  // namespace linearnexus
