// Prepared token files: `linearnexus data prepare` writes them, training reads their windows.
//
// Writing streams the inputs in chunks (never the whole corpus in memory) and encodes two chunks at
// a time on the two cores; chunks end only where GPT-2's pre-tokenizer would split anyway, so the ids
// equal those of encoding each file in one piece. Reading opens each shard and copies just the
// windows a batch asks for (pread, not mmap: see ShardFile).
#include <fcntl.h>
#include <cerrno>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include "linearnexus/host/token_files.h"
#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "json_limits.h"
#include "prepared_meta.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

namespace {

bool ascii_alnum(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Where a chunk of text may end so that encoding the pieces separately gives the same ids as the
// whole: right after a "\n" that sits between two ASCII letters or digits. No pre-token of GPT-2's,
// Llama-3's or Qwen2's regex spans such a boundary (Llama-3's and Qwen2's join punctuation to the
// newlines after it, hence letters and digits only), the "\n" is a pre-token of its own, and NFC
// never joins across it. Returns 0 when `text` has no such place (the caller then reads more).
size_t safe_split(const std::string& text) {
  for (size_t p = text.size() - 1; p >= 2; --p)
    if (text[p - 1] == '\n' && ascii_alnum(text[p - 2]) && ascii_alnum(text[p])) return p;
  return 0;
}

// Reads the inputs as a sequence of chunks of about chunk_bytes that end at safe places, or (for a
// tokenizer that cannot be fed chunks: Tokenizer::chunks_at_newlines) one chunk per input file.
class ChunkReader {
 public:
  ChunkReader(const std::vector<std::string>& inputs, int64_t chunk_bytes, bool split_files)
      : inputs_(inputs), chunk_(chunk_bytes), split_files_(split_files) {}
  // The next chunk; *doc_end is set when it is the last chunk of an input file. False at the end.
  bool next(std::string* out, bool* doc_end) {
    while (true) {
      if (!in_) {
        if (file_ >= inputs_.size()) return false;
        in_ = std::make_unique<RegularFile>(inputs_[file_], file_kind::kInput);
        at_ = 0;
      }
      const uint64_t n = std::min<uint64_t>(static_cast<uint64_t>(chunk_), in_->size() - at_);
      std::string buf(static_cast<size_t>(n), '\0');
      in_->read_at(at_, n, buf.data());
      at_ += n;
      bytes_ += static_cast<int64_t>(buf.size());
      carry_ += buf;
      if (at_ < in_->size()) {
        const size_t cut = split_files_ && carry_.size() > 2 ? safe_split(carry_) : 0;
        if (cut == 0) continue;  // no safe place yet: keep reading
        *out = carry_.substr(0, cut);
        carry_.erase(0, cut);
        *doc_end = false;
        return true;
      }
      in_.reset();
      ++file_;
      *out = std::move(carry_);
      carry_.clear();
      *doc_end = true;
      return true;
    }
  }
  int64_t bytes_read() const { return bytes_; }

 private:
  const std::vector<std::string>& inputs_;
  int64_t chunk_;
  bool split_files_;
  size_t file_ = 0;
  std::unique_ptr<RegularFile> in_;  // the input being read (as long as it was when opened)
  uint64_t at_ = 0;
  std::string carry_;
  int64_t bytes_ = 0;
};

// Appends tokens to a file as uint16 or uint32.
class TokenWriter {
 public:
  TokenWriter(AtomicFile& file, int width) : file_(file), width_(width) {}
  void write(const std::vector<int64_t>& ids) {
    buf_.resize(ids.size() * static_cast<size_t>(width_));
    for (size_t i = 0; i < ids.size(); ++i) {
      const uint32_t v = static_cast<uint32_t>(ids[i]);
      std::memcpy(buf_.data() + i * width_, &v, static_cast<size_t>(width_));  // little-endian host
    }
    file_.stream().write(buf_.data(), static_cast<std::streamsize>(buf_.size()));
    if (!file_.stream()) throw Error("data prepare: writing '" + file_.temp_path() + "' failed (disk full?)");
    count_ += static_cast<int64_t>(ids.size());
  }
  int64_t close() {
    file_.close_stream();
    return count_;
  }

 private:
  AtomicFile& file_;
  int width_;
  std::vector<char> buf_;
  int64_t count_ = 0;
};

void progress_line(int64_t done, int64_t total, double seconds, int64_t tokens, bool final) {
  const double frac = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const int width = 30, filled = static_cast<int>(frac * width);
  std::fprintf(stderr, "\rtokenizing [%s%s] %5.1f%%  %.1f/%.1f MB  %.1f MB/s  %lld tokens%s",
               std::string(static_cast<size_t>(filled), '#').c_str(),
               std::string(static_cast<size_t>(width - filled), ' ').c_str(), 100.0 * frac,
               static_cast<double>(done) / 1e6, static_cast<double>(total) / 1e6,
               seconds > 0 ? static_cast<double>(done) / 1e6 / seconds : 0.0, static_cast<long long>(tokens),
               final ? "\n" : "");
  std::fflush(stderr);
}

std::shared_ptr<Tokenizer> tokenizer_for_inputs(const PrepareOptions& o) {
  if (o.tokenizer != "char") return load_tokenizer(o.tokenizer);
  // The character vocabulary is every byte the inputs hold: one streaming pass to find them.
  std::array<bool, 256> seen{};
  std::string buf(1 << 20, '\0');
  for (const auto& f : o.inputs) {
    const RegularFile in(f, file_kind::kInput);
    for (uint64_t at = 0; at < in.size();) {
      const uint64_t n = std::min<uint64_t>(buf.size(), in.size() - at);
      in.read_at(at, n, buf.data());
      for (uint64_t i = 0; i < n; ++i) seen[static_cast<unsigned char>(buf[static_cast<size_t>(i)])] = true;
      at += n;
    }
  }
  std::string bytes;
  for (int c = 0; c < 256; ++c)
    if (seen[c]) bytes.push_back(static_cast<char>(c));
  return make_char_tokenizer(bytes);
}

// Moves the last n_val tokens of `train_tmp` into `val` and truncates `train_tmp` before them.
void split_off_validation(const std::string& train_tmp, AtomicFile& val, int64_t n_train, int64_t n_val, int width) {
  std::ifstream in(train_tmp, std::ios::binary);
  in.seekg(n_train * width);
  std::vector<char> buf(1 << 20);
  int64_t left = n_val * width;
  while (left > 0 && in) {
    in.read(buf.data(), static_cast<std::streamsize>(std::min<int64_t>(left, static_cast<int64_t>(buf.size()))));
    val.stream().write(buf.data(), in.gcount());
    left -= in.gcount();
  }
  if (left != 0) throw Error("data prepare: reading back '" + train_tmp + "' failed");
  val.close_stream();
  fs::resize_file(train_tmp, static_cast<uintmax_t>(n_train * width));
}

// One shard, read with pread. Not memory-mapped: a mapped file truncated while training (re-prepared
// in place, a full disk, another process) turns the next read into SIGBUS, which no error message
// survives; pread just returns short. The windows are small (a batch reads batch_size of them):
// measured on an 87 MB shard, a 32 x 1024-token get_batch took 0.3-1.7 ms with pread and 1.2-1.5 ms
// with the former mmap (a shared, loaded 2-core VM: the same within noise, and far below a step).
class ShardFile {
 public:
  ShardFile(std::string path, int64_t expected_bytes) : path_(std::move(path)) {
    try {
      file_ = std::make_unique<RegularFile>(path_, file_kind::kShard);
    } catch (const Error& e) {
      throw Error(std::string("prepared data: ") + e.what() + " (run `linearnexus data prepare` again)");
    }
    fd_ = file_->fd();
    if (static_cast<int64_t>(file_->size()) != expected_bytes)
      throw Error("prepared data: '" + path_ + "' holds " + std::to_string(file_->size()) +
                  " bytes, but meta.json says " + std::to_string(expected_bytes) +
                  "; the folder is corrupt or half-written: run `linearnexus data prepare` again");
  }
  ShardFile(const ShardFile&) = delete;
  ShardFile& operator=(const ShardFile&) = delete;

  // Exactly `bytes` bytes at `offset`, or an Error saying the file changed under the run.
  void read(int64_t offset, int64_t bytes, char* out) const {
    int64_t done = 0;
    while (done < bytes) {
      const ssize_t n = ::pread(fd_, out + done, static_cast<size_t>(bytes - done), offset + done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        throw Error("prepared data: '" + path_ + "' became shorter while training (reading " + std::to_string(bytes) +
                    " bytes at " + std::to_string(offset) + " failed" +
                    (n < 0 ? ": " + std::string(std::strerror(errno)) : "") +
                    "); was it re-prepared or truncated? run `linearnexus data prepare` again, then resume");
      done += n;
    }
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::unique_ptr<RegularFile> file_;
  int fd_ = -1;  // file_'s
};

// Shards of one split, read as one token stream; every id is checked against the vocabulary.
class ShardDataset : public TokenDataset {
 public:
  ShardDataset(const std::string& dir, const PreparedSplit& split, int width, int64_t vocab, std::string desc)
      : width_(width), vocab_(vocab), desc_(std::move(desc)) {
    for (size_t i = 0; i < split.files.size(); ++i) {
      shards_.push_back(
          std::make_unique<ShardFile>((fs::path(dir) / split.files[i]).string(), split.tokens[i] * width));
      starts_.push_back(size_);
      size_ += split.tokens[i];
    }
  }
  int64_t size() const override { return size_; }
  void read(int64_t offset, int64_t n, int64_t* out) const override {
    std::vector<char> buf(static_cast<size_t>(n * width_));
    // The shard holding `offset`, then onwards across shard ends.
    size_t s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), offset) - starts_.begin() - 1);
    while (n > 0) {
      const int64_t local = offset - starts_[s];
      const int64_t shard_tokens = (s + 1 < starts_.size() ? starts_[s + 1] : size_) - starts_[s];
      const int64_t avail = std::min(n, shard_tokens - local);
      shards_[s]->read(local * width_, avail * width_, buf.data());
      for (int64_t i = 0; i < avail; ++i) {
        uint32_t v = 0;
        std::memcpy(&v, buf.data() + i * width_, static_cast<size_t>(width_));  // little-endian host
        // An id past the vocabulary would fail deep in the embedding ("index out of range in self").
        if (static_cast<int64_t>(v) >= vocab_)
          throw Error("prepared data: '" + shards_[s]->path() + "' holds token id " + std::to_string(v) + " at token " +
                      std::to_string(local + i) + ", but the vocabulary (meta.json) has " + std::to_string(vocab_) +
                      " tokens; the file is corrupt: run `linearnexus data prepare` again");
        out[i] = static_cast<int64_t>(v);
      }
      out += avail, offset += avail, n -= avail, ++s;
    }
  }
  std::string describe() const override { return desc_; }

 private:
  int width_;
  int64_t vocab_;
  std::string desc_;
  std::vector<std::unique_ptr<ShardFile>> shards_;
  std::vector<int64_t> starts_;
  int64_t size_ = 0;
};

// Every shard's SHA-256 against meta.json: a file changed after `data prepare` (edited, replaced,
// partly rewritten) would train on tokens nobody prepared. Hashing costs about as much as reading
// the file (OpenSSL SHA-256: an 87 MB shard in 0.07 s CPU, 0.14 s wall here; ~1-2 s per GB), so
// each shard that matched is recorded in
// DIR/verified.json by size and modification time, and skipped while both stay the same; a folder
// that cannot be written is hashed on every start.
void verify_shards(const std::string& dir, const PreparedMeta& meta) {
  const std::string cache_path = (fs::path(dir) / "verified.json").string();
  json cache = json::object();
  try {
    if (fs::exists(cache_path)) cache = parse_json_limited(read_file(cache_path, file_kind::kJson), 3);
    if (!cache.is_object()) cache = json::object();
  } catch (const std::exception&) {
    cache = json::object();  // an unreadable cache only means hashing again
  }
  bool changed = false;
  for (const PreparedSplit* split : {&meta.train, &meta.val}) {
    for (size_t i = 0; i < split->files.size(); ++i) {
      const std::string path = (fs::path(dir) / split->files[i]).string();
      struct stat st {};
      if (::stat(path.c_str(), &st) != 0) continue;  // ShardFile reports a missing file
      const json stamp = {{"size", static_cast<int64_t>(st.st_size)},
                          {"mtime_ns", static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec},
                          {"sha256", split->sha256[i]}};
      if (cache.value(split->files[i], json()) == stamp) continue;
      const std::string actual = sha256_file(path);
      if (actual != split->sha256[i])
        throw Error("prepared data: '" + path + "' does not match meta.json (SHA-256 " + actual + ", meta.json says " +
                    split->sha256[i] + "): it changed after `linearnexus data prepare`; run data prepare again");
      cache[split->files[i]] = stamp;
      changed = true;
    }
  }
  if (!changed) return;
  try {
    write_file_atomically(cache_path, cache.dump(2) + "\n");
  } catch (const std::exception& e) {
    log_info("prepared data: cannot record the verified SHA-256s in " + cache_path + " (" + e.what() +
             "); they will be computed again next time");
  }
}

}  // namespace

