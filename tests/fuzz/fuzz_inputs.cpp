// A standing fuzz harness for the readers of untrusted files: the safetensors checkpoint header, the
// YAML experiment parser, meta.json (and the tokenizer it embeds), the BPE files (encoder.json +
// vocab.bpe, .tiktoken), the ELF symbol reader of the plugin host, a Hugging Face config.json, and a
// checkpoint's optimizer state as a resume reads it. Built with
// -fsanitize=address,undefined (tests/fuzz/CMakeLists.txt); no libFuzzer: a seeded mutation loop
// from valid inputs made here.
//
//   fuzz_inputs TARGET [--seconds S] [--seed N] [--max-iterations K]
//
// TARGET: checkpoint | yaml | meta | bpe | elf | config | optimizer. A reader may only ever throw linearnexus::Error;
// anything else (another exception, a sanitizer report, a broken invariant) ends the run with the
// input saved to fuzz-crash-TARGET.bin. Same seed and iterations, same inputs.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "linearnexus/host/bpe_tokenizer.h"
#include "linearnexus/error.h"
#include "linearnexus/host/tokenizers.h"
#include "elf_exports.h"
#include "prepared_meta.h"
#include "safetensors_header.h"
#include "fuzz_models.h"
#include "fuzz_yaml.h"

namespace fs = std::filesystem;
using namespace linearnexus;

namespace {

[[noreturn]] void fail(const std::string& target, const std::string& input, const std::string& why) {
  const std::string out = "fuzz-crash-" + target + ".bin";
  std::ofstream(out, std::ios::binary) << input;
  std::cerr << "fuzz " << target << ": " << why << " (input saved to " << out << ")\n";
  std::exit(2);
}

// ---- mutations --------------------------------------------------------------------------------

const char* kTokens[] = {"-1",
                         "0",
                         "18446744073709551615",
                         "9223372036854775807",
                         "-9223372036854775808",
                         "1e308",
                         "\"\"",
                         "null",
                         "[]",
                         "{}",
                         "[[[[[[[[[[",
                         "}}}}",
                         "\"__metadata__\"",
                         "\"F32\"",
                         "\"BF16\"",
                         "\\u0000",
                         "\xff\xfe",
                         ": ",
                         "\n- ",
                         "{a: ",
                         "&x ",
                         "*x",
                         "!!binary ",
                         "<<: *x",
                         "~",
                         "'"};

std::string mutate(std::string s, const std::vector<std::string>& seeds, std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return n ? static_cast<size_t>(rng() % n) : 0; };
  const int rounds = 1 + static_cast<int>(rng() % 4);
  for (int r = 0; r < rounds; ++r) {
    switch (rng() % 8) {
      case 0:  // flip a bit
        if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1u << (rng() % 8));
        break;
      case 1:  // set a byte
        if (!s.empty()) s[pick(s.size())] = static_cast<char>(rng());
        break;
      case 2:  // delete a range
        if (!s.empty()) {
          const size_t at = pick(s.size());
          s.erase(at, 1 + pick(std::min<size_t>(64, s.size() - at)));
        }
        break;
      case 3:  // duplicate a range
        if (!s.empty()) {
          const size_t at = pick(s.size()), n = 1 + pick(std::min<size_t>(64, s.size() - at));
          s.insert(pick(s.size() + 1), s.substr(at, n));
        }
        break;
      case 4:  // insert an interesting token
        s.insert(pick(s.size() + 1), kTokens[pick(sizeof kTokens / sizeof *kTokens)]);
        break;
      case 5: {  // replace a run of digits with an interesting number
        const size_t at = s.find_first_of("0123456789", pick(s.size() + 1));
        if (at != std::string::npos) {
          const size_t end = s.find_first_not_of("0123456789", at);
          s.replace(at, (end == std::string::npos ? s.size() : end) - at, kTokens[pick(5)]);
        }
        break;
      }
      case 6: {  // splice with another seed
        const std::string& o = seeds[pick(seeds.size())];
        if (!o.empty() && !s.empty()) s = s.substr(0, pick(s.size())) + o.substr(pick(o.size()));
        break;
      }
      default:  // truncate
        if (!s.empty()) s.resize(pick(s.size()));
    }
  }
  return s;
}

// ---- targets ----------------------------------------------------------------------------------

std::string le64(uint64_t n) {
  std::string b(8, '\0');
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(n >> (8 * i));
  return b;
}

