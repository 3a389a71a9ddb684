#pragma once
// Data-parallel training on LibTorch's c10d: the launch environment (torchrun's variables), a
// process group (Gloo on the CPU, NCCL on CUDA), and gradient averaging in buckets launched from
// autograd hooks while backward is still running.
//
// One process per rank. Every rank holds the whole model and optimizer; after each optimizer step's
// backward every gradient is the mean over ranks, so every rank takes the same step and the
// replicas stay identical. Rank 0 alone writes logs, metrics.jsonl and checkpoints.
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "linearnexus/param_role.h"
#include "linearnexus/params.h"

namespace linearnexus {

// Where this process stands, from torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT. Without WORLD_SIZE: one process (world_size 1, not distributed; a RANK
// other than 0 is then an error). A launch that sets some but not all, or nonsense, is an Error
// saying which variable.
// The largest WORLD_SIZE taken (Gloo and NCCL count ranks in an int; beyond this it is a typo).
constexpr int64_t kMaxWorldSize = int64_t{1} << 20;

struct LaunchEnv {
  int64_t rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  bool distributed() const { return world_size > 1; }
  static LaunchEnv from_environment();
};

struct Experiment;
// What a launch needs of this machine and the experiment (checked by prepare_run and `validate`):
// a GPU per local rank on CUDA, a backend this build has that fits the device.
void check_launch(const LaunchEnv& env, const Experiment& exp, const at::Device& device);

// The `distributed:` section's schema, and the section parsed once.
const Schema& distributed_schema();
struct DistributedSettings {
  std::string backend = "auto";  // auto = nccl on CUDA, gloo on the CPU
  double timeout_sec = 300;      // a rank that dies or stops answering this long ends every rank
  double bucket_mb = 25;         // gradients all-reduced together
  static DistributedSettings from(const Params& distributed);
};

class ProcessGroupHandle;  // c10d's process group, behind a pointer (keeps c10d out of this header)

// A process group for this rank. Collectives fail with an Error (naming the peer problem and the
// timeout) when a rank dies or stops answering for timeout_sec: never a silent hang.
class Distributed {
 public:
  // Rendezvous through a TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it), bounded by
  // timeout_sec even when what answers there is not a c10d store: an Error names the address and
  // what to check. backend: "auto" (nccl on CUDA, gloo on the CPU), "gloo" or "nccl".
  Distributed(const LaunchEnv& env, const std::string& backend, double timeout_sec, const at::Device& device);
  ~Distributed();
  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  bool is_main() const { return env_.rank == 0; }
  const std::string& backend() const { return backend_; }

  // In place: each tensor becomes its mean over ranks (one collective for all of them).
  void average(std::vector<at::Tensor>& tensors);
  // The mean over ranks of a value every rank computed.
  double average(double value);
  // Rank 0's values copied to every rank, in place (the initial weights).
  void broadcast(std::vector<at::Tensor>& tensors);
  void barrier();
  // Every rank must hold the same `entries` (key, value), in the same order: each compares its own
  // with rank 0's, and when any rank differs every rank throws the same Error naming the first rank
  // that differs and its first differing key with both values. `what` names the list in messages.
  void agree(const std::vector<std::pair<std::string, std::string>>& entries, const std::string& what);
  // Stopping together on a stop signal (runtime.h): propose stopping once `completed` steps are done
  // (the first rank's proposal wins; returns the agreed count and its signal), and the agreed count
  // if a rank has proposed one (-1: none). One store round trip each.
  int64_t propose_stop(int64_t completed, int sig, int* agreed_sig);
  int64_t agreed_stop(int* agreed_sig);
  ProcessGroupHandle& group() { return *group_; }

 private:
  LaunchEnv env_;
  std::string backend_;
  at::Device device_;
  std::unique_ptr<ProcessGroupHandle> group_;
};

// Gradient averaging for one set of parameters, overlapped with backward: parameters are packed
// into buckets of ~bucket_mb (in reverse order, the order backward produces their gradients); a
// hook on each parameter notes its gradient as it is produced, and a bucket whose gradients are
// all in is all-reduced asynchronously while backward goes on. finish() waits for the buckets and
// writes the mean gradients back into .grad.
//
// Use around the backward of the LAST micro-batch of a step only (the earlier ones accumulate
// locally): arm(); loss.backward(); finish(). Without arm() the hooks do nothing.
class GradientSync {
 public:
  GradientSync(std::shared_ptr<Distributed> dist, const std::vector<NamedParameter>& params, double bucket_mb);
  ~GradientSync();
  void arm();
  void finish();

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared with the hooks
};

}  // namespace linearnexus
