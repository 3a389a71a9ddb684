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

#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>

#include "linearnexus/compat.h"
#include "linearnexus/error.h"
#include "linearnexus/host/config.h"
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
  // Gloo and NCCL count ranks in an int; far past any real job, a number this large is a typo.
  if (e.world_size < 1 || e.world_size > kMaxWorldSize)
    throw Error("launch: WORLD_SIZE must be in 1.." + std::to_string(kMaxWorldSize) + " (got " +
                std::to_string(e.world_size) + ")");
  if (e.world_size == 1) {
    // One process: a RANK other than 0 means the launch is not what the user thinks it is.
    const int64_t rank = env_int("RANK", 0);
    if (rank != 0)
      throw Error("launch: RANK=" + std::to_string(rank) + " but WORLD_SIZE is 1 (or unset), so RANK must be 0; set " +
                  "WORLD_SIZE to the number of ranks, or unset RANK");
    return e;
  }
  e.rank = env_int("RANK", -1);
  if (e.rank < 0 || e.rank >= e.world_size)
    throw Error("launch: WORLD_SIZE=" + std::to_string(e.world_size) + " needs RANK in 0.." +
                std::to_string(e.world_size - 1) + " (set by torchrun, or by linearnexus run --nproc N)");
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  if (e.local_rank < 0 || e.local_rank >= e.world_size)
    throw Error("launch: LOCAL_RANK=" + std::to_string(e.local_rank) + " must be in 0.." +
                std::to_string(e.world_size - 1));
  const char* addr = std::getenv("MASTER_ADDR");
  if (!addr || !*addr)
    throw Error(
        "launch: WORLD_SIZE is set but MASTER_ADDR is not: set MASTER_ADDR and MASTER_PORT to rank 0's "
        "address and a free port (torchrun does), or use linearnexus run --nproc N on one machine");
  e.master_addr = addr;
  e.master_port = static_cast<int>(env_int("MASTER_PORT", -1));
  if (e.master_port <= 0 || e.master_port > 65535)
    throw Error("launch: MASTER_PORT must be a port number (1..65535) beside MASTER_ADDR");
  return e;
}

const Schema& distributed_schema() {
  static const Schema s = {
      {"backend",
       ParamType::String,
       "auto",
       "collectives: auto = nccl on CUDA, gloo on the CPU",
       {"auto", "gloo", "nccl"}},
      {"timeout_sec",
       ParamType::Float,
       "300",
       "a rank that dies or stops answering this long ends every rank with an error",
       {},
       1},
      {"bucket_mb",
       ParamType::Float,
       "25",
       "gradients all-reduced together, in MB (smaller overlaps more with backward)",
       {},
       0.01},
  };
  return s;
}

DistributedSettings DistributedSettings::from(const Params& d) {
  return {d.get_string("backend"), d.get_float("timeout_sec"), d.get_float("bucket_mb")};
}

void check_launch(const LaunchEnv& env, const Experiment& exp, const at::Device& device) {
  if (!env.distributed()) return;
  if (device.is_cuda() && env.local_rank >= static_cast<int64_t>(torch::cuda::device_count()))
    throw Error("launch: LOCAL_RANK " + std::to_string(env.local_rank) + " but this machine has " +
                std::to_string(torch::cuda::device_count()) + " GPU(s): start at most one rank per GPU");
  const std::string& backend = exp.distributed.backend;
  if (backend == "nccl" && !device.is_cuda())
    throw Error("distributed.backend: nccl needs device: cuda; use gloo on the CPU");
#ifndef USE_C10D_NCCL
  if (backend == "nccl")
    throw Error("distributed.backend: nccl, but this LibTorch has no NCCL (a CPU build); use gloo");
#endif
#ifndef LINEARNEXUS_HAS_GLOO
  if (backend == "gloo" || (backend == "auto" && !device.is_cuda()))
    throw Error(
        "distributed.backend: gloo, but this build has no Gloo headers (install libgloo-dev and rebuild); "
        "on CUDA use nccl");
#endif
}

