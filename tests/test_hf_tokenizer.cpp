// Hugging Face tokenizers: ids identical to `tokenizers` / `sentencepiece` on the committed fixtures
// (tests/fixtures/hf_tokenizers, made by its make_fixtures.py on the GPU machine), round trips, added
// and special tokens, how a run finds a tokenizer (folders, saved {kind, path}, prepared data), and
// one clear error per bad file. The GPT-2 case rebuilds its tokenizer.json from the shared GPT-2
// files (too big to commit) and skips without them.
#include <nlohmann/json.hpp>

#include "linearnexus/host/bpe_tokenizer.h"
#include "linearnexus/host/token_files.h"
#include "linearnexus/host/tokenizers.h"
#include "test_util.h"

using linearnexus::load_tokenizer;
using linearnexus::Tokenizer;
using lntest::error_of;
using lntest::TempDir;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string fixture(const std::string& rel) {
  return (fs::path(LINEARNEXUS_TEST_FIXTURES_DIR) / "hf_tokenizers" / rel).string();
}

json read_json(const std::string& path) { return json::parse(lntest::read_text(path)); }

void write_json(const std::string& path, const json& j) { lntest::write_text(path, j.dump()); }

// Every case of DIR/expected.json: the ids `tokenizers` gave, its decoding, and (where decoding
// gives the text back there: not for text NFC changes) decode(encode(text)) == text.
void check_against_expected(const Tokenizer& tok, const std::string& expected_file) {
  const json expected = read_json(expected_file);
  REQUIRE(expected["cases"].size() >= 10);
  CHECK(tok.vocab_size() == expected["vocab_size"].get<int64_t>());
  for (const auto& c : expected["cases"]) {
    const std::string text = c["text"];
    INFO(expected["tokenizer"].get<std::string>() << " on " << json(text).dump());
    const auto ids = tok.encode(text);
    CHECK(ids == c["ids"].get<std::vector<int64_t>>());
    CHECK(tok.decode(c["ids"].get<std::vector<int64_t>>()) == c["decoded"].get<std::string>());
    if (c["decoded"] == text) CHECK(tok.decode(ids) == text);
  }
}

// The fixture's tokenizer files copied into a fresh folder (optionally edited), for tests that move
// or break them.
void copy_fixture(const std::string& name, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(fixture(name))) fs::copy_file(e.path(), to / e.path().filename());
}

}  // namespace

TEST_CASE("hf tokenizer: Llama-3, Qwen2 and SmolLM styles give Hugging Face's ids", "[hf_tokenizer]") {
  for (const std::string name : {"llama3", "qwen2", "smollm"}) {
    auto tok = load_tokenizer(fixture(name));  // the folder, as a Hugging Face model folder is given
    CHECK(tok->kind() == "hf");
    check_against_expected(*tok, fixture(name + "/expected.json"));
    // The chat template is kept verbatim; the end-of-text token is the config's eos_token.
    const json config = read_json(fixture(name + "/tokenizer_config.json"));
    CHECK(tok->chat_template() == config["chat_template"].get<std::string>());
    CHECK(tok->encode(config["eos_token"].get<std::string>()) == std::vector<int64_t>{tok->eos_id()});
    if (config["bos_token"].is_string())
      CHECK(tok->encode(config["bos_token"].get<std::string>()) == std::vector<int64_t>{tok->bos_id()});
    else
      CHECK(tok->bos_id() == -1);
  }
}

TEST_CASE("hf tokenizer: added tokens are matched before splitting, special or not", "[hf_tokenizer]") {
  auto tok = load_tokenizer(fixture("qwen2/tokenizer.json"));
  const auto start = tok->encode("<|im_start|>"), think = tok->encode("<think>");
  REQUIRE(start.size() == 1);
  REQUIRE(think.size() == 1);
  // Glued to text on both sides, and a prefix of an added token is ordinary text.
  const auto ids = tok->encode("a<|im_start|>b<think><|im_start");
  CHECK(std::count(ids.begin(), ids.end(), start[0]) == 1);
  CHECK(std::count(ids.begin(), ids.end(), think[0]) == 1);
  CHECK(tok->decode(ids) == "a<|im_start|>b<think><|im_start");
  // NFC (Qwen2's normalizer): the decomposed "e" + U+0301 encodes as the composed U+00E9.
  CHECK(tok->encode("caf\x65\xcc\x81") == tok->encode("caf\xc3\xa9"));
}

