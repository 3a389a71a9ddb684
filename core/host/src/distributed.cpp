// Data-parallel training on c10d (see distributed.h): launch environment, process group, bucketed
// gradient averaging from autograd hooks.
#include "linearnexus/host/distributed.h"

#include <torch/csrc/distributed/c10d/TCPStore.hpp>
// Gloo's headers come with Debian's libgloo-dev; torch's Python wheels ship libtorch with Gloo inside
// but without its headers: there the CPU backend is unavailable (CUDA runs use NCCL).
#if __has_include(<gloo/rendezvous/store.h>)
#define LINEARNEXUS_HAS_GLOO 1
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <mutex>

#include "linearnexus/compat.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"

namespace linearnexus {

#if LINEARNEXUS_C10D_BACKEND_BASE
using C10dGroup = c10d::Backend;
#else
using C10dGroup = c10d::ProcessGroup;
#endif
using WorkPtr = decltype(std::declval<C10dGroup&>().allreduce(std::declval<std::vector<at::Tensor>&>()));

class ProcessGroupHandle {
 public:
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<C10dGroup> group;
  std::chrono::milliseconds timeout{0};
  // Wait for a collective; a peer that died or hung surfaces here, as one Error. No timeout is
  // passed: with one, NCCL's wait blocks the host until the all-reduce is done (a host-device sync
  // every step); without, it only orders the compute stream after it. The group's own timeout
  // (its Options) still ends a collective that hangs.
  void wait(WorkPtr& work, const char* what) {
    try {
      work->wait();
    } catch (const std::exception& e) {
      std::string msg = e.what();
      throw Error(std::string("distributed: ") + what + " failed: " + msg.substr(0, msg.find('\n')) +
                  " (another rank died or stopped answering within distributed.timeout_sec = " +
                  std::to_string(timeout.count() / 1000) + " s)");
    }
  }
};

namespace {
int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  if (*end) throw Error(std::string("launch: ") + name + "='" + v + "' is not an integer");
  return x;
}
}  // namespace

LaunchEnv LaunchEnv::from_environment() {
  LaunchEnv e;
  e.world_size = env_int("WORLD_SIZE", 1);
  if (e.world_size < 1) throw Error("launch: WORLD_SIZE must be at least 1 (got " + std::to_string(e.world_size) + ")");
  if (e.world_size == 1) return e;
  e.rank = env_int("RANK", -1);
  if (e.rank < 0 || e.rank >= e.world_size)
    throw Error("launch: WORLD_SIZE=" + std::to_string(e.world_size) + " needs RANK in 0.." +
                std::to_string(e.world_size - 1) + " (set by torchrun, or by linearnexus run --nproc N)");
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  const char* addr = std::getenv("MASTER_ADDR");
  if (!addr || !*addr)
    throw Error("launch: WORLD_SIZE is set but MASTER_ADDR is not: set MASTER_ADDR and MASTER_PORT to rank 0's "
                "address and a free port (torchrun does), or use linearnexus run --nproc N on one machine");
  e.master_addr = addr;
  e.master_port = static_cast<int>(env_int("MASTER_PORT", -1));
  if (e.master_port <= 0 || e.master_port > 65535)
    throw Error("launch: MASTER_PORT must be a port number (1..65535) beside MASTER_ADDR");
  return e;
}

const Schema& distributed_schema() {
  static const Schema s = {
      {"backend", ParamType::String, "auto", "collectives: auto = nccl on CUDA, gloo on the CPU", {"auto", "gloo", "nccl"}},
      {"timeout_sec", ParamType::Float, "300", "a rank that dies or stops answering this long ends every rank with an error", {}, 1},
      {"bucket_mb", ParamType::Float, "25", "gradients all-reduced together, in MB (smaller overlaps more with backward)", {}, 0.01},
  };
  return s;
}

DistributedSettings DistributedSettings::from(const Params& d) {
  return {d.get_string("backend"), d.get_float("timeout_sec"), d.get_float("bucket_mb")};
}

