// Text datasets, batches and downloads.
#include "linearnexus/host/data.h"
#include "linearnexus/host/examples.h"

#include <curl/curl.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/read_file.h"
#include "linearnexus/error.h"
#include "linearnexus/log.h"
#include "linearnexus/host/token_files.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace linearnexus {

// ---- datasets ---------------------------------------------------------------------------------

namespace {
class MemoryDataset : public TokenDataset {
 public:
  MemoryDataset(std::vector<int64_t> t, std::string d) : tokens_(std::move(t)), desc_(std::move(d)) {}
  int64_t size() const override { return static_cast<int64_t>(tokens_.size()); }
  void read(int64_t offset, int64_t n, int64_t* out) const override {
    std::copy(tokens_.begin() + offset, tokens_.begin() + offset + n, out);
  }
  std::string describe() const override { return desc_; }

 private:
  std::vector<int64_t> tokens_;
  std::string desc_;
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

std::shared_ptr<TokenDataset> make_memory_dataset(std::vector<int64_t> tokens, std::string description) {
  return std::make_shared<MemoryDataset>(std::move(tokens), std::move(description));
}

const Schema& data_schema() {
  static const Schema s = {
      {"path", ParamType::String, "",
       "text file to train on, builtin:arithmetic (a generated corpus), or task = worked examples of the experiment's task section"},
      {"tokenizer", ParamType::String, "char",
       "char, gpt2, a tokenizer.json / tokenizer.model / .tiktoken file, or a folder holding one (a Hugging Face model or run folder) or GPT-2's encoder.json + vocab.bpe"},
      {"seq_len", ParamType::Int, "256", "tokens per training sequence", {}, 1},
      {"val_fraction",
       ParamType::Float,
       "0.1",
       "fraction of the tokens (at the end) held out for validation",
       {},
       0.0001,
       0.9},
      {"download", ParamType::String, "\"\"", "URL fetched to data.path when the file is missing"},
      {"download_sha256", ParamType::String, "\"\"", "expected SHA-256 of the download (\"\" = unchecked)"},
      {"download_size", ParamType::Int, "0", "expected size in bytes of the download (0 = unchecked)", {}, 0},
      {"sampling",
       ParamType::String,
       "random",
       "training windows: random offsets, or epoch = shuffled non-overlapping windows, each once per epoch",
       {"random", "epoch"}},
      {"format",
       ParamType::String,
       "text",
       "text = one token stream cut into windows; chat, prompt_completion, preference = a JSON Lines file of examples (one padded row each, the loss on the completion or the assistant's turns: docs/post_training.md)",
       {"text", "chat", "prompt_completion", "preference"}},
      {"train_on_prompt", ParamType::Bool, "false", "examples formats: put the loss on every token, the prompt's too"},
  };
  return s;
}

std::string builtin_arithmetic_corpus(int64_t n_lines, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::ostringstream out;
  for (int64_t i = 0; i < n_lines; ++i) {
    int digits_a = 1 + static_cast<int>(rng() % 3), digits_b = 1 + static_cast<int>(rng() % 3);
    auto draw = [&](int d) { return static_cast<int64_t>(rng() % static_cast<uint64_t>(std::pow(10, d))); };
    int64_t a = draw(digits_a), b = draw(digits_b);
    out << a << '+' << b << '=' << a + b << '\n';
  }
  return out.str();
}

DataSettings DataSettings::from(const Params& d) {
  DataSettings s;
  s.path = d.get_string("path");
  s.tokenizer = d.get_string("tokenizer");
  s.seq_len = d.get_int("seq_len");
  s.val_fraction = d.get_float("val_fraction");
  s.download = d.get_string("download");
  s.download_sha256 = d.get_string("download_sha256");
  s.download_size = d.get_int("download_size");
  s.sampling = parse_sampling(d.get_string("sampling"));
  s.format = d.get_string("format");
  s.train_on_prompt = d.get_bool("train_on_prompt");
  return s;
}

namespace {
// data.path as a file system path: relative ones against base_dir.
fs::path data_file(const DataSettings& data, const std::string& base_dir) {
  fs::path p(data.path);
  if (p.is_relative() && !base_dir.empty()) p = fs::path(base_dir) / p;
  return p;
}

void check_settings(const DataSettings& data) {
  if (data.seq_len <= 0) throw Error("data.seq_len must be positive (got " + std::to_string(data.seq_len) + ")");
  if (data.val_fraction <= 0 || data.val_fraction >= 1)
    throw Error("data.val_fraction must be between 0 and 1 (got " + std::to_string(data.val_fraction) + ")");
  const std::string& path_key = data.path;
  if (data.format != "text" && (path_key == "task" || path_key.rfind("builtin:", 0) == 0))
    throw Error("data.path: '" + path_key + "' is text; data.format " + data.format +
                " reads a JSON Lines file of examples");
  if (data.format == "text" && path_key.size() > 6 && path_key.compare(path_key.size() - 6, 6, ".jsonl") == 0)
    throw Error("data.path: '" + path_key + "' is JSON Lines, but data.format is text (it would train on the JSON " +
                "itself); set data.format to chat, prompt_completion or preference");
}

// data.format chat / prompt_completion / preference: the examples of a JSON Lines file (examples.h).
DataSplits load_example_data(const DataSettings& data, const std::string& base_dir,
                             std::shared_ptr<Tokenizer> tokenizer) {
  DataSplits out;
  if (tokenizer) {
    out.tokenizer = tokenizer;
  } else if (data.tokenizer == "char") {
    throw Error("data.tokenizer: data.format " + data.format + " needs a model's tokenizer (gpt2, a tokenizer.json, " +
                "or a Hugging Face model folder); the char tokenizer is built from plain text");
  } else {
    out.tokenizer = load_tokenizer(data.tokenizer);
  }
  ExampleSplits examples = load_examples(data, base_dir, *out.tokenizer);
  out.train_examples = examples.train;
  out.val_examples = examples.val;
  return out;
}

// A prepared folder's splits must each hold a window of seq_len + 1 tokens.
void check_prepared_lengths(const DataSplits& out, int64_t seq_len) {
  for (const auto* split : {&out.train, &out.val})
    if ((*split)->size() < seq_len + 1)
      throw Error("data: " + (*split)->describe() + " holds " + std::to_string((*split)->size()) +
                  " tokens, but needs at least seq_len + 1 = " + std::to_string(seq_len + 1) +
                  "; lower data.seq_len or prepare more text");
}

// Both splits of n tokens of `name` must hold a window of seq_len + 1 tokens.
void check_split_lengths(const std::string& name, int64_t n, const DataSettings& data) {
  const int64_t n_val = static_cast<int64_t>(static_cast<double>(n) * data.val_fraction);
  const int64_t need = data.seq_len + 1;
  if (n - n_val < need || n_val < need)
    throw Error("data: '" + name + "' has " + std::to_string(n) + " tokens; with val_fraction " +
                std::to_string(data.val_fraction) + " the train split has " + std::to_string(n - n_val) +
                " and the validation split " + std::to_string(n_val) + ", but each needs at least seq_len + 1 = " +
                std::to_string(need) + "; lower data.seq_len or use more text");
}

// A text file's data.path: there (or to be downloaded), not a folder. Returns whether it is there.
bool check_text_path(const DataSettings& data, const fs::path& p) {
  if (!fs::exists(p)) {
    if (data.download.empty())
      throw Error("data.path: '" + p.string() +
                  "' does not exist; put the text file there or set data.download to its URL");
    return false;
  }
  if (fs::is_directory(p))
    throw Error("data.path: '" + p.string() +
                "' is a folder without meta.json, not a prepared dataset; prepare it with " +
                "`linearnexus data prepare`, or name a text file");
  return true;
}

// The text of data.path (or of the task, or the built-in corpus) and its name for messages.
std::string data_text(const DataSettings& data, const fs::path& p, const std::string& task_text, std::string* name) {
  *name = data.path;
  std::string text;
  if (data.path == "task") {
    if (task_text.empty()) throw Error("data.path: 'task' needs the experiment's task section to supply the text");
    text = task_text;
  } else if (data.path == "builtin:arithmetic") {
    text = builtin_arithmetic_corpus(200000, 1234);
  } else if (data.path.rfind("builtin:", 0) == 0) {
    throw Error("data.path: unknown built-in corpus '" + data.path + "' (available: builtin:arithmetic)");
  } else {
    if (!check_text_path(data, p)) {
      log_info("downloading " + data.download + " to " + p.string());
      download_file(data.download, p.string(), data.download_size, data.download_sha256);
    }
    try {
      text = read_file(p.string(), file_kind::kText);
    } catch (const Error& e) {
      throw Error(std::string("data.path: ") + e.what());
    }
    *name = p.string();
  }
  if (text.empty()) throw Error("data.path: '" + *name + "' is empty; point data.path at a file with text in it");
  return text;
}
}  // namespace

DataSplits load_data(const DataSettings& data, const std::string& base_dir, std::shared_ptr<Tokenizer> tokenizer,
                     const std::string& task_text) {
  check_settings(data);
  if (data.format != "text") return load_example_data(data, base_dir, tokenizer);
  const fs::path p = data_file(data, base_dir);
  if (is_prepared_dir(p.string())) {
    // Token ids are fixed by the prepared files: their tokenizer wins (a resumed run's is the same).
    DataSplits out = load_prepared(p.string());
    check_prepared_lengths(out, data.seq_len);
    return out;
  }
  std::string name;
  const std::string text = data_text(data, p, task_text, &name);
  DataSplits out;
  if (tokenizer) {
    out.tokenizer = tokenizer;
  } else {
    const std::string& tk = data.tokenizer;
    out.tokenizer = tk == "char" ? make_char_tokenizer(text) : load_tokenizer(tk);
  }
  std::vector<int64_t> ids = out.tokenizer->encode(text);
  const int64_t n = static_cast<int64_t>(ids.size());
  check_split_lengths(name, n, data);
  const int64_t n_val = static_cast<int64_t>(static_cast<double>(n) * data.val_fraction);
  std::vector<int64_t> val(ids.begin() + (n - n_val), ids.end());
  ids.resize(n - n_val);
  out.train = make_memory_dataset(std::move(ids), name + " (train split)");
  out.val = make_memory_dataset(std::move(val), name + " (validation split)");
  return out;
}

std::string DataSplits::describe() const {
  return train ? train->describe() : train_examples ? train_examples->describe() : std::string("(no data)");
}

std::shared_ptr<Tokenizer> preview_data(const DataSettings& data, const std::string& base_dir,
                                        std::shared_ptr<Tokenizer> tokenizer, const std::string& task_text,
                                        std::string* description) {
  check_settings(data);
  const fs::path p = data_file(data, base_dir);
  if (data.format != "text") {
    // Examples are read (every row checked, as run reads them) but nothing is trained.
    DataSplits out = load_example_data(data, base_dir, tokenizer);
    *description = out.describe();
    return out.tokenizer;
  }
  if (is_prepared_dir(p.string())) {
    DataSplits out = load_prepared(p.string(), /*verify_hashes=*/false);
    check_prepared_lengths(out, data.seq_len);
    *description = out.train->describe();
    return out.tokenizer;
  }
  const bool text_file = data.path != "task" && data.path.rfind("builtin:", 0) != 0;
  if (!text_file) {  // generated in memory: cheap to load as run does
    DataSplits out = load_data(data, base_dir, tokenizer, task_text);
    *description = out.train->describe();
    return out.tokenizer;
  }
  *description = p.string();
  if (!check_text_path(data, p))
    return tokenizer ? tokenizer : data.tokenizer == "char" ? nullptr : load_tokenizer(data.tokenizer);
  const bool char_vocabulary = tokenizer ? tokenizer->kind() == "char" : data.tokenizer == "char";
  if (!char_vocabulary) {
    // A BPE's token count needs the text tokenized: only the file (regular, within its limit, not
    // empty) and the tokenizer's own files are checked.
    try {
      const RegularFile f(p.string(), file_kind::kText);
      if (f.size() == 0) throw Error("'" + p.string() + "' is empty; point data.path at a file with text in it");
    } catch (const Error& e) {
      throw Error(std::string("data.path: ") + e.what());
    }
    return tokenizer ? tokenizer : load_tokenizer(data.tokenizer);
  }
  std::string name;
  const std::string text = data_text(data, p, task_text, &name);
  auto tok = tokenizer ? tokenizer : make_char_tokenizer(text);
  // A char vocabulary has one token per byte; a checkpoint's tokenizer encodes the text as run would.
  check_split_lengths(
      name, tokenizer ? static_cast<int64_t>(tok->encode(text).size()) : static_cast<int64_t>(text.size()), data);
  return tok;
}

Sampling parse_sampling(const std::string& name) {
  if (name == "random") return Sampling::Random;
  if (name == "epoch") return Sampling::Epoch;
  throw Error("data.sampling must be random or epoch (got '" + name + "')");
}

namespace {
// A pseudo-random permutation of [0, n) as a pure function (no table, O(1) memory, any n): a
// 4-round Feistel network on the smallest even number of bits covering n, cycle-walking until the
// value lands inside [0, n). Expected walks are < 4 since the domain is at most 4n.
int64_t permute(int64_t i, int64_t n, uint64_t key) {
  int bits = 2;
  while ((int64_t{1} << bits) < n) bits += 2;
  const int half = bits / 2;
  const uint64_t mask = (uint64_t{1} << half) - 1;
  uint64_t x = static_cast<uint64_t>(i);
  do {
    uint64_t l = x >> half, r = x & mask;
    for (uint64_t round = 0; round < 4; ++round) {
      const uint64_t f = splitmix64(key ^ (round << 56) ^ r) & mask;
      std::tie(l, r) = std::make_pair(r, l ^ f);
    }
    x = (l << half) | r;
  } while (x >= static_cast<uint64_t>(n));
  return static_cast<int64_t>(x);
}
}  // namespace

std::vector<int64_t> draw_items(const BatchSpec& spec, int64_t n, int64_t step, int64_t micro_step, int64_t rank) {
  const int64_t B = spec.batch_size;
  std::vector<int64_t> out(static_cast<size_t>(B));
  if (spec.sampling == Sampling::Random) {
    // One stream per (step, micro-batch) for the whole job; rank r takes rows [r B, (r+1) B) of it,
    // so W ranks x B rows draw exactly what one process drawing W B rows would.
    std::mt19937_64 rng(splitmix64(splitmix64(splitmix64(spec.seed) ^ static_cast<uint64_t>(step)) ^
                                   (static_cast<uint64_t>(micro_step) << 20)));
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    for (int64_t skip = 0; skip < rank * B; ++skip) pick(rng);
    for (auto& item : out) item = pick(rng);
  } else {
    // The g-th row of the run (counting every row of every micro-batch of every rank in order) is
    // item permute(g mod n) of epoch g / n.
    const int64_t first = ((step * spec.micro_steps + micro_step) * spec.world_size + rank) * B;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t g = first + b, epoch = g / n;
      out[static_cast<size_t>(b)] = permute(g % n, n, splitmix64(spec.seed ^ splitmix64(static_cast<uint64_t>(epoch))));
    }
  }
  return out;
}

Batch get_batch(const TokenDataset& data, const BatchSpec& spec, int64_t step, int64_t micro_step, int64_t rank) {
  const int64_t B = spec.batch_size, T = spec.seq_len, span = data.size() - T - 1;
  if (span < 0)
    throw Error(data.describe() + " holds " + std::to_string(data.size()) +
                " tokens, fewer than seq_len + 1 = " + std::to_string(T + 1));
  auto buf = at::empty({B, T + 1}, at::kLong);
  int64_t* p = buf.data_ptr<int64_t>();
  // Random: windows at any offset; epoch: window w covers tokens [w (T+1), (w+1)(T+1)).
  const bool random = spec.sampling == Sampling::Random;
  const auto items = draw_items(spec, random ? span + 1 : data.size() / (T + 1), step, micro_step, rank);
  for (int64_t b = 0; b < B; ++b) data.read(random ? items[b] : items[b] * (T + 1), T + 1, p + b * (T + 1));
  return {buf.narrow(1, 0, T).contiguous(), buf.narrow(1, 1, T).contiguous()};
}

// ---- downloads --------------------------------------------------------------------------------

std::string sha256_file(const std::string& path) {
  const RegularFile in(path, file_kind::kShard);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  for (uint64_t at = 0; at < in.size();) {
    const uint64_t n = std::min<uint64_t>(buf.size(), in.size() - at);
    try {
      in.read_at(at, n, buf.data());
    } catch (...) {
      EVP_MD_CTX_free(ctx);
      throw;
    }
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
    at += n;
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  char b[3];
  for (unsigned int i = 0; i < len; ++i) std::snprintf(b, sizeof b, "%02x", md[i]), hex += b;
  return hex;
}

namespace {
// libcurl's write callback: append the received bytes to the download's stream.
size_t write_to_stream(char* data, size_t size, size_t n, void* stream) {
  static_cast<std::ostream*>(stream)->write(data, static_cast<std::streamsize>(size * n));
  return static_cast<std::ostream*>(stream)->good() ? size * n : 0;
}
}  // namespace

void download_file(const std::string& url, const std::string& dest, int64_t expected_size,
                   const std::string& expected_sha256) {
  const std::string by_hand = "; without network, download " + url + " yourself and put it at " + dest;
  if (fs::path(dest).has_parent_path()) fs::create_directories(fs::path(dest).parent_path());
  AtomicFile file(dest);
  CURL* curl = curl_easy_init();
  char err[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_to_stream);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, static_cast<std::ostream*>(&file.stream()));
  curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 20L);
  curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, err);
  CURLcode rc = curl_easy_perform(curl);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK)
    throw Error("data.download: fetching " + url + " failed (" + (err[0] ? err : curl_easy_strerror(rc)) + ")" +
                by_hand);
  file.close_stream();
  const auto size = static_cast<int64_t>(fs::file_size(file.temp_path()));
  if (expected_size > 0 && size != expected_size)
    throw Error("data.download: " + url + " gave " + std::to_string(size) + " bytes, expected " +
                std::to_string(expected_size) + by_hand);
  if (!expected_sha256.empty()) {
    const std::string got = sha256_file(file.temp_path());
    if (got != expected_sha256)
      throw Error("data.download: " + url + " has SHA-256 " + got + ", expected " + expected_sha256 + by_hand);
  }
  file.commit();
}

}  // namespace linearnexus
