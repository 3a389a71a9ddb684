// Prepared token files: `linearnexus data prepare` writes them, training memory-maps them.
//
// Writing streams the inputs in chunks (never the whole corpus in memory) and encodes two chunks at
// a time on the two cores; chunks end only where GPT-2's pre-tokenizer would split anyway, so the ids
// equal those of encoding each file in one piece. Reading maps each shard and copies just the
// windows a batch asks for.
#include <fcntl.h>
#include <sys/mman.h>
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
#include <thread>

#include "linearnexus/token_files.h"
#include "linearnexus/atomic_file.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

namespace {

constexpr const char* kFormat = "linearnexus-tokens-1";

bool printable_ascii(char c) { return c > 0x20 && c < 0x7f; }

// Where a chunk of text may end so that encoding the pieces separately gives the same ids as the
// whole: right after a lone "\n" that sits between two printable ASCII characters. No GPT-2
// pre-token spans such a boundary, and the "\n" is a pre-token of its own either way. Returns 0 when
// `text` has no such place (the caller then reads more).
size_t safe_split(const std::string& text) {
  for (size_t p = text.size() - 1; p >= 2; --p)
    if (text[p - 1] == '\n' && printable_ascii(text[p - 2]) && printable_ascii(text[p])) return p;
  return 0;
}

// Reads the inputs as a sequence of chunks of about chunk_bytes that end at safe places.
class ChunkReader {
 public:
  ChunkReader(const std::vector<std::string>& inputs, int64_t chunk_bytes) : inputs_(inputs), chunk_(chunk_bytes) {}
  // The next chunk; *doc_end is set when it is the last chunk of an input file. False at the end.
  bool next(std::string* out, bool* doc_end) {
    while (true) {
      if (!in_.is_open()) {
        if (file_ >= inputs_.size()) return false;
        in_.open(inputs_[file_], std::ios::binary);
        if (!in_) throw Error("data prepare: cannot read '" + inputs_[file_] + "'");
      }
      std::string buf(static_cast<size_t>(chunk_), '\0');
      in_.read(buf.data(), chunk_);
      buf.resize(static_cast<size_t>(in_.gcount()));
      bytes_ += static_cast<int64_t>(buf.size());
      carry_ += buf;
      if (!in_.eof()) {
        const size_t cut = carry_.size() > 2 ? safe_split(carry_) : 0;
        if (cut == 0) continue;  // no safe place yet: keep reading
        *out = carry_.substr(0, cut);
        carry_.erase(0, cut);
        *doc_end = false;
        return true;
      }
      in_.close();
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
  size_t file_ = 0;
  std::ifstream in_;
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
               std::string(static_cast<size_t>(filled), '#').c_str(), std::string(static_cast<size_t>(width - filled), ' ').c_str(),
               100.0 * frac, static_cast<double>(done) / 1e6, static_cast<double>(total) / 1e6,
               seconds > 0 ? static_cast<double>(done) / 1e6 / seconds : 0.0, static_cast<long long>(tokens), final ? "\n" : "");
  std::fflush(stderr);
}

std::shared_ptr<Tokenizer> tokenizer_for_inputs(const PrepareOptions& o) {
  if (o.tokenizer != "char") return make_bpe_tokenizer(o.tokenizer);
  // The character vocabulary is every byte the inputs hold: one streaming pass to find them.
  std::array<bool, 256> seen{};
  std::string buf(1 << 20, '\0');
  for (const auto& f : o.inputs) {
    std::ifstream in(f, std::ios::binary);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0)
      for (std::streamsize i = 0; i < in.gcount(); ++i) seen[static_cast<unsigned char>(buf[static_cast<size_t>(i)])] = true;
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

// One memory-mapped shard.
struct MappedFile {
  const char* data = nullptr;
  size_t bytes = 0;
  MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw Error("prepared data: cannot open '" + path + "' (run `linearnexus data prepare` again)");
    struct stat st {};
    ::fstat(fd, &st);
    bytes = static_cast<size_t>(st.st_size);
    if (bytes > 0) {
      void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        throw Error("prepared data: cannot memory-map '" + path + "'");
      }
      data = static_cast<const char*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data) ::munmap(const_cast<char*>(data), bytes);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
};

// Shards of one split, read as one token stream.
class MappedDataset : public TokenDataset {
 public:
  MappedDataset(std::vector<std::string> files, const std::vector<int64_t>& tokens, int width, std::string desc)
      : width_(width), desc_(std::move(desc)) {
    for (size_t i = 0; i < files.size(); ++i) {
      auto m = std::make_unique<MappedFile>(files[i]);
      if (static_cast<int64_t>(m->bytes) != tokens[i] * width)
        throw Error("prepared data: '" + files[i] + "' holds " + std::to_string(m->bytes) + " bytes, but meta.json says " +
                    std::to_string(tokens[i]) + " tokens of " + std::to_string(width) +
                    " bytes; the folder is corrupt or half-written: run `linearnexus data prepare` again");
      starts_.push_back(size_);
      size_ += tokens[i];
      shards_.push_back(std::move(m));
    }
  }
  int64_t size() const override { return size_; }
  void read(int64_t offset, int64_t n, int64_t* out) const override {
    // The shard holding `offset`, then onwards across shard ends.
    size_t s = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), offset) - starts_.begin() - 1);
    while (n > 0) {
      const int64_t local = offset - starts_[s];
      const int64_t avail = std::min(n, static_cast<int64_t>(shards_[s]->bytes) / width_ - local);
      const char* p = shards_[s]->data + local * width_;
      for (int64_t i = 0; i < avail; ++i) {
        uint32_t v = 0;
        std::memcpy(&v, p + i * width_, static_cast<size_t>(width_));
        out[i] = static_cast<int64_t>(v);
      }
      out += avail, offset += avail, n -= avail, ++s;
    }
  }
  std::string describe() const override { return desc_; }

 private:
  int width_;
  std::string desc_;
  std::vector<std::unique_ptr<MappedFile>> shards_;
  std::vector<int64_t> starts_;
  int64_t size_ = 0;
};

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
    const std::string what = is_prepared_dir(o.out_dir) ? "a prepared dataset"
                             : fs::exists(fs::path(o.out_dir) / "config.yaml") ? "a training run"
                                                                               : "files";
    throw Error("data prepare: the output folder '" + o.out_dir + "' already holds " + what +
                "; choose another --out, or pass --force to overwrite it");
  }
  fs::create_directories(o.out_dir, ec);
  if (ec || !fs::is_directory(o.out_dir)) throw Error("data prepare: cannot create the output folder '" + o.out_dir + "'");

  auto tok = tokenizer_for_inputs(o);
  const int width = tok->vocab_size() <= 65536 ? 2 : 4;
  const fs::path dir(o.out_dir);
  AtomicFile train_file((dir / "train.bin").string()), val_file((dir / "val.bin").string());
  // A previous meta.json no longer describes what is being written: remove it first, so a crash
  // in between leaves a folder that is plainly unprepared rather than one that looks complete.
  fs::remove(dir / "meta.json", ec);

  TokenWriter writer(train_file, width);
  ChunkReader reader(o.inputs, o.chunk_bytes);
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
      batch.emplace_back(std::async(std::launch::async, [&tok, c = std::move(chunk)] { return tok->encode(c); }), doc_end);
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
    throw Error("data prepare: the inputs hold only " + std::to_string(n) + " tokens: too few to split with --val-fraction " +
                std::to_string(o.val_fraction) + "; give more text or a larger fraction");
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
  json meta = {{"format", kFormat},
               {"dtype", sum.dtype},
               {"vocab_size", sum.vocab_size},
               {"tokenizer", json::parse(tok->to_json())},
               {"inputs", o.inputs},
               {"train", {{"files", {"train.bin"}}, {"tokens", {sum.train_tokens}}, {"sha256", {sha256_file((dir / "train.bin").string())}}}},
               {"val", {{"files", {"val.bin"}}, {"tokens", {sum.val_tokens}}, {"sha256", {sha256_file((dir / "val.bin").string())}}}}};
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