std::vector<std::string> checkpoint_seeds() {
  const std::string h1 =
      "{\"__metadata__\":{\"format\":\"linearnexus-checkpoint-1\",\"step\":\"12\",\"plugins\":\"{}\"},"
      "\"model.w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
      "\"optim.step\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[24,32]},"
      "\"rng.cpu\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[32,40]}}";
  const std::string h2 =
      "{\"a\":{\"dtype\":\"BF16\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
      "\"b\":{\"dtype\":\"BOOL\",\"shape\":[3],\"data_offsets\":[0,3]}}";
  return {le64(h1.size()) + h1 + std::string(40, '\x01'), le64(h2.size()) + h2 + "abc"};
}

void run_checkpoint(const std::string& in) {
  std::istringstream s(in);
  SafetensorsHeader h = read_safetensors_header(s, in.size(), "fuzz.safetensors");
  // What load_safetensors relies on: every span inside the file, sized by its shape, disjoint.
  for (const auto& t : h.tensors) {
    uint64_t n = static_cast<uint64_t>(safetensors_dtype_size(t.dtype));
    for (int64_t d : t.shape) {
      if (d < 0) throw std::logic_error("negative dimension accepted");
      n *= static_cast<uint64_t>(d);
    }
    if (n != t.end - t.begin || h.data_start + t.end > in.size())
      throw std::logic_error("span accepted outside its bounds");
    for (const auto& u : h.tensors)
      if (&u != &t && t.begin < u.end && u.begin < t.end) throw std::logic_error("overlapping spans accepted");
  }
}

std::vector<std::string> meta_seeds() {
  const std::string sha(64, 'a');
  return {
      "{\"format\":\"linearnexus-tokens-1\",\"dtype\":\"uint16\",\"vocab_size\":3,"
      "\"tokenizer\":{\"kind\":\"char\",\"bytes\":[10,97,98]},\"inputs\":[\"x.txt\"],"
      "\"train\":{\"files\":[\"train.bin\"],\"tokens\":[90],\"sha256\":[\"" +
      sha +
      "\"]},"
      "\"val\":{\"files\":[\"val.bin\",\"val2.bin\"],\"tokens\":[5,5],\"sha256\":[\"" +
      sha + "\",\"" + sha + "\"]}}"};
}

void run_meta(const std::string& in) {
  PreparedMeta m = parse_prepared_meta(in, "fuzz/meta.json");
  // The embedded tokenizer, as load_prepared reads it (a gpt2 spec names files: keep it to char).
  if (m.tokenizer_json.find("gpt2") == std::string::npos) tokenizer_from_json(m.tokenizer_json)->vocab_size();
}

// GPT-2's byte -> printable code point table, as UTF-8.
std::string byte_token(int b) {
  int cp = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80)
    s += static_cast<char>(cp);
  else
    s += static_cast<char>(0xC0 | (cp >> 6)), s += static_cast<char>(0x80 | (cp & 0x3F));
  return s;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

// Seeds come in pairs joined by a separator line: encoder.json, vocab.bpe; or one .tiktoken file; or
// one Hugging Face tokenizer.json (Split regex, NFC, added token, both merges forms).
const std::string kSplit = "\n=====\n";

std::vector<std::string> bpe_seeds() {
  std::string enc = "{";
  for (int b = 0; b < 256; ++b) enc += "\"" + json_escape(byte_token(b)) + "\": " + std::to_string(b) + ", ";
  enc += "\"th\": 256, \"the\": 257, \"<|endoftext|>\": 258}";
  const std::string merges = "#version: 0.2\nt h\nth e\n";
  std::string tik;
  const char* b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (int b = 0; b < 256; ++b)
    tik += std::string{b64[b >> 2], b64[(b & 3) << 4], '=', '='} + " " + std::to_string(b) + "\n";
  tik += "dGg= 256\ndGhl 257\n";  // "th", "the"
  std::string vocab = "{";
  for (int b = 0; b < 256; ++b) vocab += "\"" + json_escape(byte_token(b)) + "\": " + std::to_string(b) + ", ";
  vocab += "\"th\": 256, \"the\": 257}";
  const std::string hf =
      R"({"added_tokens": [{"id": 258, "content": "<|im_end|>", "special": true}], "normalizer": {"type": "NFC"},
 "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}| ?\\p{L}+|\\s+"},
 "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]},
 "decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "ignore_merges": true, "merges": ["t h", ["th", "e"]], "vocab": )" +
      vocab + "}}";
  return {enc + kSplit + merges, "TIKTOKEN" + kSplit + tik, "HFJSON" + kSplit + hf};
}

