#pragma once
// The batching side of `linearnexus serve`: one scheduler thread owns the decode engine; HTTP
// handler threads submit jobs and read each job's events from its own queue.
//
//   handler threads --submit(Job)--> wait queue --admit--> DecodeStream (continuous batching)
//        ^                                                        | advance(): tokens per row
//        +------- Ticket::next(): text deltas, finish reasons <---+ (stop strings, EOS, max_tokens,
//                                                                    cancellation)
//
// Batching is continuous, per token (decode_stream.h): between steps, waiting rows join the running
// batch in rows that finished, so a short request never waits for a long batch to end. A batch has one
// temperature / top-k / top-p (its captured step samples with them); a job with other settings waits
// for the batch to drain, and while it waits, later jobs with the batch's settings may still join, at
// most --max-batch rows of them (so it waits about two batch lifetimes at worst). The end-of-turn
// token is the host's business (a chat row ends on it, a completion row does not), so chat and
// completion requests share a batch.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
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
class DecodeStream;
struct StreamToken;

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
  int64_t rows = 0;            // completions admitted
  int64_t joined_running = 0;  // of them, rows that joined a batch already decoding
  int64_t max_live_rows = 0;   // the most rows decoded together
  int64_t cancelled_rows = 0;
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
  struct Waiting {  // a job whose rows are not all admitted yet
    std::shared_ptr<Ticket> ticket;
    size_t next_row = 0;
  };
  void loop();
  // Waits for work; false once stopping with nothing queued or live.
  bool wait_for_work();
  void drop_cancelled_waiting();
  void admit();  // waiting rows into the stream, as the rules above say
  void deliver(const std::vector<StreamToken>& tokens);
  void fail_live(const std::string& what);

  const Tokenizer& tokenizer_;
  const int64_t max_batch_, context_;
  std::unique_ptr<DecodeGenerator> generator_;
  std::unique_ptr<DecodeStream> stream_;               // made for the settings of the first job it takes
  std::map<int64_t, std::unique_ptr<RowState>> live_;  // by stream request id (the scheduler thread only)
  int64_t next_id_ = 0;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Waiting> waiting_;
  bool stopping_ = false;
  SchedulerStats stats_;
  std::thread thread_;
};

}  // namespace linearnexus
