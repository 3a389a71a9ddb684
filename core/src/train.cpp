// What every optimizer and trainer shares: grouping rules, the lr schedule, clipping, the loss,
// and the run bookkeeping (metrics, progress, evaluation, checkpoints, resume).
#include "linearnexus/trainer.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/plugin_host.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

// ---- optimizer helpers ------------------------------------------------------------------------

void Optimizer::zero_grad(const std::vector<NamedParameter>& params) const {
  for (const auto& p : params)
    if (p.param.grad().defined()) p.param.mutable_grad().reset();
}

bool default_no_decay(const NamedParameter& p) {
  const auto& n = p.name;
  return p.param.dim() < 2 || n.find("norm") != std::string::npos || n.find("wte") != std::string::npos ||
         n.find("embed") != std::string::npos || (n.size() >= 4 && n.compare(n.size() - 4, 4, "bias") == 0);
}

bool glob_match(const std::string& pat, const std::string& s) {
  size_t p = 0, t = 0, star = std::string::npos, mark = 0;
  while (t < s.size()) {
    if (p < pat.size() && (pat[p] == '?' || pat[p] == s[t])) {
      ++p, ++t;
    } else if (p < pat.size() && pat[p] == '*') {
      star = p++, mark = t;
    } else if (star != std::string::npos) {
      p = star + 1, t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

bool glob_match_any(const std::vector<std::string>& patterns, const std::string& text) {
  for (const auto& pat : patterns)
    if (glob_match(pat, text)) return true;
  return false;
}

bool in_decay_group(const NamedParameter& p, const std::vector<std::string>& decay,
                    const std::vector<std::string>& no_decay) {
  bool d = !default_no_decay(p);
  if (glob_match_any(decay, p.name)) d = true;
  if (glob_match_any(no_decay, p.name)) d = false;
  return d;
}

void adamw_update(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& m, const at::Tensor& v,
                  int64_t step, double lr, double b1, double b2, double eps, double wd) {
  torch::NoGradGuard g;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(step)));
  auto p = param;  // a handle: the updates below are in place
  if (wd != 0) p.mul_(1.0 - lr * wd);
  m.mul_(b1).add_(grad, 1.0 - b1);
  v.mul_(b2).addcmul_(grad, grad, 1.0 - b2);
  auto denom = (v.sqrt() / bc2_sqrt).add_(eps);
  p.addcdiv_(m, denom, -lr / bc1);
}

const at::Tensor& optimizer_state_at(const TensorMap& state, const std::string& key, const std::string& optimizer) {
  auto it = state.find(key);
  if (it == state.end())
    throw Error("checkpoint has no " + optimizer + " state '" + key + "' (saved by another optimizer?)");
  return it->second;
}

MomentSlots::MomentSlots(const std::vector<NamedParameter>& params, const Params& p, std::string optimizer,
                         std::string first_key, std::string second_key)
    : optimizer_(std::move(optimizer)), first_key_(std::move(first_key)), second_key_(std::move(second_key)) {
  const auto &decay = p.get_string_list("decay"), &no_decay = p.get_string_list("no_decay");
  for (const auto& np : params)
    slots_.push_back({np, in_decay_group(np, decay, no_decay), at::zeros_like(np.param), at::zeros_like(np.param)});
}

void MomentSlots::save(TensorMap& out) const {
  for (const auto& s : slots_) {
    out[s.np.name + "." + first_key_] = s.first;
    out[s.np.name + "." + second_key_] = s.second;
  }
}

void MomentSlots::load(const TensorMap& st) {
  torch::NoGradGuard g;
  for (auto& s : slots_) {
    s.first.copy_(optimizer_state_at(st, s.np.name + "." + first_key_, optimizer_));
    s.second.copy_(optimizer_state_at(st, s.np.name + "." + second_key_, optimizer_));
  }
}

Schema MomentSlots::schema_keys(const std::string& default_weight_decay) {
  return {{"weight_decay", ParamType::Float, default_weight_decay, "decoupled weight decay on the decay group"},
          {"no_decay", ParamType::StringList, "[]", "extra parameter-name globs without weight decay"},
          {"decay", ParamType::StringList, "[]",
           "parameter-name globs forced into the decay group (default: 2-D weights except embeddings and norms)"}};
}

std::string MomentSlots::describe(double weight_decay) const {
  int64_t n[2] = {0, 0}, t[2] = {0, 0};
  for (const auto& s : slots_) n[s.decay] += s.np.param.numel(), t[s.decay] += 1;
  std::ostringstream o;
  o << "decay group: " << t[1] << " tensors, " << n[1] << " parameters (weight_decay " << weight_decay
    << "); no-decay group: " << t[0] << " tensors, " << n[0] << " parameters";
  return o.str();
}

double lr_multiplier(int64_t step, int64_t warmup, int64_t max_steps, const std::string& decay, double min_ratio) {
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  if (decay == "constant" || max_steps <= warmup) return 1.0;
  double progress = static_cast<double>(step - warmup) / static_cast<double>(max_steps - warmup);
  progress = std::min(1.0, std::max(0.0, progress));
  double shape = decay == "linear" ? 1.0 - progress : 0.5 * (1.0 + std::cos(M_PI * progress));
  return min_ratio + (1.0 - min_ratio) * shape;
}

at::Tensor clip_grad_norm(const std::vector<NamedParameter>& params, double max_norm) {
  std::vector<at::Tensor> norms;
  for (const auto& p : params)
    if (p.param.grad().defined()) norms.push_back(p.param.grad().detach().to(at::kFloat).norm().reshape({1}));
  if (norms.empty()) return at::zeros({});
  auto total = at::cat(norms).norm();
  if (max_norm > 0) {
    // Multiply by min(1, max/total) always: no branch on the value, so no device sync.
    auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    for (const auto& p : params)
      if (p.param.grad().defined()) p.param.mutable_grad().mul_(coef.to(p.param.grad().scalar_type()));
  }
  return total;
}

at::Tensor to_device(const at::Tensor& t, const at::Device& device) {
  if (!device.is_cuda() || t.device() == device) return t.to(device);
  return t.pin_memory().to(device, /*non_blocking=*/true);
}

at::Tensor lm_loss(const at::Tensor& logits, const at::Tensor& targets) {
  // logits: [B, T, V], targets: [B, T]
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, logits.size(-1)}).to(at::kFloat), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-1));
}

