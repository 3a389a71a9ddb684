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
// MASTER_ADDR, MASTER_PORT. Without WORLD_SIZE: one process (world_size 1, not distributed). A
// launch that sets some but not all, or nonsense, is an Error saying which variable.
struct LaunchEnv {
  int64_t rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr;
  int master_port = 0;
  bool distributed() const { return world_size > 1; }
  static LaunchEnv from_environment();
};

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
  // Rendezvous through a TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it). backend: "auto"
  // (nccl on CUDA, gloo on the CPU), "gloo" or "nccl".
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
