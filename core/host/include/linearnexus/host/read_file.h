#pragma once
// Reading files a user names: the read side of atomic_file.h. Every file the host reads on a user's
// behalf (experiment files and presets, Hugging Face folders, tokenizer files, checkpoints, prepared
// shards and meta.json, plugin candidates, eval texts, a run folder's own files) is opened here, so a
// named pipe, a device or a folder under a file's name is one clear error rather than a hang (a FIFO
// with no writer blocks open and read forever) or a flood (/dev/zero never ends):
//   * the open never blocks (O_NONBLOCK; cleared again once the file is known to be regular),
//   * fstat on the opened descriptor must say "regular file" (a symlink counts as what it points
//     at, so a link to /dev/zero is a device),
//   * each kind of file has a stated size limit (README, "Reading files"); kinds read in spans that
//     a header validates (checkpoints, shards) have none.
#include <cstdint>
#include <string>

namespace linearnexus {

struct FileKind {
  const char* what;    // how errors name the file: "tokenizer file '...'" (and its plural, with an s)
  uint64_t max_bytes;  // larger files are refused; 0 = no limit (the reader reads spans, never the whole)
};

namespace file_kind {
constexpr uint64_t kMiB = uint64_t{1} << 20;
// Experiment YAML and model presets (a few KB in practice).
constexpr FileKind kExperiment{"experiment file", 16 * kMiB};
// Small JSON files: config.json, generation_config.json, tokenizer_config.json, special_tokens_map.json,
// model.safetensors.index.json, a prepared folder's meta.json and verified.json.
constexpr FileKind kJson{"JSON file", 64 * kMiB};
// Tokenizer files: tokenizer.json (Llama-3's is 9 MB, Gemma's 34 MB), tokenizer.model, encoder.json,
// vocab.bpe, vocab.json, merges.txt, .tiktoken, chat_template.jinja.
constexpr FileKind kTokenizer{"tokenizer file", 1024 * kMiB};
// Text read whole into memory: data.path as a text file, eval --text (larger corpora: data prepare).
constexpr FileKind kText{"text file", 4096 * kMiB};
// A run folder's metrics.jsonl, read back when a run resumes.
constexpr FileKind kMetrics{"metrics file", 4096 * kMiB};
// Plugin candidates (*.so in a plugin folder), whose ELF tables are read before anything is loaded.
constexpr FileKind kPlugin{"plugin file", 2048 * kMiB};
// Read in spans that a validated header or meta.json describes: no limit of their own.
constexpr FileKind kCheckpoint{"checkpoint", 0};
constexpr FileKind kShard{"token file", 0};
constexpr FileKind kInput{"input file", 0};  // data prepare --input: streamed in chunks
}  // namespace file_kind

// An open regular file (read-only, close-on-exec), checked as above. Errors name the kind, the path
// and what to do.
class RegularFile {
 public:
  RegularFile(std::string path, const FileKind& kind);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }  // at open
  const std::string& path() const { return path_; }
  // Exactly `bytes` bytes at `offset`; a file that became shorter since it was opened is an Error.
  void read_at(uint64_t offset, uint64_t bytes, char* out) const;
  // The whole file, as long as it was at open.
  std::string read_all() const;

 private:
  std::string path_;
  const char* what_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The whole of a regular file of `kind` (RegularFile's checks).
std::string read_file(const std::string& path, const FileKind& kind);

// Whether `path` names a regular file (following symlinks), without opening it: for "is there a
// tokenizer.json here?" questions. The file is still opened through RegularFile when read.
bool is_regular_file(const std::string& path);

}  // namespace linearnexus