namespace {
// The LM head and cross-entropy as one autograd node, over row chunks of ~32 MB of logits. Each
// chunk's logits, log-sum-exp, loss and gradient (softmax - one-hot) are computed in forward and
// the chunk is dropped; backward only scales the gradients kept. Against matmul + cross_entropy
// this never holds [N, V] logits, their log-softmax and their gradient (3 x 200 MB at N = 1024,
// V = 50257), whose first-touch page faults and extra passes cost more than the matmuls on a CPU.
struct LinearCrossEntropy : public torch::autograd::Function<LinearCrossEntropy> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h,
                                                const at::Tensor& W, const at::Tensor& targets, bool with_grad) {
    // h: [N, C], W: [V, C], targets: [N] (-1 = no loss)
    const int64_t N = h.size(0), V = W.size(0);
    const int64_t rows = std::max<int64_t>(16, (int64_t{8} << 20) / std::max<int64_t>(V, 1));
    auto Wc = W.to(h.scalar_type());                                               // no-op unless mixed
    auto valid = targets.ne(-1);
    auto count = valid.sum().clamp_min(1).to(at::kFloat);  // a tensor: no device sync
    auto loss = at::zeros({}, h.options().dtype(at::kFloat));
    at::Tensor grad_h, grad_W;
    if (with_grad) {
      grad_h = at::empty_like(h);
      grad_W = at::zeros(W.sizes(), W.options().dtype(at::kFloat));
    }
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
      const int64_t n = std::min(rows, N - r0);
      auto hc = h.narrow(0, r0, n), tc = targets.narrow(0, r0, n).clamp_min(0).unsqueeze(1);
      auto mask = valid.narrow(0, r0, n).to(at::kFloat).unsqueeze(1);            // [n, 1]
      auto logits = at::matmul(hc, Wc.t()).to(at::kFloat);                         // [n, V]
      auto lse = at::logsumexp(logits, 1, true);                                   // [n, 1]
      loss += ((lse - logits.gather(1, tc)) * mask).sum();
      if (!with_grad) continue;
      auto g = logits.sub_(lse).exp_();                                            // softmax, in place
      g.scatter_add_(1, tc, -at::ones({n, 1}, g.options())).mul_(mask);            // - one-hot; no-loss rows 0
      grad_h.narrow(0, r0, n).copy_(at::matmul(g.to(Wc.scalar_type()), Wc));
      grad_W.addmm_(g.t(), hc.to(at::kFloat));
    }
    if (with_grad) ctx->save_for_backward({grad_h.div_(count.to(grad_h.scalar_type())), grad_W.div_(count)});
    return {loss / count};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& go = grads[0];
    return {saved[0] * go.to(saved[0].scalar_type()), (saved[1] * go).to(saved[1].scalar_type()), at::Tensor(),
            at::Tensor()};
  }
};
}  // namespace