PreparedSummary prepare_token_files(const PrepareOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  if (o.inputs.empty()) throw Error("data prepare: no --input files given");
  int64_t total_bytes = 0;
  for (const auto& f : o.inputs) {
    std::error_code ec;
    if (!fs::is_regular_file(f, ec)) throw Error("data prepare: input '" + f + "' does not exist or is not a file");
    total_bytes += static_cast<int64_t>(fs::file_size(f));
  }
  if (total_bytes == 0) throw Error("data prepare: the inputs are empty; give text files with something in them");
  if (!(o.val_fraction > 0 && o.val_fraction < 1))
    throw Error("data prepare: --val-fraction must be between 0 and 1 (got " + std::to_string(o.val_fraction) + ")");
  std::error_code ec;
  if (!o.force && fs::is_directory(o.out_dir, ec) && !fs::is_empty(o.out_dir, ec)) {
    const std::string what = is_prepared_dir(o.out_dir)                        ? "a prepared dataset"
                             : fs::exists(fs::path(o.out_dir) / "config.yaml") ? "a training run"
                                                                               : "files";
    throw Error("data prepare: the output folder '" + o.out_dir + "' already holds " + what +
                "; choose another --out, or pass --force to overwrite it");
  }
  fs::create_directories(o.out_dir, ec);
  if (ec || !fs::is_directory(o.out_dir))
    throw Error("data prepare: cannot create the output folder '" + o.out_dir + "'");

  auto tok = tokenizer_for_inputs(o);
  const int width = tok->vocab_size() <= 65536 ? 2 : 4;
  const fs::path dir(o.out_dir);
  AtomicFile train_file((dir / "train.bin").string()), val_file((dir / "val.bin").string());
  // A previous meta.json no longer describes what is being written: remove it first, so a crash
  // in between leaves a folder that is plainly unprepared rather than one that looks complete.
  fs::remove(dir / "meta.json", ec);

  TokenWriter writer(train_file, width);
  ChunkReader reader(o.inputs, o.chunk_bytes, tok->chunks_at_newlines());
  const unsigned workers = std::max(2u, std::thread::hardware_concurrency());
  auto last_print = std::chrono::steady_clock::now();
  int64_t tokens = 0;
  bool more = true;
  while (more) {
    // Up to `workers` chunks encoded concurrently (the tokenizer is thread-safe), written in order.
    std::vector<std::pair<std::future<std::vector<int64_t>>, bool>> batch;
    for (unsigned i = 0; i < workers; ++i) {
      std::string chunk;
      bool doc_end = false;
      if (!(more = reader.next(&chunk, &doc_end))) break;
      batch.emplace_back(std::async(std::launch::async, [&tok, c = std::move(chunk)] { return tok->encode(c); }),
                         doc_end);
    }
    for (auto& [ids_future, doc_end] : batch) {
      auto ids = ids_future.get();
      // Documents are separated by the end-of-text token where the tokenizer has one.
      if (doc_end && tok->eos_id() >= 0) ids.push_back(tok->eos_id());
      writer.write(ids);
      tokens += static_cast<int64_t>(ids.size());
    }
    const auto now = std::chrono::steady_clock::now();
    if (o.progress && more && now - last_print > std::chrono::milliseconds(250)) {
      progress_line(reader.bytes_read(), total_bytes, std::chrono::duration<double>(now - t0).count(), tokens, false);
      last_print = now;
    }
  }
  const int64_t n = writer.close();
  const int64_t n_val = static_cast<int64_t>(static_cast<double>(n) * o.val_fraction);
  if (n_val < 1 || n - n_val < 1) {
    throw Error("data prepare: the inputs hold only " + std::to_string(n) +
                " tokens: too few to split with --val-fraction " + std::to_string(o.val_fraction) +
                "; give more text or a larger fraction");
  }
  split_off_validation(train_file.temp_path(), val_file, n - n_val, n_val, width);
  train_file.commit();
  val_file.commit();

  PreparedSummary sum;
  sum.dtype = width == 2 ? "uint16" : "uint32";
  sum.vocab_size = tok->vocab_size();
  sum.train_tokens = n - n_val;
  sum.val_tokens = n_val;
  sum.input_bytes = total_bytes;
  json meta = {
      {"format", kPreparedFormat},
      {"dtype", sum.dtype},
      {"vocab_size", sum.vocab_size},
      {"tokenizer", json::parse(tok->to_json())},
      {"inputs", o.inputs},
      {"train",
       {{"files", {"train.bin"}},
        {"tokens", {sum.train_tokens}},
        {"sha256", {sha256_file((dir / "train.bin").string())}}}},
      {"val",
       {{"files", {"val.bin"}}, {"tokens", {sum.val_tokens}}, {"sha256", {sha256_file((dir / "val.bin").string())}}}}};
  // meta.json last, and atomically: its presence is what makes the folder a prepared dataset.
  write_file_atomically((dir / "meta.json").string(), meta.dump(2) + "\n");
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (o.progress) progress_line(total_bytes, total_bytes, sum.seconds, n, true);
  return sum;
}

