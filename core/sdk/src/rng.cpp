// The default generators' states (rng.h).
#include "linearnexus/rng.h"

#include <mutex>

#include "linearnexus/error.h"

namespace linearnexus {

namespace {
std::string shape_text(at::IntArrayRef s) { return c10::str(s); }
}  // namespace

at::Tensor rng_state(const at::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
void set_rng_state(const at::Tensor& state, const at::Device& device, const std::string& source) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  // LibTorch checks the bytes itself, but with a raw c10 message and backtrace ("Invalid mt19937
  // state"); the size and dtype are checked here, and whatever it still refuses is named.
  const at::Tensor current = gen.get_state();
  const std::string what = source + ": tensor 'rng." + std::string(device.is_cuda() ? "cuda" : "cpu") + "' ";
  if (state.scalar_type() != at::kByte || state.dim() != 1 || state.numel() != current.numel())
    throw Error(what + "is not a random generator state of this LibTorch (" + c10::toString(state.scalar_type()) + " " +
                shape_text(state.sizes()) + ", expected Byte [" + std::to_string(current.numel()) +
                "]); the file is corrupt: use another checkpoint");
  try {
    gen.set_state(state);
  } catch (const c10::Error& e) {
    throw Error(what + "is refused by LibTorch (" + error_text(e) + "); the file is corrupt: use another checkpoint");
  }
}

}  // namespace linearnexus