DataSplits load_prepared(const std::string& dir) {
  const std::string meta_path = (fs::path(dir) / "meta.json").string();
  json meta;
  try {
    std::ifstream in(meta_path);
    meta = json::parse(in);
  } catch (const std::exception& e) {
    throw Error("prepared data: '" + meta_path + "' is not valid JSON (" + e.what() + "); run `linearnexus data prepare` again");
  }
  try {
    if (meta.value("format", "") != kFormat)
      throw Error("prepared data: '" + meta_path + "' is not a LinearNexus token folder (format '" + meta.value("format", "") +
                  "', expected '" + kFormat + "')");
    const std::string dtype = meta.at("dtype").get<std::string>();
    if (dtype != "uint16" && dtype != "uint32") throw Error("prepared data: '" + meta_path + "': unknown dtype '" + dtype + "'");
    const int width = dtype == "uint16" ? 2 : 4;
    DataSplits out;
    out.tokenizer = tokenizer_from_json(meta.at("tokenizer").dump());
    auto split = [&](const char* name) {
      std::vector<std::string> files;
      for (const auto& f : meta.at(name).at("files")) files.push_back((fs::path(dir) / f.get<std::string>()).string());
      const auto tokens = meta.at(name).at("tokens").get<std::vector<int64_t>>();
      if (files.empty() || tokens.size() != files.size())
        throw Error("prepared data: '" + meta_path + "': '" + name + "' must list files and one token count per file");
      return std::make_shared<MappedDataset>(files, tokens, width, dir + " (" + name + " split)");
    };
    out.train = split("train");
    out.val = split("val");
    return out;
  } catch (const json::exception& e) {
    throw Error("prepared data: '" + meta_path + "' is missing a field (" + e.what() + "); run `linearnexus data prepare` again");
  }
}

}  // namespace linearnexus