at::Tensor lm_head_loss(const at::Tensor& hidden, const at::Tensor& head_weight, const at::Tensor& targets) {
  // hidden: [B, T, C], head_weight: [V, C], targets: [B, T]
  const bool with_grad = at::GradMode::is_enabled() && (hidden.requires_grad() || head_weight.requires_grad());
  return LinearCrossEntropy::apply(hidden.reshape({-1, hidden.size(-1)}), head_weight, targets.reshape({-1}),
                                   with_grad)[0];
}

at::Tensor LMModel::next_token_loss(const at::Tensor& idx, const at::Tensor& targets) {
  auto h = forward_hidden(idx);
  // On CUDA the bf16 head on the padded weight plus cross_entropy is what was measured and tested
  // (docs/benchmarks.md); the chunked head is the CPU's answer to page faults and extra passes.
  if (h.is_cuda()) return lm_loss(lm_logits(h), targets);
  return lm_head_loss(h, head_weight(), targets);
}

at::Tensor sampled_label_loss(const at::Tensor& logits) {
  const int64_t V = logits.size(-1);
  auto flat = logits.reshape({-1, V}).to(at::kFloat);
  at::Tensor labels;
  {
    torch::NoGradGuard g;
    labels = at::multinomial(at::softmax(flat.detach(), -1), 1).reshape({-1});
  }
  return torch::nn::functional::cross_entropy(flat, labels);
}

// ---- TrainingRun ------------------------------------------------------------------------------

namespace {
std::string human_duration(double seconds) {
  char buf[32];
  long s = static_cast<long>(seconds + 0.5);
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}
}  // namespace

TrainingRun::TrainingRun(TrainContext& ctx) : ctx_(ctx) {
  const Params& t = ctx.experiment->trainer;
  max_steps_ = t.get_int("max_steps");
  last_step_ = t.get_int("stop_after") > 0 ? std::min(max_steps_, t.get_int("stop_after")) : max_steps_;
  log_every_ = std::max<int64_t>(1, t.get_int("log_every"));
  eval_every_ = t.get_int("eval_every");
  save_every_ = t.get_int("save_every");
  ckpt_ = std::make_unique<CheckpointManager>(ctx.out_dir, t.get_int("keep_last_n"));
  t_start_ = t_last_log_ = std::chrono::steady_clock::now();
}

TrainingRun::~TrainingRun() = default;

const Params& TrainingRun::trainer_params() const { return ctx_.experiment->trainer; }

