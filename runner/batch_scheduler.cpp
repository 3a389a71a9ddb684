// The scheduler thread of `linearnexus serve` (batch_scheduler.h): rounds of batched decoding and
// the per-row text each job's reader sees.
#include "batch_scheduler.h"

#include <algorithm>

#include "linearnexus/error.h"
#include "linearnexus/host/generator.h"
#include "linearnexus/log.h"
#include "linearnexus/model.h"
#include "linearnexus/tokenizer.h"

namespace linearnexus {

// ---- Ticket -----------------------------------------------------------------------------------------

void Ticket::push(JobEvent event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (rows_left_ < 0) rows_left_ = static_cast<int64_t>(job.rows.size());
    if (!event.error.empty())
      failed_ = true;
    else if (!event.finish_reason.empty())
      --rows_left_;
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
}

bool Ticket::next(JobEvent* event) {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait(lock, [&] { return !events_.empty() || rows_left_ == 0 || failed_; });
  if (events_.empty()) return false;
  *event = std::move(events_.front());
  events_.pop_front();
  return true;
}

// ---- the text of one row ----------------------------------------------------------------------------

namespace {
// Bytes at the end of `text` that may be the start of a stop string: not sent until the next token
// tells whether the stop string follows (then they are cut, as OpenAI cuts a stop sequence).
size_t stop_prefix_at_end(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& stop : stops)
    for (size_t k = std::min(stop.size() - 1, text.size()); k > hold; --k)
      if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}

// Bytes at the end of `text` that open a UTF-8 sequence the next token completes (a byte-level
// tokenizer splits characters across tokens); sent together with the rest of their character.
size_t incomplete_utf8_at_end(const std::string& text) {
  for (size_t i = 1; i <= std::min<size_t>(3, text.size()); ++i) {
    const auto c = static_cast<unsigned char>(text[text.size() - i]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back for the lead
    if (c < 0xC0) return 0;            // ASCII
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    return need > i ? i : 0;
  }
  return 0;
}
}  // namespace

struct BatchScheduler::RowState {
  Ticket* ticket = nullptr;
  int64_t row = 0;   // the row's index in its job
  std::string text;  // everything decoded so far (cut at a stop string)
  size_t sent = 0;   // bytes of text already in events
  int64_t tokens = 0;
  bool finished = false;

  // An event with the text that can be sent now (all of it when finishing).
  void flush(const std::string& finish_reason) {
    size_t end = text.size();
    if (finish_reason.empty())
      end -= std::min(text.size() - sent,
                      std::max(stop_prefix_at_end(text, ticket->job.stop), incomplete_utf8_at_end(text)));
    if (end == sent && finish_reason.empty()) return;
    JobEvent e;
    e.row = row;
    e.text = text.substr(sent, end - sent);
    e.finish_reason = finish_reason;
    e.tokens = tokens;
    sent = end;
    if (!finish_reason.empty()) finished = true;
    ticket->push(std::move(e));
  }

  // One new token: false when the row ends here.
  bool add(int64_t token, const Tokenizer& tokenizer) {
    const Job& job = ticket->job;
    ++tokens;
    if (token == job.eos_id) {  // end of turn: counted, never shown
      flush("stop");
      return false;
    }
    const size_t before = text.size();
    text += tokenizer.decode({token});
    // The earliest stop string that ends in the new bytes.
    size_t cut = std::string::npos;
    for (const auto& stop : job.stop) {
      const size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
      cut = std::min(cut, text.find(stop, from));
    }
    if (cut != std::string::npos) {
      text.resize(cut);
      flush("stop");
      return false;
    }
    if (tokens >= job.rows[static_cast<size_t>(row)].max_tokens) {
      flush("length");
      return false;
    }
    flush("");
    return true;
  }
};

// ---- the scheduler ----------------------------------------------------------------------------------

BatchScheduler::BatchScheduler(const LMModel& model, const Registry& registry, const Tokenizer& tokenizer,
                               int64_t max_batch)
    : tokenizer_(tokenizer),
      max_batch_(max_batch),
      context_(model.config().dims.max_seq_len),
      generator_(std::make_unique<DecodeGenerator>(model, registry)) {
  thread_ = std::thread([this] { loop(); });
}

BatchScheduler::~BatchScheduler() { stop(); }

std::shared_ptr<Ticket> BatchScheduler::submit(Job job) {
  auto ticket = std::make_shared<Ticket>(std::move(job));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) throw Error("the server is shutting down");
    waiting_.push_back(ticket);
  }
  cv_.notify_all();
  return ticket;
}

void BatchScheduler::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

