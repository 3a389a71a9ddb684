#pragma once
// TensorBoard event files (trainer.trackers: [tensorboard]): what TensorBoard and
// `wandb sync --sync-tensorboard` read, written without TensorFlow or a protobuf library. A file is a
// sequence of TFRecords (length, masked CRC32C of the length, an Event protobuf, masked CRC32C of
// it); the protobuf messages are few and small, so they are encoded by hand (tensorboard.cpp says
// which fields). Rank 0 of a training run writes one (training_run.h), beside metrics.jsonl.
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <map>
#include <string>

namespace linearnexus {

// CRC-32C (Castagnoli), as TFRecord frames use it; crc32c("123456789") == 0xE3069283.
uint32_t crc32c(const void* data, size_t size);

class TensorBoardWriter {
 public:
  // Creates out_dir/tb/events.out.tfevents.<unix time>.<hostname>.<pid> (a new file per process, as
  // TensorFlow's writers do: TensorBoard reads every file of the folder in name order) and writes
  // the file_version event first.
  explicit TensorBoardWriter(const std::string& out_dir);
  // One scalar event per value at `step` (the metric's name is the tag).
  void add_scalars(int64_t step, const std::map<std::string, double>& values);
  // `text` under `tag` in TensorBoard's Text tab (shown as Markdown: lines are indented as a code
  // block so that YAML keeps its layout).
  void add_text(int64_t step, const std::string& tag, const std::string& text);
  // A resumed run repeats the steps after its checkpoint: SessionLog START at `step` makes
  // TensorBoard drop what earlier files logged at `step` and later (it keeps the steps before).
  void add_session_start(int64_t step);
  const std::string& path() const { return path_; }

 private:
  // One record around the serialized Event fields `body` (wall_time is added here), flushed; a
  // failed write is an Error (training stops so that nothing is lost silently, as for metrics.jsonl).
  void write_event(int64_t step, const std::string& body);
  std::string path_;
  std::ofstream out_;
};

}  // namespace linearnexus
