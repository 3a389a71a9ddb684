// A training run's metrics and progress line (run_log.h).
#include "linearnexus/host/run_log.h"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <sstream>

#include "linearnexus/host/config.h"
#include "linearnexus/host/tensorboard.h"
#include "linearnexus/log.h"

namespace linearnexus {

namespace {
std::string human_duration(double seconds) {
  char buf[32];
  long s = static_cast<long>(seconds + 0.5);
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

// The metrics the progress line shows in its own format, after the trainer's.
bool is_throughput_key(const std::string& k) {
  return k == "step" || k == "lr" || k == "tokens_per_sec" || k == "ms_per_step" || k == "elapsed_sec" || k == "mfu";
}
}  // namespace

RunLog::RunLog(const Experiment& experiment, std::string out_dir, bool main_rank)
    : experiment_(experiment), out_dir_(std::move(out_dir)), main_(main_rank) {}

RunLog::~RunLog() = default;

void RunLog::start(int64_t start_step, const std::string& resumed_config) {
  start_step_ = start_step;
  t_start_ = std::chrono::steady_clock::now();
  if (!main_) return;
  const TrainerSettings& t = experiment_.trainer;
  if (!resumed_config.empty()) {
    int64_t saved = t.max_steps;
    try {
      saved = YAML::Load(resumed_config)["trainer"]["max_steps"].as<int64_t>();
    } catch (const std::exception&) {  // a checkpoint's config is validated when read; nothing to compare
    }
    if (saved != t.max_steps)
      log_warn(
          "trainer.max_steps is " + std::to_string(t.max_steps) + " now and was " + std::to_string(saved) +
          " when the checkpoint was saved: the lr schedule (warmup, decay to schedule.min_lr at max_steps) changes "
          "from step " +
          std::to_string(start_step + 1) + " on, so this run is not the one a single run of " +
          std::to_string(t.max_steps) + " steps would have been");
  }
  if (t.jsonl) jsonl_.open(out_dir_, start_step);
  if (t.tensorboard) {
    tensorboard_ = std::make_unique<TensorBoardWriter>(out_dir_);
    // TensorBoard keeps what earlier files logged before this step and drops the rest: the steps
    // after the checkpoint, which this run logs again (metrics.jsonl is cut the same way).
    if (start_step > 0) tensorboard_->add_session_start(start_step + 1);
    tensorboard_->add_text(start_step == 0 ? 0 : start_step + 1, "experiment", experiment_.resolved_yaml);
  }
}

void RunLog::write(const std::map<std::string, double>& m) {
  if (!main_) return;
  const int64_t step = static_cast<int64_t>(m.count("step") ? m.at("step") : 0);
  if (jsonl_.is_open()) {
    nlohmann::json j = nlohmann::json::object();
    for (const auto& [k, v] : m) {
      if (k == "step")
        j[k] = step;
      else
        j[k] = v;
    }
    j["time"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    jsonl_.append(j.dump() + "\n");
  }
  if (tensorboard_) {
    std::map<std::string, double> scalars = m;
    scalars.erase("step");
    tensorboard_->add_scalars(step, scalars);
  }
}

void RunLog::print(const std::map<std::string, double>& m) const {
  if (!main_) return;
  const int64_t step = static_cast<int64_t>(m.count("step") ? m.at("step") : 0),
                max_steps = experiment_.trainer.max_steps;
  std::ostringstream line;
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %lld/%lld", static_cast<long long>(step), static_cast<long long>(max_steps));
  line << buf;
  for (const auto& [k, v] : m) {
    if (is_throughput_key(k)) continue;
    std::snprintf(buf, sizeof buf, " | %s %.4f", k.c_str(), v);
    line << buf;
  }
  if (m.count("lr")) {
    std::snprintf(buf, sizeof buf, " | lr %.2e", m.at("lr"));
    line << buf;
  }
  if (m.count("tokens_per_sec")) {
    std::snprintf(buf, sizeof buf, " | %.0f tok/s", m.at("tokens_per_sec"));
    line << buf;
  }
  if (m.count("mfu")) {
    std::snprintf(buf, sizeof buf, " | mfu %.1f%%", 100.0 * m.at("mfu"));
    line << buf;
  }
  if (m.count("ms_per_step") && step > start_step_) {
    // The run's average so far, not the last interval's: evaluations and checkpoints recur, and one
    // slow or fast interval should not swing the estimate.
    const double per_step = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start_).count() /
                            static_cast<double>(step - start_step_);
    std::snprintf(buf, sizeof buf, " | %.1f ms/step | ETA %s", m.at("ms_per_step"),
                  human_duration(per_step * static_cast<double>(max_steps - step)).c_str());
    line << buf;
  }
  log_info(line.str());
}

}  // namespace linearnexus
