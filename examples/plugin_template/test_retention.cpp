// Parity tests for the retention block, run on the built plugin file: test_retention path/retention.so
//   1. the chunked form (training) equals the recurrent form (decoding) token by token;
//   2. prefill of a prompt + decoding the rest equals one forward over the whole sequence;
//   3. the chunk size does not change the result (chunks straddle the sequence differently);
//   4. gradients of the chunked form reach every parameter and are finite.
// No test framework: each check prints what it compared, and any failure makes the exit code 1.
#include <linearnexus/model.h>
#include <linearnexus/host/params_yaml.h>
#include <linearnexus/host/plugin_host.h>
#include <linearnexus/registry.h>

#include <iostream>

using namespace linearnexus;

namespace {
int failures = 0;

void check_close(const std::string& what, const at::Tensor& a, const at::Tensor& b, double tol = 1e-4) {
  const double diff = (a - b).abs().max().item<double>();
  const bool ok = a.sizes() == b.sizes() && diff <= tol;
  std::cout << (ok ? "ok    " : "FAIL  ") << what << " (max |diff| " << diff << ", tolerance " << tol << ")\n";
  failures += ok ? 0 : 1;
}

std::shared_ptr<Block> make_block(const Registry& reg, int64_t chunk_size) {
  const auto& r = reg.get(PluginKind::Block, "retention");
  Params p = params_from_defaults(r.schema, "model.blocks.retention");
  ParamValue v;
  v.type = ParamType::Int, v.i = chunk_size;
  p.set("chunk_size", v);
  ModelDims dims{/*hidden_size=*/32, /*n_layer=*/2, /*vocab_size=*/16, /*max_seq_len=*/64, /*dropout=*/0.0};
  auto block = reg.make_block("retention", dims, p, 0);
  block->eval();
  return block;
}

void copy_parameters(const Block& from, Block& to) {
  torch::NoGradGuard no_grad;
  auto src = from.named_parameters();
  for (auto& kv : to.named_parameters()) kv.value().copy_(src[kv.key()]);
}

// Token by token through the recurrent form, from an empty state.
at::Tensor decode_all(Block& block, const at::Tensor& x, LayerState state, int64_t start) {
  std::vector<at::Tensor> ys;
  for (int64_t t = 0; t < x.size(1); ++t) {
    ForwardContext ctx;
    ctx.mode = Mode::Decode, ctx.start = start + t;
    auto out = block.forward(x.narrow(1, t, 1), std::move(state), ctx);
    ys.push_back(out.y);
    state = std::move(out.state);
  }
  return at::cat(ys, 1);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: test_retention path/to/retention.so\n";
    return 2;
  }
  try {
    PluginHost host;  // also loads the runner's plugin folder and $LINEARNEXUS_PLUGIN_PATH, if any
    host.load_file(argv[1]);
    torch::manual_seed(0);
    auto block = make_block(host.registry(), /*chunk_size=*/4);
    const int64_t B = 2, T = 11, C = 32;  // T is not a multiple of the chunk: the last chunk is short
    auto x = torch::randn({B, T, C});
    {
      torch::NoGradGuard no_grad;
      auto full = block->forward(x, LayerState{}, ForwardContext{}).y;  // Mode::Train, chunked
      check_close("chunked == recurrent token by token", full,
                  decode_all(*block, x, block->init_state(B, T, x.options()), 0));

      ForwardContext prefill;
      prefill.mode = Mode::Prefill;
      const int64_t P = 6;
      auto pre = block->forward(x.narrow(1, 0, P), block->init_state(B, T, x.options()), prefill);
      auto rest = decode_all(*block, x.narrow(1, P, T - P), std::move(pre.state), P);
      check_close("prefill(6) + decode(5) == full", full, at::cat({pre.y, rest}, 1));

      auto other = make_block(host.registry(), /*chunk_size=*/64);
      copy_parameters(*block, *other);
      check_close("chunk_size 4 == chunk_size 64", full, other->forward(x, LayerState{}, ForwardContext{}).y);
    }
    block->train();
    block->forward(x, LayerState{}, ForwardContext{}).y.pow(2).mean().backward();
    bool grads_ok = true;
    for (const auto& kv : block->named_parameters())
      if (!kv.value().grad().defined() || !kv.value().grad().isfinite().all().item<bool>()) {
        std::cout << "FAIL  gradient of " << kv.key() << " is missing or not finite\n";
        grads_ok = false;
      }
    std::cout << (grads_ok ? "ok    " : "FAIL  ") << "gradients reach every parameter and are finite\n";
    failures += grads_ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::cout << "FAIL  " << e.what() << "\n";
    return 1;
  }
  std::cout << (failures ? "FAILED\n" : "all retention parity checks passed\n");
  return failures ? 1 : 0;
}