bool is_prepared_dir(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::exists(fs::path(path) / "meta.json", ec);
}

DataSplits load_prepared(const std::string& dir, bool verify_hashes) {
  const std::string meta_path = (fs::path(dir) / "meta.json").string();
  std::string text;
  try {
    text = read_file(meta_path, file_kind::kJson);
  } catch (const Error& e) {
    throw Error(std::string("prepared data: ") + e.what() + "; run `linearnexus data prepare` again");
  }
  const PreparedMeta meta = parse_prepared_meta(text, meta_path);
  DataSplits out;
  try {
    out.tokenizer = tokenizer_from_json(meta.tokenizer_json, dir);
  } catch (const Error& e) {
    throw Error("prepared data: " + meta_path + ": 'tokenizer': " + e.what());
  }
  if (out.tokenizer->vocab_size() != meta.vocab_size)
    throw Error("prepared data: " + meta_path + ": its tokenizer (" + out.tokenizer->kind() + ") has " +
                std::to_string(out.tokenizer->vocab_size()) + " tokens but vocab_size says " +
                std::to_string(meta.vocab_size) +
                "; the folder is corrupt or edited: run `linearnexus data prepare` again");
  out.train = std::make_shared<ShardDataset>(dir, meta.train, meta.width, meta.vocab_size, dir + " (train split)");
  out.val = std::make_shared<ShardDataset>(dir, meta.val, meta.width, meta.vocab_size, dir + " (val split)");
  if (verify_hashes) verify_shards(dir, meta);  // after the size checks, which need no hashing
  return out;
}

}  // namespace linearnexus