TEST_CASE("hf tokenizer: GPT-2's tokenizer.json (both merges forms) equals Hugging Face and the GPT-2 files",
          "[hf_tokenizer]") {
  const std::string gpt2 = lntest::shared_data("gpt2");
  if (gpt2.empty() || !fs::exists(fs::path(gpt2) / "vocab.bpe"))
    LN_SKIP("the shared GPT-2 files (../shared/data/gpt2) are absent");
  // The skeleton is the file `tokenizers` wrote with its vocab and merges emptied: fill them back in.
  json j = read_json(fixture("gpt2/tokenizer_skeleton.json"));
  j["model"]["vocab"] = read_json(gpt2 + "/encoder.json");
  std::istringstream lines(lntest::read_text(gpt2 + "/vocab.bpe"));
  json pairs = json::array(), strings = json::array();
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    strings.push_back(line);
    pairs.push_back({line.substr(0, line.find(' ')), line.substr(line.find(' ') + 1)});
  }
  const auto legacy = linearnexus::BPETokenizer::from_gpt2_files(gpt2 + "/encoder.json", gpt2 + "/vocab.bpe");
  for (const json& merges : {pairs, strings}) {
    TempDir dir;
    j["model"]["merges"] = merges;
    write_json(dir / "tokenizer.json", j);
    fs::copy_file(fixture("gpt2/tokenizer_config.json"), dir / "tokenizer_config.json");
    auto tok = load_tokenizer(dir.path.string());
    check_against_expected(*tok, fixture("gpt2/expected.json"));
    CHECK(tok->eos_id() == 50256);
    for (const auto& c : read_json(fixture("gpt2/expected.json"))["cases"])
      CHECK(tok->encode(c["text"].get<std::string>()) == legacy.encode(c["text"].get<std::string>()));
  }
}

TEST_CASE("hf tokenizer: SentencePiece tokenizer.model files give sentencepiece's ids", "[hf_tokenizer]") {
  if (!linearnexus::sentencepiece_available()) {
    CHECK_CONTAINS(error_of([] { load_tokenizer(fixture("sp_bpe")); }), "libsentencepiece");
    LN_SKIP("this build has no libsentencepiece (install libsentencepiece-dev)");
  }
  for (const std::string name : {"sp_unigram", "sp_bpe"}) {
    auto tok = load_tokenizer(fixture(name));
    CHECK(tok->kind() == "sentencepiece");
    CHECK_FALSE(tok->chunks_at_newlines());
    check_against_expected(*tok, fixture(name + "/expected.json"));
    CHECK(tok->eos_id() == read_json(fixture(name + "/expected.json"))["eos_id"].get<int64_t>());
    CHECK(tok->bos_id() == 1);  // <s>, sentencepiece's default
    CHECK_FALSE(tok->chat_template().empty());
    // What a checkpoint saves reads back to the same tokenizer.
    CHECK(linearnexus::tokenizer_from_json(tok->to_json())->encode("Hello, world!") == tok->encode("Hello, world!"));
  }
}