namespace {
// The store and the process group, made on a thread of their own: a peer that is not a c10d store
// (another program on MASTER_PORT that accepts and never answers) blocks the store's handshake
// beyond any timeout of its own, so the caller waits for this at most distributed.timeout_sec.
struct Rendezvous {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr error;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<C10dGroup> group;
};

void meet(Rendezvous& r, const LaunchEnv& env, const std::string& backend, const at::Device& device,
          std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<uint16_t>(env.master_port);
  opts.isServer = env.rank == 0;
  opts.numWorkers = static_cast<size_t>(env.world_size);
  opts.waitWorkers = true;
  opts.timeout = timeout;
  r.store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, opts);
  if (backend == "nccl") {
#ifdef USE_C10D_NCCL
    auto o = c10d::ProcessGroupNCCL::Options::create();
    o->timeout = timeout;
    r.group = c10::make_intrusive<c10d::ProcessGroupNCCL>(r.store, env.rank, env.world_size, o);
#endif
  } else {
#ifdef LINEARNEXUS_HAS_GLOO
    auto o = c10d::ProcessGroupGloo::Options::create(timeout);
    o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    r.group = c10::make_intrusive<c10d::ProcessGroupGloo>(r.store, env.rank, env.world_size, o);
#endif
  }
  (void)device;
}
}  // namespace

Distributed::Distributed(const LaunchEnv& env, const std::string& backend, double timeout_sec, const at::Device& device)
    : env_(env), device_(device), group_(std::make_unique<ProcessGroupHandle>()) {
  backend_ = backend == "auto" ? (device.is_cuda() ? "nccl" : "gloo") : backend;
#ifdef USE_C10D_NCCL
  // This rank's GPU becomes the current one, so code that names no index (kernels, handles,
  // NCCL's communicator) lands there rather than on GPU 0.
  if (device.is_cuda() && device.has_index()) c10::cuda::set_device(device.index());
#endif
  if (backend_ == "nccl" && !device.is_cuda())
    throw Error("distributed.backend: nccl needs device: cuda; use gloo on the CPU");
#ifndef USE_C10D_NCCL
  if (backend_ == "nccl")
    throw Error("distributed.backend: nccl, but this LibTorch has no NCCL (a CPU build); use gloo");
#endif
#ifndef LINEARNEXUS_HAS_GLOO
  if (backend_ == "gloo")
    throw Error(
        "distributed.backend: gloo, but this build has no Gloo headers (install libgloo-dev and rebuild); "
        "on CUDA use nccl");
#endif
  group_->timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_sec * 1000));
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  const std::string what_to_check =
      "is MASTER_ADDR:MASTER_PORT rank 0's address and a port nothing else listens on, is rank 0 running, and can this "
      "machine reach it (a firewall)? did another rank fail to start?";
  auto r = std::make_shared<Rendezvous>();
  // Detached: on a timeout it may stay blocked in a socket call, which the process's exit ends.
  std::thread([r, env, backend = backend_, device, timeout = group_->timeout] {
    try {
      meet(*r, env, backend, device, timeout);
    } catch (...) {
      r->error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(r->mu);
    r->done = true;
    r->cv.notify_all();
  }).detach();
  {
    std::unique_lock<std::mutex> lock(r->mu);
    // The store waits up to the timeout for the others, then the group's own handshake: both fit
    // in twice the timeout, plus a moment.
    if (!r->cv.wait_for(lock, 2 * group_->timeout + std::chrono::seconds(5), [&] { return r->done; }))
      throw Error("distributed: rank " + std::to_string(env.rank) + " could not meet the others at " + where +
                  " within " + "distributed.timeout_sec = " + std::to_string(group_->timeout.count() / 1000) +
                  " s (no answer from a " + "c10d store there): " + what_to_check);
  }
  if (r->error) {
    try {
      std::rethrow_exception(r->error);
    } catch (const std::exception& e) {
      const std::string msg = e.what();
      throw Error("distributed: rank " + std::to_string(env.rank) + " could not meet the others at " + where + " (" +
                  msg.substr(0, msg.find('\n')) + "): " + what_to_check);
    }
  }
  group_->store = r->store;
  group_->group = r->group;
  log_info("distributed: rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) + " (" + backend_ +
           ", " + device.str() + ")");
}

void Distributed::agree(const std::vector<std::pair<std::string, std::string>>& entries, const std::string& what) {
  // Rank 0's entries go through the store (a few KB: the whole list rather than a hash of it, so
  // that a difference can be named); each rank compares its own, and one all-reduce (MIN over the
  // ranks that differ) tells every rank the first one that does, so all of them refuse together.
  const std::string prefix = "linearnexus/agree/" + what + "/";
  auto encode = [](const std::vector<std::pair<std::string, std::string>>& list) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& [k, v] : list) j.push_back({k, v});
    const std::string text = j.dump();
    return std::vector<uint8_t>(text.begin(), text.end());
  };
  try {
    if (env_.rank == 0) group_->store->set(prefix + "0", encode(entries));
    const auto bytes = group_->store->get(prefix + "0");
    const auto theirs = nlohmann::json::parse(std::string(bytes.begin(), bytes.end()));
    std::string diff;
    for (size_t i = 0; diff.empty() && i < std::max(entries.size(), theirs.size()); ++i) {
      const std::string mine_key = i < entries.size() ? entries[i].first : "";
      const std::string their_key = i < theirs.size() ? theirs[i][0].get<std::string>() : "";
      const std::string key = mine_key.empty() ? their_key : mine_key;
      const std::string mine = i < entries.size() ? entries[i].second : "(absent)";
      const std::string zero =
          mine_key == their_key && i < theirs.size() ? theirs[i][1].get<std::string>() : "(absent)";
      if (mine_key != their_key || mine != zero)
        diff = key + " is " + mine + " on rank " + std::to_string(env_.rank) + " but " + zero + " on rank 0";
    }
    if (!diff.empty())
      group_->store->set(prefix + "diff/" + std::to_string(env_.rank), std::vector<uint8_t>(diff.begin(), diff.end()));
    std::vector<at::Tensor> first{at::full({1}, diff.empty() ? env_.world_size : env_.rank,
                                           at::TensorOptions().dtype(at::kLong).device(device_))};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::MIN;
    auto work = group_->group->allreduce(first, opts);
    group_->wait(work, "start-up check");
    const int64_t r = first[0].item<int64_t>();
    if (r >= env_.world_size) return;
    const auto d = r == env_.rank ? std::vector<uint8_t>(diff.begin(), diff.end())
                                  : group_->store->get(prefix + "diff/" + std::to_string(r));
    throw Error("distributed: rank " + std::to_string(r) + " was started with another " + what +
                " than rank 0: " + std::string(d.begin(), d.end()) +
                "; start every rank with the same experiment file, --set options, data " + "and checkpoints");
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    throw Error("distributed: the ranks could not compare their " + what + " (" + msg.substr(0, msg.find('\n')) +
                "; another rank died or stopped answering within distributed.timeout_sec = " +
                std::to_string(group_->timeout.count() / 1000) + " s)");
  }
}