void run_bpe(const std::string& in, const fs::path& dir) {
  const size_t cut = in.find(kSplit);
  const std::string a = in.substr(0, cut), b = cut == std::string::npos ? "" : in.substr(cut + kSplit.size());
  std::string path;
  if (a == "HFJSON") {
    path = (dir / "tokenizer.json").string();
    std::ofstream(path, std::ios::binary) << b;
    auto tok = linearnexus::load_tokenizer(path);
    tok->decode(tok->encode("the theme, <|im_end|> \xff\xfe 123 thethe caf\x65\xcc\x81\n"));
    return;
  }
  if (a == "TIKTOKEN") {
    path = (dir / "r.tiktoken").string();
    std::ofstream(path, std::ios::binary) << b;
  } else {
    std::ofstream(dir / "encoder.json", std::ios::binary) << a;
    std::ofstream(dir / "vocab.bpe", std::ios::binary) << b;
    path = dir.string();
  }
  BPETokenizer tok = BPETokenizer::from_path(path);
  const auto ids = tok.encode("the theme, <|endoftext|> \xff\xfe 123 thethe\n");
  tok.decode(ids);
}

std::vector<std::string> elf_seeds(const std::string& plugin) {
  std::ifstream f(plugin, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return {ss.str()};
}

void run_elf(const std::string& in, const fs::path& dir) {
  const std::string path = (dir / "x.so").string();
  std::ofstream(path, std::ios::binary) << in;
  elf_exports_symbol(path, "linearnexus_plugin_info");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr
        << "usage: fuzz_inputs checkpoint|yaml|meta|bpe|elf|config|optimizer [--seconds S] [--seed N] [--max-iterations K]\n";
    return 2;
  }
  const std::string target = argv[1];
  double seconds = 20;
  uint64_t seed = 1;
  int64_t max_iterations = -1;
  std::string elf_seed_file;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--seconds")
      seconds = std::stod(v);
    else if (k == "--seed")
      seed = std::stoull(v);
    else if (k == "--max-iterations")
      max_iterations = std::stoll(v);
    else if (k == "--elf-seed")
      elf_seed_file = v;
  }
  const fs::path dir = fs::temp_directory_path() / ("linearnexus_fuzz_" + target + "_" + std::to_string(::getpid()));
  fs::create_directories(dir);

  std::vector<std::string> seeds;
  std::function<void(const std::string&)> run;
  if (target == "checkpoint")
    seeds = checkpoint_seeds(), run = run_checkpoint;
  else if (target == "meta")
    seeds = meta_seeds(), run = run_meta;
  else if (target == "bpe")
    seeds = bpe_seeds(), run = [&](const std::string& in) { run_bpe(in, dir); };
  else if (target == "elf")
    seeds = elf_seeds(elf_seed_file), run = [&](const std::string& in) { run_elf(in, dir); };
  else if (target == "yaml")
    seeds = fuzz_yaml_seeds(), run = fuzz_yaml_run;
  else if (target == "config")
    seeds = fuzz_config_seeds(), run = fuzz_config_run;
  else if (target == "optimizer")
    seeds = fuzz_optimizer_seeds(dir.string()),
    run = [&](const std::string& in) { fuzz_optimizer_run(in, dir.string()); };
  else {
    std::cerr << "unknown target '" << target << "'\n";
    return 2;
  }
  // Every seed must be accepted as it is: otherwise the loop would only explore error paths.
  for (const auto& s : seeds) {
    try {
      run(s);
    } catch (const std::exception& e) {
      fail(target, s, std::string("a valid seed was refused: ") + e.what());
    }
  }
  std::mt19937_64 rng(seed);
  const auto t0 = std::chrono::steady_clock::now();
  int64_t n = 0, refused = 0;
  for (; max_iterations < 0 || n < max_iterations; ++n) {
    if ((n & 63) == 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) break;
    const std::string input = mutate(seeds[rng() % seeds.size()], seeds, rng);
    try {
      run(input);
    } catch (const Error&) {
      ++refused;  // the expected outcome for most mutants: a clean, named error
    } catch (const std::exception& e) {
      fail(target, input, std::string("a reader threw something other than linearnexus::Error: ") + e.what());
    }
  }
  fs::remove_all(dir);
  std::cout << "fuzz " << target << ": " << n << " inputs (" << refused << " refused with an Error), seed " << seed
            << ", no sanitizer report\n";
  return 0;
}