TEST_CASE("hf tokenizer: a run finds its tokenizer files, also after the folder moved", "[hf_tokenizer]") {
  TempDir dir;
  copy_fixture("llama3", dir.path / "run");
  auto tok = load_tokenizer((dir.path / "run").string());
  const std::string text = "To be, or not to be<|eot_id|>";
  const auto ids = tok->encode(text);
  // Saved as {kind: hf, path}: read back directly, and from the moved folder via its base folder.
  const std::string saved = tok->to_json();
  CHECK(json::parse(saved)["kind"] == "hf");
  CHECK(linearnexus::tokenizer_from_json(saved)->encode(text) == ids);
  // A trained run folder holds LinearNexus's own tokenizer.json ({kind, ...}): read back as well.
  fs::create_directories(dir.path / "trained");
  lntest::write_text(dir / "trained/tokenizer.json", saved);
  CHECK(load_tokenizer(dir / "trained")->encode(text) == ids);
  fs::rename(dir.path / "run", dir.path / "moved");
  CHECK_CONTAINS(error_of([&] { linearnexus::tokenizer_from_json(saved); }), "tokenizer.json");
  CHECK(linearnexus::tokenizer_from_json(saved, (dir.path / "moved").string())->encode(text) == ids);
  // A relative path (what an imported run's checkpoint may hold) is relative to that folder.
  CHECK(linearnexus::tokenizer_from_json(R"({"kind": "hf", "path": "tokenizer.json"})", (dir.path / "moved").string())
            ->chat_template() == tok->chat_template());
}

TEST_CASE("hf tokenizer: data prepare in small chunks gives the ids of the whole text", "[hf_tokenizer]") {
  // Llama-3's regex joins punctuation to the newlines after it ("!\n"): chunks must not cut there.
  std::string text;
  for (int i = 0; i < 40; ++i) text += "Line " + std::to_string(i) + " ends here!\nNext one 12345.\nword\nMORE text\n";
  std::vector<std::string> names = {"llama3", "qwen2"};
  if (linearnexus::sentencepiece_available()) names.push_back("sp_bpe");  // one chunk per file
  for (const auto& name : names) {
    INFO(name);
    TempDir dir;
    lntest::write_text(dir / "in.txt", text);
    linearnexus::PrepareOptions o;
    o.inputs = {dir / "in.txt"};
    o.tokenizer = fixture(name);
    o.out_dir = dir / "prepared";
    o.val_fraction = 0.5;
    o.chunk_bytes = 37;
    o.progress = false;
    linearnexus::prepare_token_files(o);
    const auto data = linearnexus::load_prepared(o.out_dir);
    std::vector<int64_t> ids = data.tokenizer->encode(text);
    if (data.tokenizer->eos_id() >= 0) ids.push_back(data.tokenizer->eos_id());
    std::vector<int64_t> got(static_cast<size_t>(data.train->size() + data.val->size()));
    data.train->read(0, data.train->size(), got.data());
    data.val->read(0, data.val->size(), got.data() + data.train->size());
    CHECK(got == ids);
  }
}