namespace {
const char* kStopKey = "linearnexus/stop_after";
int64_t parse_stop(const std::vector<uint8_t>& v, int* sig) {
  const std::string text(v.begin(), v.end());
  const auto space = text.find(' ');
  if (sig && space != std::string::npos) *sig = std::atoi(text.c_str() + space + 1);
  return std::atoll(text.c_str());
}
}  // namespace

int64_t Distributed::propose_stop(int64_t completed, int sig, int* agreed_sig) {
  const std::string mine = std::to_string(completed) + " " + std::to_string(sig);
  try {
    // compareSet against "" sets the key only when no rank has yet, and answers what it holds.
    const auto v = group_->store->compareSet(kStopKey, {}, std::vector<uint8_t>(mine.begin(), mine.end()));
    return parse_stop(v, agreed_sig);
  } catch (const std::exception& e) {
    throw Error(std::string("distributed: cannot tell the other ranks to stop (") + e.what() +
                "); another rank died or stopped answering");
  }
}

int64_t Distributed::agreed_stop(int* agreed_sig) {
  try {
    if (!group_->store->check({kStopKey})) return -1;
    return parse_stop(group_->store->get(kStopKey), agreed_sig);
  } catch (const std::exception& e) {
    throw Error(std::string("distributed: cannot reach the ranks' store (") + e.what() +
                "); another rank died or stopped answering");
  }
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
    at::Tensor flat;  // [numel of its parameters], fp32
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

GradientSync::GradientSync(std::shared_ptr<Distributed> dist, const std::vector<NamedParameter>& params,
                           double bucket_mb)
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
      if (g.defined())
        dst.copy_(g.reshape({-1}));
      else
        dst.zero_();
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
      if (p.grad().defined())
        p.mutable_grad().copy_(mean);
      else
        p.mutable_grad() = mean.clone();
    }
  }
}

}  // namespace linearnexus
