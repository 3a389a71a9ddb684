// Continuous batching (decode_stream.h) on the CPU: requests that join a running batch, leave it at
// EOS, a stop sequence or their budget, and give their rows to later ones draw exactly what each
// draws alone (DecodeGenerator::generate_seeded with one row), for every block kind, on the eager and
// the static step; cancelled rows free their places; bad requests are refused by name.
#include <map>

#include "block_contract.h"
#include "catch.h"
#include "linearnexus/host/decode_stream.h"
#include "linearnexus/host/generator.h"

using namespace linearnexus;
using namespace lntest;

namespace {
const char* kBlocks =
    "{attention: {n_head: 4}, swa: {n_head: 4, window: 5}, mamba: {d_state: 8}, mla: {n_head: 4}, "
    "gla: {chunk_size: 4}, mamba2: {d_state: 8, head_dim: 8, chunk_size: 4}, deltanet: {chunk_size: 4}, "
    "gated_deltanet: {chunk_size: 4}, kda: {chunk_size: 4}, rwkv7: {chunk_size: 4}}";

std::vector<StreamRequest> requests() {
  std::vector<StreamRequest> out;
  const std::vector<std::pair<int64_t, int64_t>> shapes{{3, 12}, {9, 4}, {1, 9}, {6, 2}, {4, 11},
                                                        {8, 1},  {2, 7}, {7, 5}, {5, 3}};
  for (size_t i = 0; i < shapes.size(); ++i) {
    StreamRequest r;
    r.id = 100 + static_cast<int64_t>(i);
    for (int64_t j = 0; j < shapes[i].first; ++j)
      r.prompt.push_back((static_cast<int64_t>(i) * 7 + j * 13 + j * j) % 20);
    r.max_new_tokens = shapes[i].second;
    r.seed = 40 + i % 3;
    if (i == 4) r.stop_sequences = {{7}, {3, 3}};
    out.push_back(r);
  }
  return out;
}

struct Drawn {
  std::vector<int64_t> tokens;
  std::vector<double> logprobs;
  bool stopped = false, ended = false;
};

// Serves `reqs` through a stream of `rows` rows: admission before every advance, in order.
std::map<int64_t, Drawn> serve(DecodeStream& stream, std::vector<StreamRequest> reqs, int64_t* joined_running) {
  std::map<int64_t, Drawn> out;
  for (int64_t guard = 0; guard < 1000 && (!reqs.empty() || !stream.idle()); ++guard) {
    const bool running = !stream.idle();
    const int64_t n = stream.admit(reqs);
    if (running && n > 0) *joined_running += n;
    reqs.erase(reqs.begin(), reqs.begin() + n);
    for (const StreamToken& t : stream.advance()) {
      Drawn& d = out[t.id];
      REQUIRE(!d.ended);
      d.tokens.push_back(t.token);
      d.logprobs.push_back(t.logprob);
      d.stopped = t.stopped;
      d.ended = t.last;
    }
  }
  REQUIRE(reqs.empty());
  REQUIRE(stream.idle());
  return out;
}

void check_alone(DecodeGenerator& gen, const std::vector<StreamRequest>& reqs, const std::map<int64_t, Drawn>& got,
                 SamplingParams sp) {
  for (const auto& r : reqs) {
    INFO("request " << r.id << " (prompt of " << r.prompt.size() << ", budget " << r.max_new_tokens << ")");
    sp.max_new_tokens = r.max_new_tokens;
    sp.stop_sequences = r.stop_sequences;
    const GeneratedBatch alone = gen.generate_seeded({r.prompt}, sp, {r.seed});
    REQUIRE(got.count(r.id));
    const Drawn& d = got.at(r.id);
    CHECK(d.ended);
    CHECK(d.tokens == alone.completions[0]);
    CHECK(d.stopped == alone.stopped[0]);
    for (size_t j = 0; j < std::min(d.tokens.size(), alone.completions[0].size()); ++j)
      CHECK(std::abs(d.logprobs[j] - alone.logprobs[0][static_cast<int64_t>(j)].item<double>()) < 1e-4);
  }
}
}  // namespace