SchedulerStats BatchScheduler::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void BatchScheduler::loop() {
  while (true) {
    auto jobs = take_round();
    if (jobs.empty()) return;  // stopping, nothing left
    run_round(jobs);
  }
}

// The oldest waiting job and every later one that can share its batch: the same sampling settings,
// at most max_batch rows, and the longest prompt plus the largest budget within the context (the
// engine left-pads to the longest prompt and decodes up to the largest budget). The rest wait.
std::vector<std::shared_ptr<Ticket>> BatchScheduler::take_round() {
  std::unique_lock<std::mutex> lock(mutex_);
  std::vector<std::shared_ptr<Ticket>> round;
  while (round.empty()) {
    cv_.wait(lock, [&] { return !waiting_.empty() || stopping_; });
    if (waiting_.empty()) return round;
    for (auto it = waiting_.begin(); it != waiting_.end();) {  // gone before their turn
      if (!(*it)->cancelled()) {
        ++it;
        continue;
      }
      for (size_t r = 0; r < (*it)->job.rows.size(); ++r)
        (*it)->push(JobEvent{static_cast<int64_t>(r), "", "cancelled", 0, ""});
      stats_.cancelled_rows += static_cast<int64_t>((*it)->job.rows.size());
      it = waiting_.erase(it);
    }
    if (waiting_.empty()) continue;
    const Job& first = waiting_.front()->job;
    int64_t rows = 0, longest = 0, budget = 0;
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      const Job& j = (*it)->job;
      int64_t job_longest = longest, job_budget = budget;
      for (const auto& row : j.rows) {
        job_longest = std::max<int64_t>(job_longest, static_cast<int64_t>(row.prompt.size()));
        job_budget = std::max(job_budget, row.max_tokens);
      }
      const bool same = j.temperature == first.temperature && j.top_k == first.top_k && j.top_p == first.top_p &&
                        j.eos_id == first.eos_id;
      const int64_t n = static_cast<int64_t>(j.rows.size());
      if (!same || (!round.empty() && (rows + n > max_batch_ || job_longest + job_budget > context_))) {
        ++it;
        continue;
      }
      rows += n, longest = job_longest, budget = job_budget;
      round.push_back(*it);
      it = waiting_.erase(it);
    }
  }
  stats_.rounds += 1;
  int64_t rows = 0;
  for (const auto& t : round) rows += static_cast<int64_t>(t->job.rows.size());
  stats_.rows += rows;
  stats_.max_rows_in_round = std::max(stats_.max_rows_in_round, rows);
  return round;
}

void BatchScheduler::run_round(const std::vector<std::shared_ptr<Ticket>>& jobs) {
  // Rows of all jobs, in order: prompts [rows][len_i], seeds [rows].
  std::vector<RowState> rows;
  std::vector<std::vector<int64_t>> prompts;
  std::vector<uint64_t> seeds;
  int64_t budget = 0;
  for (const auto& t : jobs)
    for (size_t r = 0; r < t->job.rows.size(); ++r) {
      RowState s;
      s.ticket = t.get();
      s.row = static_cast<int64_t>(r);
      rows.push_back(std::move(s));
      prompts.push_back(t->job.rows[r].prompt);
      seeds.push_back(t->job.rows[r].seed);
      budget = std::max(budget, t->job.rows[r].max_tokens);
    }
  const Job& first = jobs.front()->job;
  SamplingParams sp;
  sp.temperature = first.temperature;
  sp.top_k = first.top_k;
  sp.top_p = first.top_p;
  sp.eos_id = first.eos_id;
  sp.max_new_tokens = budget;
  int64_t cancelled = 0;
  try {
    generator_->generate_seeded(prompts, sp, seeds, [&](int64_t r, int64_t token) {
      RowState& s = rows[static_cast<size_t>(r)];
      if (s.finished) return false;
      if (s.ticket->cancelled()) {  // the client went away: free the row now
        log_info("serve: a client went away after " + std::to_string(s.tokens) + " of at most " +
                 std::to_string(s.ticket->job.rows[static_cast<size_t>(s.row)].max_tokens) + " tokens; its row stops");
        ++cancelled;
        s.flush("cancelled");
        return false;
      }
      return s.add(token, tokenizer_);
    });
    for (auto& s : rows)
      if (!s.finished) s.flush("length");
  } catch (const std::exception& e) {
    const std::string what = error_text(e);
    log_warn("serve: a batch of " + std::to_string(rows.size()) + " rows failed: " + what);
    for (const auto& t : jobs) t->push(JobEvent{0, "", "", 0, what});
  }
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.cancelled_rows += cancelled;
}

}  // namespace linearnexus