TEST_CASE("hf tokenizer: bad files give one error naming the file and the key", "[hf_tokenizer]") {
  TempDir dir;
  const json good = read_json(fixture("llama3/tokenizer.json"));
  const auto broken = [&](const std::string& name, const std::function<void(json&)>& edit) {
    json j = good;
    edit(j);
    const std::string path = dir / (name + ".json");
    write_json(path, j);
    return error_of([&] { load_tokenizer(path); });
  };
  const auto expect = [&](const std::string& err, const std::string& file, const std::string& key) {
    INFO(err);
    CHECK_CONTAINS(err, file);
    CHECK_CONTAINS(err, key);
  };
  expect(broken("wordpiece", [](json& j) { j["model"]["type"] = "WordPiece"; }), "wordpiece.json",
         "model.type is 'WordPiece'");
  expect(broken("unigram",
                [](json& j) {
                  j["model"] = {{"type", "Unigram"}, {"vocab", json::array()}};
                }),
         "unigram.json", "tokenizer.model");
  expect(broken("unknown_merge", [](json& j) { j["model"]["merges"][3] = "nosuch token"; }), "unknown_merge.json",
         "model.merges[3]");
  expect(broken("bad_merge", [](json& j) { j["model"]["merges"][0] = 7; }), "bad_merge.json", "model.merges[0]");
  expect(broken("metaspace",
                [](json& j) {
                  j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Metaspace"}};
                }),
         "metaspace.json", "pre_tokenizer.pretokenizers[0].type is 'Metaspace'");
  expect(broken("not_isolated", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }),
         "not_isolated.json", "pre_tokenizer.pretokenizers[0].behavior");
  expect(broken("bad_regex", [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; }),
         "bad_regex.json", "cannot compile the pre-tokenizer regex");
  expect(broken("fallback", [](json& j) { j["model"]["byte_fallback"] = true; }), "fallback.json",
         "model.byte_fallback");
  expect(broken("lstrip", [](json& j) { j["added_tokens"][1]["lstrip"] = true; }), "lstrip.json",
         "added_tokens[1].lstrip");
  expect(broken("gap", [](json& j) { j["added_tokens"][0]["id"] = 999; }), "gap.json",
         "added_tokens[0] has id 999, but the file defines 485 tokens");
  expect(broken("nfkc",
                [](json& j) {
                  j["normalizer"] = {{"type", "NFKC"}};
                }),
         "nfkc.json", "normalizer.type is 'NFKC'");
  expect(broken("wordpiece_decoder",
                [](json& j) {
                  j["decoder"] = {{"type", "WordPiece"}};
                }),
         "wordpiece_decoder.json", "decoder.type");
  expect(broken("no_bytelevel", [](json& j) { j["pre_tokenizer"] = j["pre_tokenizer"]["pretokenizers"][0]; }),
         "no_bytelevel.json", "pre_tokenizer has no ByteLevel");
  expect(broken("missing_byte",
                [](json& j) {
                  j["model"]["vocab"].erase("!");
                  j["model"]["merges"] = json::array();
                }),
         "missing_byte.json", "whose ids must run 0..483");

  lntest::write_text(dir / "malformed.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {");
  expect(error_of([&] { load_tokenizer(dir / "malformed.json"); }), "malformed.json", "not valid JSON");
  expect(error_of([&] { load_tokenizer(dir / "nosuch/tokenizer.json"); }), "nosuch/tokenizer.json", "does not exist");
  fs::create_directories(dir.path / "empty");
  expect(error_of([&] { load_tokenizer(dir / "empty"); }), "empty", "holds no tokenizer.json, tokenizer.model");
  // The config's eos_token must be a token.
  copy_fixture("llama3", dir.path / "bad_eos");
  json config = read_json(fixture("llama3/tokenizer_config.json"));
  config["eos_token"] = "<|nosuch|>";
  write_json(dir / "bad_eos/tokenizer_config.json", config);
  expect(error_of([&] { load_tokenizer(dir / "bad_eos"); }), "tokenizer_config.json", "eos_token");
  lntest::write_text(dir / "garbage.model", "not a sentencepiece model");
  CHECK_CONTAINS(error_of([&] { load_tokenizer(dir / "garbage.model"); }), "garbage.model");

  // Through the CLI: one clean error line, non-zero exit.
  lntest::check_one_clean_error(lntest::run_cli("tokenize --tokenizer " + dir / "wordpiece.json" + " </dev/null"),
                                "model.type is 'WordPiece'");
}

TEST_CASE("hf tokenizer: `linearnexus tokenize` reads a Hugging Face folder", "[hf_tokenizer]") {
  TempDir dir;
  const json c = read_json(fixture("smollm/expected.json"))["cases"][9];
  lntest::write_text(dir / "in.txt", c["text"].get<std::string>());
  const auto r = lntest::run_cli("tokenize --tokenizer " + fixture("smollm") + " <" + (dir / "in.txt"));
  REQUIRE(r.code == 0);
  std::istringstream out(r.out);
  std::vector<int64_t> ids;
  for (int64_t id; out >> id;) ids.push_back(id);
  CHECK(ids == c["ids"].get<std::vector<int64_t>>());
}