TEST_CASE("continuous batching: each request draws what it draws alone, whenever it joins (every block)",
          "[decode][stream]") {
  PluginHost host;
  for (const std::string pattern : {"[attention]", "[swa]", "[mamba]", "[mamba2]", "[mla]", "[gla]", "[deltanet]",
                                    "[gated_deltanet]", "[kda]", "[rwkv7]", "[mamba, attention]"})
    for (const std::string step : {"eager", "static"}) {
      INFO("block_pattern " << pattern << ", step " << step);
      auto m = contract_model(host, pattern, kBlocks);
      DecodeGenerator gen(*m, host.registry(), DecodeOptions{step, 0});
      SamplingParams sp;
      sp.temperature = 3;  // flat enough that seeds matter
      sp.top_k = 15;
      sp.eos_id = 11;
      DecodeStream stream(gen, 3, sp);
      int64_t joined_running = 0;
      const auto got = serve(stream, requests(), &joined_running);
      CHECK(joined_running >= 3);  // rows did join a batch mid-flight
      check_alone(gen, requests(), got, sp);
    }
}

TEST_CASE("continuous batching: greedy, a short cache, and sync every 4 steps", "[decode][stream]") {
  PluginHost host;
  for (const std::string pattern : {"[attention]", "[mamba, attention]"})
    for (int64_t sync : {1, 4})
      for (int64_t rows : {1, 2, 3}) {
        INFO("block_pattern " << pattern << ", sync every " << sync << ", " << rows << " rows");
        auto m = contract_model(host, pattern, kBlocks);
        DecodeGenerator gen(*m, host.registry(), DecodeOptions{"static", sync});
        SamplingParams greedy;
        greedy.temperature = 0;
        // 24 columns: rows whose budget would pass the cache's end wait for the batch to drain, which
        // then starts again at the longest waiting prompt (with fewer prompts than rows, too).
        DecodeStream stream(gen, rows, greedy, 24);
        int64_t joined_running = 0;
        const auto got = serve(stream, requests(), &joined_running);
        check_alone(gen, requests(), got, greedy);
        // The same requests again on the same stream: the same tokens.
        int64_t again = 0;
        CHECK(serve(stream, requests(), &again).at(104).tokens == got.at(104).tokens);
      }
}

TEST_CASE("continuous batching: a cancelled row frees its place, bad requests are refused by name",
          "[decode][stream]") {
  PluginHost host;
  auto m = contract_model(host, "[attention]", kBlocks);
  DecodeGenerator gen(*m, host.registry());
  SamplingParams greedy;
  greedy.temperature = 0;
  DecodeStream stream(gen, 2, greedy);
  auto reqs = requests();
  reqs[0].max_new_tokens = reqs[1].max_new_tokens = 30;
  CHECK(stream.admit({reqs[1], reqs[0]}) == 2);  // the longer prompt first: both fit the idle batch
  CHECK(stream.live_rows() == 2);
  CHECK(stream.admit({reqs[2]}) == 0);  // no free row
  stream.advance();
  stream.cancel(reqs[1].id);
  CHECK(stream.live_rows() == 1);
  CHECK(stream.admit({reqs[2]}) == 1);  // joins the running batch in the freed row
  bool any_cancelled = false;
  for (int64_t i = 0; i < 40 && !stream.idle(); ++i)
    for (const auto& t : stream.advance()) any_cancelled |= t.id == reqs[1].id;
  CHECK(!any_cancelled);
  CHECK(stream.idle());

  StreamRequest empty;
  empty.id = 7;
  CHECK_CONTAINS(error_of([&] { stream.admit({empty}); }), "request 7 has an empty prompt");
  StreamRequest longer;
  longer.id = 8;
  longer.prompt.assign(64, 1);
  CHECK_CONTAINS(error_of([&] { stream.admit({longer}); }), "request 8: a prompt of 64 tokens leaves no room");
  CHECK_CONTAINS(error_of([&] { DecodeStream(gen, 0, greedy); }), "rows must be at least 1");
}
