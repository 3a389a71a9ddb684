#pragma once
// One captured CUDA graph of a host function's kernels (the decode engine's one-token step), behind
// a plain interface so that only cuda_graph.cpp includes CUDA headers. Without CUDA graphs
// (a CPU build, LibTorch 1.x) capture() says why and the caller runs the function eagerly.
#include <functional>
#include <memory>
#include <string>

namespace linearnexus {

class StepGraph {
 public:
  StepGraph();
  ~StepGraph();
  // Runs `step` twice on a side stream (cuBLAS workspaces, allocator pools, lazy init), then
  // captures one call of it. False, with the reason in *why, when it cannot be captured (a host
  // synchronisation, a CPU tensor read...); with CUDA graphs the warm-up calls have run
  // either way.
  bool capture(const std::function<void()>& step, std::string* why);
  // Launches the captured kernels on the current stream.
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace linearnexus