int64_t TrainingRun::resume(TensorMap* extra) {
  const std::string mode = trainer_params().get_string("resume");
  const fs::path metrics_path = fs::path(ctx_.out_dir) / "metrics.jsonl";
  std::string file;
  if (mode.empty()) {
    if (ckpt_->latest())
      throw Error("trainer.out_dir '" + ctx_.out_dir + "' already holds checkpoints; set trainer.resume: auto " +
                  "(or --set trainer.resume=auto) to continue that run, or choose another out_dir");
  } else if (mode == "auto") {
    if (auto l = ckpt_->latest()) file = *l;
    else log_info("resume: auto found no checkpoint in " + ctx_.out_dir + "; starting fresh");
  } else {
    file = resolve_checkpoint(mode);
  }
  start_step_ = 0;
  if (!file.empty()) {
    auto ck = load_safetensors(file);
    load_model_tensors(*ctx_.model, ck.tensors, file);
    TensorMap optim, rest;
    for (const auto& [k, v] : ck.tensors) {
      if (k.rfind("optim.", 0) == 0) optim[k.substr(6)] = v.to(ctx_.device);
      if (extra && k.rfind("extra.", 0) == 0) (*extra)[k.substr(6)] = v;
    }
    ctx_.optimizer->load_state_dict(optim);
    if (ck.tensors.count("rng.cpu")) set_rng_state(ck.tensors.at("rng.cpu"));
    if (ctx_.device.is_cuda() && ck.tensors.count("rng.cuda")) set_rng_state(ck.tensors.at("rng.cuda"), ctx_.device);
    start_step_ = std::stoll(ck.metadata.at("step"));
    log_info("resumed from " + file + " at step " + std::to_string(start_step_));
  } else if (const std::string init = trainer_params().get_string("init_from"); !init.empty()) {
    // A fresh run from another run's weights: the model only, a new optimizer and step 0.
    const std::string init_file = resolve_checkpoint(init);
    load_model_tensors(*ctx_.model, load_safetensors(init_file).tensors, init_file);
    log_info("initialised the model from " + init_file);
  }
  // Drop metric lines past the resumed step (an interrupted run may have logged beyond its last
  // checkpoint), so metrics.jsonl reads as one uninterrupted run.
  if (fs::exists(metrics_path)) {
    std::ifstream in(metrics_path);
    std::string kept, line;
    while (std::getline(in, line)) {
      try {
        if (!line.empty() && json::parse(line).value("step", int64_t{0}) <= start_step_) kept += line + "\n";
      } catch (const std::exception&) {  // a torn last line from a crash: drop it
      }
    }
    in.close();
    std::ofstream(metrics_path, std::ios::trunc) << kept;
  }
  metrics_.open(metrics_path, std::ios::app);
  if (!metrics_) throw Error("cannot write " + metrics_path.string());
  t_start_ = t_last_log_ = std::chrono::steady_clock::now();
  return start_step_;
}

double TrainingRun::begin_step(int64_t step) {
  const Params& s = ctx_.experiment->schedule;
  const double base = ctx_.optimizer->base_lr();
  const double min_ratio = base > 0 ? s.get_float("min_lr") / base : 0.0;
  ctx_.optimizer->set_lr_multiplier(
      lr_multiplier(step, s.get_int("warmup_steps"), max_steps_, s.get_string("decay"), min_ratio));
  last_lr_ = ctx_.optimizer->current_lr();
  return last_lr_;
}

bool TrainingRun::is_eval_step(int64_t step) const {
  return (eval_every_ > 0 && (step + 1) % eval_every_ == 0) || step + 1 == max_steps_;
}

bool TrainingRun::is_log_step(int64_t step) const {
  return (step + 1) % log_every_ == 0 || step + 1 == last_step_ || is_eval_step(step);
}

Batch TrainingRun::train_batch(int64_t step, int64_t micro) const {
  const Experiment& e = *ctx_.experiment;
  BatchSpec spec;
  spec.batch_size = e.trainer.get_int("batch_size");
  spec.seq_len = e.data.get_int("seq_len");
  spec.seed = static_cast<uint64_t>(e.top.get_int("seed"));
  spec.sampling = parse_sampling(e.data.get_string("sampling"));
  spec.micro_steps = std::max<int64_t>(1, e.trainer.get_int("grad_accum"));
  return get_batch(*ctx_.data.train, spec, step, micro);
}