Distributed::Distributed(const LaunchEnv& env, const std::string& backend, double timeout_sec, const at::Device& device)
    : env_(env), device_(device), group_(std::make_unique<ProcessGroupHandle>()) {
  backend_ = backend == "auto" ? (device.is_cuda() ? "nccl" : "gloo") : backend;
#ifdef USE_C10D_NCCL
  // This rank's GPU becomes the current one, so code that names no index (kernels, handles,
  // NCCL's communicator) lands there rather than on GPU 0.
  if (device.is_cuda() && device.has_index()) c10::cuda::set_device(device.index());
#endif
  group_->timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_sec * 1000));
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<uint16_t>(env.master_port);
  opts.isServer = env.rank == 0;
  opts.numWorkers = static_cast<size_t>(env.world_size);
  opts.waitWorkers = true;
  opts.timeout = group_->timeout;
  try {
    group_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, opts);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    throw Error("distributed: rank " + std::to_string(env.rank) + " could not meet the others at " + env.master_addr +
                ":" + std::to_string(env.master_port) + " (" + msg.substr(0, msg.find('\n')) +
                "): is the port taken, or did another rank fail to start?");
  }
  if (backend_ == "nccl") {
#ifdef USE_C10D_NCCL
    if (!device.is_cuda()) throw Error("distributed.backend: nccl needs device: cuda; use gloo on the CPU");
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = group_->timeout;
    group_->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(group_->store, env.rank, env.world_size, o);
#else
    throw Error("distributed.backend: nccl, but this LibTorch has no NCCL (a CPU build); use gloo");
#endif
  } else {
#ifdef LINEARNEXUS_HAS_GLOO
    auto o = c10d::ProcessGroupGloo::Options::create(group_->timeout);
    o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    group_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(group_->store, env.rank, env.world_size, o);
#else
    throw Error("distributed.backend: gloo, but this build has no Gloo headers (install libgloo-dev and rebuild); "
                "on CUDA use nccl");
#endif
  }
  log_info("distributed: rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) + " (" + backend_ +
           ", " + device.str() + ")");
}

Distributed::~Distributed() = default;

void Distributed::average(std::vector<at::Tensor>& tensors) {
  if (tensors.empty()) return;
  std::vector<at::Tensor> flat_parts;
  for (const auto& t : tensors) flat_parts.push_back(t.reshape({-1}).to(at::kFloat));
  std::vector<at::Tensor> buf{at::cat(flat_parts)};
  auto work = group_->group->allreduce(buf);
  group_->wait(work, "all-reduce");
  buf[0].div_(static_cast<double>(env_.world_size));
  int64_t off = 0;
  for (auto& t : tensors) {
    t.copy_(buf[0].narrow(0, off, t.numel()).view(t.sizes()));
    off += t.numel();
  }
}

double Distributed::average(double value) {
  std::vector<at::Tensor> t{at::full({1}, value, at::TensorOptions().dtype(at::kDouble).device(device_))};
  if (backend_ == "nccl") t[0] = t[0].to(at::kFloat);
  average(t);
  return t[0].item<double>();
}

void Distributed::broadcast(std::vector<at::Tensor>& tensors) {
  for (auto& t : tensors) {
    std::vector<at::Tensor> one{t};
    auto work = group_->group->broadcast(one);
    group_->wait(work, "broadcast");
  }
}

void Distributed::barrier() {
  std::vector<at::Tensor> t{at::zeros({1}, at::TensorOptions().device(device_))};
  auto work = group_->group->allreduce(t);
  group_->wait(work, "barrier");
}

// ---- GradientSync -----------------------------------------------------------------------------

struct GradientSync::State {
  struct Bucket {
    std::vector<size_t> params;  // indices into `params`
    std::vector<int64_t> offsets;
    at::Tensor flat;             // [numel of its parameters], fp32
    int64_t pending = 0;
    bool launched = false;
    std::vector<at::Tensor> io;  // the one tensor handed to c10d
    c10::optional<WorkPtr> work;
  };
  std::shared_ptr<Distributed> dist;
  std::vector<NamedParameter> params;
  std::vector<std::pair<size_t, size_t>> where;  // param -> (bucket, slot)
  std::vector<Bucket> buckets;
  std::vector<bool> seen;
  bool armed = false;
  std::mutex mu;

