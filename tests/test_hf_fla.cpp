// `convert hf-export / hf-import` of the deltanet and gated_deltanet blocks in flash-linear-attention's
// (fla) layouts, DeltaNetForCausalLM and GatedDeltaNetForCausalLM (plugins/deltanet/hf_fla_deltanet.cpp):
// export -> import is bit-exact, fla's tensors are the block's fused ones split as fla names them, and
// what the blocks cannot compute is refused naming config.json's key. Logits against fla's own classes
// are test_hf_convert's fixture test (fixtures made on the GPU machine by make_fla_fixtures.py).
#include <torch/torch.h>

#include "catch.h"
#include "linearnexus/host/hf_convert.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/host/scoring.h"
#include "linearnexus/host/tokenizers.h"
#include "hf_test_util.h"
#include "test_util.h"

using namespace linearnexus;
using lntest::check_bit_equal;
using lntest::error_of;
using lntest::model_tensors_of;
using lntest::native_run;
using lntest::TempDir;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::string model_yaml(const std::string& block, const std::string& block_keys, const std::string& extra = "") {
  return "{vocab_size: 40, hidden_size: 16, n_layer: 2, max_seq_len: 32, norm_eps: 1.0e-6, " + extra +
         "block_pattern: [" + block + "], blocks: {" + block + ": {n_head: 4, o_norm_eps: 1.0e-6, " + block_keys +
         "}}}";
}

const char* kLayer = "model.layers.0.attn.";

}  // namespace

TEST_CASE("fla DeltaNet / GatedDeltaNet: hf-export -> hf-import is bit-exact, with fla's names and config", "[hf]") {
  PluginHost host;
  TempDir t;
  struct Case {
    std::string block, keys, extra, cls, type;
  };
  const Case cases[] = {
      {"deltanet", "short_conv: true, conv_size: 3", "tie_embeddings: false, ", "DeltaNetForCausalLM", "delta_net"},
      {"deltanet", "short_conv: false, mlp_hidden: 24", "", "DeltaNetForCausalLM", "delta_net"},
      {"gated_deltanet", "short_conv: true", "tie_embeddings: false, ", "GatedDeltaNetForCausalLM", "gated_deltanet"},
      {"gated_deltanet", "short_conv: false", "", "GatedDeltaNetForCausalLM", "gated_deltanet"},
  };
  int n = 0;
  for (const auto& c : cases) {
    const std::string name = c.block + std::to_string(n++);
    INFO(name << " " << c.keys);
    const bool conv = c.keys.find("short_conv: true") != std::string::npos;
    const bool gated = c.block == "gated_deltanet";
    const std::string run = native_run(host, model_yaml(c.block, c.keys, c.extra), t, name);
    hf_export(run, t / (name + "_hf"), host);
    const json config = json::parse(lntest::read_text(t / (name + "_hf/config.json")));
    CHECK(config["architectures"][0] == c.cls);
    CHECK(config["model_type"] == c.type);
    CHECK(config["num_heads"] == 4);
    CHECK(config["use_short_conv"] == conv);
    CHECK(config["norm_eps"].get<double>() == 1e-6);
    CHECK(config["intermediate_size"] == (c.keys.find("mlp_hidden: 24") != std::string::npos ? 24 : 64));
    CHECK(config["tie_word_embeddings"] == (c.extra.find("tie_embeddings: false") == std::string::npos));
    CHECK(config["use_gate"] == gated);
    CHECK(config["expand_v"].get<double>() == 1.0);
    if (gated) CHECK(config["head_dim"] == 4);
    if (conv) CHECK(config["conv_size"] == (gated ? 4 : 3));

    // fla's tensors are the block's fused ones, split: q, k, v rows of qkv and conv_weight; beta's,
    // then the decay's rows of ba.
    const auto ours = model_tensors_of(run);
    const auto theirs = load_safetensors(t / (name + "_hf/model.safetensors")).tensors;
    const std::string l = kLayer;
    const at::Tensor& qkv = ours.at("model.blocks.0.qkv.weight");
    CHECK(theirs.at(l + "k_proj.weight").equal(qkv.narrow(0, 16, 16)));
    CHECK(theirs.at(l + "v_proj.weight").equal(qkv.narrow(0, 32, 16)));
    CHECK((theirs.count(l + "q_conv1d.weight") > 0) == conv);
    if (conv) {
      const at::Tensor& w = ours.at("model.blocks.0.conv_weight");
      REQUIRE(theirs.at(l + "v_conv1d.weight").sizes() == at::IntArrayRef{16, 1, w.size(1)});
      CHECK(theirs.at(l + "v_conv1d.weight").squeeze(1).equal(w.narrow(0, 32, 16)));
    }
    const at::Tensor& ba = ours.at("model.blocks.0.ba.weight");
    CHECK(theirs.at(l + "b_proj.weight").equal(ba.narrow(0, 0, 4)));
    CHECK((theirs.count(l + "a_proj.weight") > 0) == gated);
    if (gated) {
      CHECK(theirs.at(l + "a_proj.weight").equal(ba.narrow(0, 4, 4)));
      CHECK(theirs.at(l + "g_proj.weight").equal(ours.at("model.blocks.0.gate.weight")));
      CHECK(theirs.at(l + "A_log").equal(ours.at("model.blocks.0.A_log")));
    }
    CHECK(theirs.at("model.layers.1.mlp.gate_proj.weight").equal(ours.at("model.blocks.1.mlp.gate.weight")));
    CHECK(theirs.at("model.embeddings.weight").equal(ours.at("model.wte.weight")));
    CHECK((theirs.count("lm_head.weight") > 0) == (c.extra.find("tie_embeddings: false") != std::string::npos));

    hf_import(t / (name + "_hf"), t / (name + "_back"), host, {});
    check_bit_equal(ours, model_tensors_of(t / (name + "_back")));
    // The same model (eps, conv width, MLP width and tying kept): the same scores.
    LoadedModel a = load_model_from_checkpoint(run, host), b = load_model_from_checkpoint(t / (name + "_back"), host);
    const std::vector<int64_t> ids = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
    CHECK(score_tokens(*a.model, ids).logprobs == score_tokens(*b.model, ids).logprobs);
  }
}