double TrainingRun::evaluate_lm() {
  const Params& data = ctx_.experiment->data;
  const int64_t n = trainer_params().get_int("eval_batches"), B = trainer_params().get_int("batch_size");
  const int64_t T = data.get_int("seq_len");
  const uint64_t seed = static_cast<uint64_t>(ctx_.experiment->top.get_int("seed")) ^ 0x5eed5eedull;
  torch::NoGradGuard g;
  const bool was_training = ctx_.model->is_training();
  ctx_.model->eval();
  at::Tensor total = at::zeros({}, at::TensorOptions().device(ctx_.device));
  for (int64_t i = 0; i < n; ++i) {
    Batch b = get_batch(*ctx_.data.val, B, T, seed, i, 0);
    total += ctx_.model->next_token_loss(to_device(b.x, ctx_.device), to_device(b.y, ctx_.device));
  }
  if (was_training) ctx_.model->train();
  return total.item<double>() / static_cast<double>(std::max<int64_t>(n, 1));
}

void TrainingRun::write_metrics(const std::map<std::string, double>& m) {
  json j = json::object();
  for (const auto& [k, v] : m) {
    if (k == "step") j[k] = static_cast<int64_t>(v);
    else j[k] = v;
  }
  metrics_ << j.dump() << "\n";
  metrics_.flush();
}

void TrainingRun::end_step(int64_t step, const MetricsFn& metrics, int64_t tokens, const TensorMap& extra) {
  tokens_since_log_ += tokens;
  ++steps_since_log_;
  if (is_log_step(step)) {
    auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - t_last_log_).count();
    std::map<std::string, double> m = metrics ? metrics() : std::map<std::string, double>{};
    m["step"] = static_cast<double>(step + 1);
    m["lr"] = last_lr_;
    m["tokens_per_sec"] = dt > 0 ? static_cast<double>(tokens_since_log_) / dt : 0.0;
    m["ms_per_step"] = 1000.0 * dt / static_cast<double>(steps_since_log_);
    m["elapsed_sec"] = std::chrono::duration<double>(now - t_start_).count();
    write_metrics(m);
    std::ostringstream line;
    char buf[256];
    std::snprintf(buf, sizeof buf, "step %lld/%lld", static_cast<long long>(step + 1), static_cast<long long>(max_steps_));
    line << buf;
    for (const auto& [k, v] : m) {
      if (k == "step" || k == "lr" || k == "tokens_per_sec" || k == "ms_per_step" || k == "elapsed_sec") continue;
      std::snprintf(buf, sizeof buf, " | %s %.4f", k.c_str(), v);
      line << buf;
    }
    std::snprintf(buf, sizeof buf, " | lr %.2e | %.0f tok/s | %.1f ms/step | ETA %s", last_lr_, m["tokens_per_sec"],
                  m["ms_per_step"], human_duration(m["ms_per_step"] / 1000.0 * static_cast<double>(max_steps_ - step - 1)).c_str());
    line << buf;
    log_info(line.str());
    t_last_log_ = now;
    tokens_since_log_ = steps_since_log_ = 0;
  }
  if ((save_every_ > 0 && (step + 1) % save_every_ == 0) || step + 1 == last_step_) save(step + 1, extra);
}

void TrainingRun::save(int64_t completed_steps, const TensorMap& extra) {
  TensorMap t = model_tensors(*ctx_.model);
  for (const auto& [k, v] : ctx_.optimizer->state_dict()) t["optim." + k] = v;
  for (const auto& [k, v] : extra) t["extra." + k] = v;
  t["rng.cpu"] = rng_state();
  if (ctx_.device.is_cuda()) t["rng.cuda"] = rng_state(ctx_.device);
  // Which plugin (and version) made each piece of the model, for checks when loading elsewhere.
  json plugins = json::object();
  const Registry& reg = ctx_.host->registry();
  for (const auto& kind : ctx_.model->config().block_pattern)
    if (const auto* r = reg.find(PluginKind::Block, kind))
      plugins["block:" + kind] = {{"plugin", r->origin.plugin_name}, {"version", r->origin.plugin_version}};
  Metadata meta = {{"format", "linearnexus-checkpoint-1"},
                   {"step", std::to_string(completed_steps)},
                   {"config", ctx_.experiment->resolved_yaml},
                   {"tokenizer", ctx_.data.tokenizer->to_json()},
                   {"plugins", plugins.dump()}};
  const std::string file = ckpt_->save(completed_steps, t, meta);
  log_info("saved " + file);
}

}  // namespace linearnexus
