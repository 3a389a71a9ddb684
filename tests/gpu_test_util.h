#pragma once
// Helpers shared by the `gpu`-labelled tests that check a CUDA kernel against a CPU reference.
#include <ATen/ATen.h>

#include "catch.h"

// Skips the test case (saying why) where LibTorch or the machine has no CUDA device.
#define LN_SKIP_WITHOUT_CUDA() \
  if (!at::hasCUDA()) LN_SKIP("no CUDA device in this LibTorch/machine")

namespace lntest {

// ||a - b|| / ||b||, in float64 on the CPU (a and b may live on any device, in any dtype).
inline double rel_error(const at::Tensor& a, const at::Tensor& b) {
  auto x = a.detach().to(at::kCPU, at::kDouble), y = b.detach().to(at::kCPU, at::kDouble);
  return ((x - y).norm() / y.norm().clamp_min(1e-300)).item<double>();
}

// max |a - b| / max |b|, in float64 on the CPU.
inline double max_rel_error(const at::Tensor& a, const at::Tensor& b) {
  auto x = a.detach().to(at::kCPU, at::kDouble), y = b.detach().to(at::kCPU, at::kDouble);
  return ((x - y).abs().max() / y.abs().max().clamp_min(1e-300)).item<double>();
}

}  // namespace lntest