  void launch(Bucket& b) {
    b.launched = true;
    b.io = {b.flat};
    b.work = dist->group().group->allreduce(b.io);
  }
  // The gradient of parameter i is in (backward's hook): the step's total is what .grad holds from
  // earlier micro-batches plus this one.
  void on_grad(size_t i, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || seen[i]) return;
    seen[i] = true;
    auto [bi, slot] = where[i];
    Bucket& b = buckets[bi];
    const at::Tensor& acc = params[i].param.grad();
    auto total = acc.defined() ? acc + grad : grad;
    b.flat.narrow(0, b.offsets[slot], total.numel()).copy_(total.reshape({-1}));
    if (--b.pending == 0) launch(b);
  }
};

GradientSync::GradientSync(std::shared_ptr<Distributed> dist, const std::vector<NamedParameter>& params, double bucket_mb)
    : state_(std::make_shared<State>()) {
  state_->dist = std::move(dist);
  state_->params = params;
  state_->where.resize(params.size());
  state_->seen.assign(params.size(), false);
  const int64_t cap = static_cast<int64_t>(bucket_mb * (1 << 20) / 4);
  // Reverse order: the last layers' gradients come first in backward, so their bucket fills first.
  for (size_t k = params.size(); k-- > 0;) {
    const auto& p = params[k].param;
    if (state_->buckets.empty() || state_->buckets.back().flat.numel() >= cap ||
        state_->buckets.back().flat.device() != p.device()) {
      state_->buckets.emplace_back();
      state_->buckets.back().flat = at::empty({0}, p.options().dtype(at::kFloat));
    }
    auto& b = state_->buckets.back();
    state_->where[k] = {state_->buckets.size() - 1, b.params.size()};
    b.params.push_back(k);
    b.offsets.push_back(b.flat.numel());
    b.flat = at::empty({b.flat.numel() + p.numel()}, b.flat.options());
  }
  std::weak_ptr<State> weak = state_;
  for (size_t k = 0; k < params.size(); ++k) {
    if (!params[k].param.requires_grad()) continue;
    params[k].param.register_hook([weak, k](const at::Tensor& grad) {
      if (auto s = weak.lock()) s->on_grad(k, grad);
    });
  }
}

GradientSync::~GradientSync() = default;

void GradientSync::arm() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->armed = true;
  std::fill(state_->seen.begin(), state_->seen.end(), false);
  for (auto& b : state_->buckets) {
    b.pending = static_cast<int64_t>(b.params.size());
    b.launched = false;
    b.work.reset();
  }
}

void GradientSync::finish() {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (!state_->armed) return;
  state_->armed = false;
  for (auto& b : state_->buckets) {
    if (b.launched) continue;
    // Parameters that got no gradient in this backward: what they hold (or zeros).
    for (size_t slot = 0; slot < b.params.size(); ++slot) {
      const size_t i = b.params[slot];
      if (state_->seen[i]) continue;
      const auto& g = state_->params[i].param.grad();
      auto dst = b.flat.narrow(0, b.offsets[slot], state_->params[i].param.numel());
      if (g.defined()) dst.copy_(g.reshape({-1}));
      else dst.zero_();
    }
    state_->launch(b);
  }
  const double inv = 1.0 / static_cast<double>(state_->dist->world_size());
  for (auto& b : state_->buckets) {
    state_->dist->group().wait(*b.work, "gradient all-reduce");
    b.flat.mul_(inv);
    for (size_t slot = 0; slot < b.params.size(); ++slot) {
      auto& p = state_->params[b.params[slot]].param;
      auto mean = b.flat.narrow(0, b.offsets[slot], p.numel()).view(p.sizes()).to(p.scalar_type());
      if (p.grad().defined()) p.mutable_grad().copy_(mean);
      else p.mutable_grad() = mean.clone();
    }
  }
}

}  // namespace linearnexus
