#pragma once
// The default random generators' states: what a checkpoint saves for an exact resume, and what
// activation checkpointing restores so a recomputed block draws the same dropout masks.
#include <ATen/ATen.h>

#include <string>

namespace linearnexus {

// The default generator's state on `device` (dropout and sampling draw from the device's own
// generator, so a run on CUDA checkpoints the CUDA one too).
at::Tensor rng_state(const at::Device& device = at::kCPU);
// `source`: where the state came from (a checkpoint file), named when the state is not one (wrong
// size, refused by LibTorch).
void set_rng_state(const at::Tensor& state, const at::Device& device, const std::string& source);

}  // namespace linearnexus
