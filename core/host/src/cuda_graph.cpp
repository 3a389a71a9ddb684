// StepGraph on at::cuda::CUDAGraph (LibTorch 2.x with CUDA); a stub elsewhere.
#include "cuda_graph.h"

#include "linearnexus/compat.h"

#if LINEARNEXUS_HAS_CUDA_GRAPHS
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace linearnexus {

#if LINEARNEXUS_HAS_CUDA_GRAPHS
struct StepGraph::Impl {
  at::cuda::CUDAGraph graph;
  bool captured = false;
};

StepGraph::StepGraph() : impl_(std::make_unique<Impl>()) {}
StepGraph::~StepGraph() = default;

bool StepGraph::capture(const std::function<void()>& step, std::string* why) {
  // Capture needs a stream other than the default one; the warm-up runs there too, so that the
  // per-stream cuBLAS workspace the captured kernels use exists before capture.
  c10::cuda::device_synchronize();
  auto side = c10::cuda::getStreamFromPool();
  try {
    c10::cuda::CUDAStreamGuard on_side(side);
    step();
    step();
    side.synchronize();
    impl_->graph.capture_begin();
    try {
      step();
    } catch (...) {
      try {
        impl_->graph.capture_end();
      } catch (...) {
      }
      throw;
    }
    impl_->graph.capture_end();
  } catch (const std::exception& e) {
    *why = e.what();
    (void)cudaGetLastError();  // a failed capture leaves a sticky-free error to clear
    c10::cuda::device_synchronize();
    return false;
  }
  c10::cuda::device_synchronize();
  impl_->captured = true;
  return true;
}

void StepGraph::replay() { impl_->graph.replay(); }
#else
struct StepGraph::Impl {};
StepGraph::StepGraph() = default;
StepGraph::~StepGraph() = default;
bool StepGraph::capture(const std::function<void()>&, std::string* why) {
  *why = "this build has no CUDA graphs (CPU-only LibTorch or LibTorch 1.x)";
  return false;
}
void StepGraph::replay() {}
#endif

}  // namespace linearnexus
