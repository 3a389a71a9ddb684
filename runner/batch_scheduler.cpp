// The scheduler thread of `linearnexus serve` (batch_scheduler.h): continuous batching on a
// DecodeStream and the per-row text each job's reader sees.
#include "batch_scheduler.h"

#include <algorithm>
#include <set>

#include "linearnexus/error.h"
#include "linearnexus/host/decode_stream.h"
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
  std::shared_ptr<Ticket> ticket;  // held while the row is live (its handler may be gone)
  int64_t row = 0;                 // the row's index in its job
  std::string text;                // everything decoded so far (cut at a stop string)
  size_t sent = 0;                 // bytes of text already in events
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
    waiting_.push_back(Waiting{ticket, 0});
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
  while (wait_for_work()) {
    drop_cancelled_waiting();
    try {
      admit();
      // Rows whose client went away stop now (their rows free up for the waiting ones).
      for (auto it = live_.begin(); it != live_.end();) {
        RowState& s = *it->second;
        if (!s.ticket->cancelled()) {
          ++it;
          continue;
        }
        log_info("serve: a client went away after " + std::to_string(s.tokens) + " of at most " +
                 std::to_string(s.ticket->job.rows[static_cast<size_t>(s.row)].max_tokens) + " tokens; its row stops");
        s.flush("cancelled");
        stream_->cancel(it->first);
        it = live_.erase(it);
        std::lock_guard<std::mutex> lock(mutex_);
        ++stats_.cancelled_rows;
      }
      if (stream_ && !live_.empty()) deliver(stream_->advance());
    } catch (const std::exception& e) {
      fail_live(error_text(e));
    }
  }
}

bool BatchScheduler::wait_for_work() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!live_.empty()) return true;
  cv_.wait(lock, [&] { return !waiting_.empty() || stopping_; });
  return !waiting_.empty();  // stopping: everything queued is served first
}

// Jobs whose client went away: their rows not admitted yet end here (the admitted ones stop with the
// live rows).
void BatchScheduler::drop_cancelled_waiting() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (!it->ticket->cancelled()) {
      ++it;
      continue;
    }
    const size_t rows = it->ticket->job.rows.size();
    for (size_t r = it->next_row; r < rows; ++r)
      it->ticket->push(JobEvent{static_cast<int64_t>(r), "", "cancelled", 0, ""});
    stats_.cancelled_rows += static_cast<int64_t>(rows - it->next_row);
    it = waiting_.erase(it);
  }
}

namespace {
bool same_sampling(const Job& job, const SamplingParams& p) {
  return job.temperature == p.temperature && job.top_k == p.top_k && job.top_p == p.top_p;
}
}  // namespace

void BatchScheduler::admit() {
  // The waiting jobs, in order (only this thread removes from the queue: handlers append).
  std::vector<Waiting*> queue;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& w : waiting_) queue.push_back(&w);
  }
  if (queue.empty()) return;
  if (live_.empty() && (!stream_ || !same_sampling(queue.front()->ticket->job, stream_->params()))) {
    const Job& first = queue.front()->ticket->job;
    SamplingParams sp;
    sp.temperature = first.temperature;
    sp.top_k = first.top_k;
    sp.top_p = first.top_p;
    stream_.reset();  // its cache first: one at a time
    stream_ = std::make_unique<DecodeStream>(*generator_, max_batch_, sp);
  }
  const bool running = !live_.empty();
  int64_t admitted = 0, passed_blocked = 0;
  bool blocked = false;  // an earlier job is still waiting: later ones may pass it, max_batch rows at most
  for (Waiting* w : queue) {
    const Job& job = w->ticket->job;
    if (blocked && passed_blocked >= max_batch_) break;
    if (!same_sampling(job, stream_->params())) {
      blocked = true;
      continue;
    }
    std::vector<StreamRequest> requests;
    for (size_t r = w->next_row; r < job.rows.size(); ++r) {
      StreamRequest q;
      q.id = next_id_ + static_cast<int64_t>(r - w->next_row);
      q.prompt = job.rows[r].prompt;
      q.seed = job.rows[r].seed;
      q.max_new_tokens = job.rows[r].max_tokens;
      requests.push_back(std::move(q));
    }
    int64_t n = 0;
    try {
      n = stream_->admit(requests);
    } catch (const Error& e) {  // a row the engine refuses (the handler checked the context): this job fails
      w->ticket->push(JobEvent{0, "", "", 0, error_text(e)});
      w->next_row = job.rows.size();
      continue;
    }
    for (int64_t i = 0; i < n; ++i) {
      auto s = std::make_unique<RowState>();
      s->ticket = w->ticket;
      s->row = static_cast<int64_t>(w->next_row) + i;
      live_[requests[static_cast<size_t>(i)].id] = std::move(s);
    }
    next_id_ += static_cast<int64_t>(requests.size());
    w->next_row += static_cast<size_t>(n);
    admitted += n;
    if (blocked) passed_blocked += n;
    if (w->next_row < job.rows.size()) blocked = true;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                [](const Waiting& w) { return w.next_row == w.ticket->job.rows.size(); }),
                 waiting_.end());
  stats_.rows += admitted;
  if (running) stats_.joined_running += admitted;
  stats_.max_live_rows = std::max<int64_t>(stats_.max_live_rows, static_cast<int64_t>(live_.size()));
}

void BatchScheduler::deliver(const std::vector<StreamToken>& tokens) {
  for (const StreamToken& t : tokens) {
    auto it = live_.find(t.id);
    if (it == live_.end()) continue;
    RowState& s = *it->second;
    const bool more = s.add(t.token, tokenizer_);
    if (more && t.last) s.flush("length");  // the stream's budget (max_tokens, within the context)
    if (more && !t.last) continue;
    if (!t.last) stream_->cancel(t.id);  // a stop string or the end of turn: free the row now
    live_.erase(it);
  }
}

// The engine failed (out of memory, say): every live row's job ends with the error, the stream is
// made again for the next job.
void BatchScheduler::fail_live(const std::string& what) {
  log_warn("serve: decoding " + std::to_string(live_.size()) + " rows failed: " + what);
  std::set<Ticket*> failed;
  for (auto& kv : live_)
    if (failed.insert(kv.second->ticket.get()).second) kv.second->ticket->push(JobEvent{0, "", "", 0, what});
  live_.clear();
  stream_.reset();
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = waiting_.begin(); it != waiting_.end();) {  // partly admitted jobs fail whole
    if (it->next_row > 0 && !failed.count(it->ticket.get())) it->ticket->push(JobEvent{0, "", "", 0, what});
    it = it->next_row > 0 ? waiting_.erase(it) : std::next(it);
  }
}

}  // namespace linearnexus