TEST_CASE("fla DeltaNet / GatedDeltaNet: configs the blocks cannot compute are refused, naming the key",
          "[hf][errors]") {
  PluginHost host;
  TempDir t;
  const std::string delta = native_run(host, model_yaml("deltanet", "short_conv: true"), t, "d");
  const std::string gated = native_run(host, model_yaml("gated_deltanet", "short_conv: true"), t, "g");
  hf_export(delta, t / "d_hf", host);
  hf_export(gated, t / "g_hf", host);
  int n = 0;
  // config.json edited by `edit`: the import's error.
  auto refusal = [&](const std::string& folder, const std::function<void(json&)>& edit) {
    const std::string dir = t / ("variant" + std::to_string(n++));
    fs::create_directories(dir);
    for (const auto& e : fs::directory_iterator(t / folder))
      fs::copy_file(e.path(), fs::path(dir) / e.path().filename());
    json c = json::parse(lntest::read_text(dir + "/config.json"));
    edit(c);
    lntest::write_text(dir + "/config.json", c.dump());
    const std::string e = error_of([&] { hf_import(dir, t / ("out" + std::to_string(n)), host, {}); });
    CHECK_FALSE(fs::exists(t / ("out" + std::to_string(n))));
    return std::make_pair(e, dir + "/config.json: ");
  };
  auto check = [&](const std::string& folder, const std::string& key, const json& value, const std::string& want) {
    INFO(folder << " " << key << " = " << value.dump());
    auto [e, file] = refusal(folder, [&](json& c) { c[key] = value; });
    CHECK_CONTAINS(e, file + key + " is " + value.dump() + "; " + want);
  };
  for (const char* f : {"d_hf", "g_hf"}) {
    check(f, "attn", {{"layers", {1}}, {"num_heads", 2}}, "hybrid models with attention layers are not implemented");
    check(f, "attnres_block_size", 2, "attention residuals are not implemented");
    check(f, "allow_neg_eigval", true, "only beta in (0, 1) is implemented");
    check(f, "hidden_act", "powlu", "only swish");
    check(f, "expand_v", 2.0, "only 1 is implemented");
  }
  check("d_hf", "use_gate", true, "the deltanet block has no output gate");
  check("d_hf", "use_beta", false, "only a learned beta");
  check("d_hf", "qk_activation", "relu", "only silu");
  check("d_hf", "qk_norm", "sum", "only l2");
  check("d_hf", "expand_k", 0.5, "only 1 is implemented");
  check("d_hf", "num_heads", 3, "it must divide hidden_size (16)");
  check("g_hf", "use_gate", false, "the gated_deltanet block always has its output gate");
  check("g_hf", "head_dim", 8, "num_heads * head_dim (4 * 8) must be hidden_size (16)");
  check("g_hf", "num_v_heads", 8, "only num_v_heads = num_heads (4, or null)");
  {
    // GatedDeltaNetConfig's expand_v is 2 when config.json leaves it out.
    auto [e, file] = refusal("g_hf", [](json& c) { c.erase("expand_v"); });
    CHECK_CONTAINS(e, file + "expand_v is missing; only 1 is implemented");
  }
  {
    // Without intermediate_size, fla's GatedMLP is 2/3 of hidden_ratio * hidden_size rounded up to 256:
    // the weights' 64 rows then do not fit, and the tensor is named.
    auto [e, file] = refusal("d_hf", [](json& c) { c.erase("intermediate_size"); });
    CHECK_CONTAINS(e, "model.layers.0.mlp.gate_proj.weight");
    CHECK_CONTAINS(e, "[256, 16] is expected");
  }
  // num_v_heads null is num_heads; norm_eps reaches the block's output norm too.
  auto [e, file] = refusal("g_hf", [](json& c) {
    c["num_v_heads"] = nullptr;
    c["attn_mode"] = "fused_recurrent";  // a kernel choice: not read
    c["norm_eps"] = "x";
  });
  CHECK_CONTAINS(e, file + "norm_eps is \"x\"; expected a number");
}

