#pragma once
// The batching side of `linearnexus serve`: one scheduler thread owns the decode engine; HTTP
// handler threads submit jobs and read each job's events from its own queue.
//
//   handler threads --submit(Job)--> wait queue --round--> DecodeGenerator::generate_seeded
//        ^                                                         | per-token callback
//        +------- Ticket::next(): text deltas, finish reasons <----+ (stop strings, max_tokens,
//                                                                     cancellation)
//
// Batching is per round, not per token: each round takes the waiting jobs that can share one batch
// (same temperature / top-k / top-p / EOS, at most max_batch rows, prompt + budget within the
// context) and decodes them together to the end; jobs that arrive meanwhile join the next round.
// Joining a running batch would need the engine to prefill a new row into a live cache at the
// batch's current column (README, Serving, says what that takes).
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "linearnexus/generate.h"

namespace linearnexus {

class LMModel;
class Registry;
class Tokenizer;
class DecodeGenerator;

// One request: rows that share the sampling settings (n choices of each prompt).
struct Job {
  struct Row {
    std::vector<int64_t> prompt;
    uint64_t seed = 0;        // the row's own draws: what `sample --seed` with this seed draws
    int64_t max_tokens = 16;  // prompt.size() + max_tokens <= the model's context (checked by the caller)
  };
  double temperature = 1.0, top_p = 1.0;
  int64_t top_k = 0;
  int64_t eos_id = -1;            // chat: the tokenizer's end of turn (ends the row, never shown)
  std::vector<std::string> stop;  // text stop strings: the row ends before the first one
  std::vector<Row> rows;
};

// What a job's reader gets, in order per row: text deltas, then one event with finish_reason set.
struct JobEvent {
  int64_t row = 0;
  std::string text;           // raw bytes (a UTF-8 sequence is never split across two events)
  std::string finish_reason;  // "", "stop" (EOS or a stop string), "length" (max_tokens)
  int64_t tokens = 0;         // with finish_reason: the row's completion tokens
  std::string error;          // the batch failed: every row of the job ends with this
};

// The handler's side of a submitted job.
class Ticket {
 public:
  explicit Ticket(Job job) : job(std::move(job)) {}
  const Job job;
  // Blocks until the next event; false once every row has finished (or the job failed).
  bool next(JobEvent* event);
  // The client went away: the job's rows stop at their next token (their slots free up).
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }

 private:
  friend class BatchScheduler;
  void push(JobEvent event);
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<JobEvent> events_;
  int64_t rows_left_ = -1;  // -1: not counted yet (set on the first event)
  bool failed_ = false;
  std::atomic<bool> cancelled_{false};
};

struct SchedulerStats {
  int64_t rounds = 0, rows = 0, max_rows_in_round = 0, cancelled_rows = 0;
};

class BatchScheduler {
 public:
  BatchScheduler(const LMModel& model, const Registry& registry, const Tokenizer& tokenizer, int64_t max_batch);
  ~BatchScheduler();  // stop()
  // Queues a job (rows <= max_batch, each within the context: the caller validated them).
  std::shared_ptr<Ticket> submit(Job job);
  // Serves everything queued, then ends the thread.
  void stop();
  SchedulerStats stats();

 private:
  struct RowState;
  void loop();
  std::vector<std::shared_ptr<Ticket>> take_round();
  void run_round(const std::vector<std::shared_ptr<Ticket>>& jobs);

  const Tokenizer& tokenizer_;
  const int64_t max_batch_, context_;
  std::unique_ptr<DecodeGenerator> generator_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Ticket>> waiting_;
  bool stopping_ = false;
  SchedulerStats stats_;
  std::thread thread_;
};

}  // namespace linearnexus