TEST_CASE("fla DeltaNet / GatedDeltaNet: hf-export names what fla's config cannot say", "[hf][errors]") {
  PluginHost host;
  TempDir t;
  // fla's layers take the model's norm_eps for the output norm; the block's default is 1e-5 for both.
  const std::string eps =
      native_run(host,
                 "{vocab_size: 40, hidden_size: 16, n_layer: 1, max_seq_len: 32, norm_eps: 1.0e-6, block_pattern: "
                 "[gated_deltanet], blocks: {gated_deltanet: {n_head: 4}}}",
                 t, "eps");
  CHECK_CONTAINS(error_of([&] { hf_export(eps, t / "eps_hf", host); }),
                 "GatedDeltaNetForCausalLM: model.blocks.gated_deltanet.o_norm_eps (" + number_text(1e-5) +
                     ") differs from model.norm_eps (" + number_text(1e-6) + ")");
  const std::string gelu =
      native_run(host,
                 "{vocab_size: 40, hidden_size: 16, n_layer: 1, max_seq_len: 32, block_pattern: [deltanet], blocks: "
                 "{deltanet: {n_head: 4, mlp: gelu}}}",
                 t, "gelu");
  CHECK_CONTAINS(error_of([&] { hf_export(gelu, t / "gelu_hf", host); }),
                 "DeltaNetForCausalLM: model.blocks.deltanet.mlp is gelu (fla's GatedMLP is swiglu)");
  // The defaults (norm_eps = o_norm_eps = 1e-5) export.
  const std::string plain =
      native_run(host,
                 "{vocab_size: 40, hidden_size: 16, n_layer: 1, max_seq_len: 32, block_pattern: [deltanet], blocks: "
                 "{deltanet: {n_head: 2}}}",
                 t, "plain");
  hf_export(plain, t / "plain_hf", host);
  CHECK(json::parse(lntest::read_text(t / "plain_hf/config.json"))["norm_eps"].get<double>() == 1e-5);
}
