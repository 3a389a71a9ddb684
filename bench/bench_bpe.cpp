// BPE encoding speed on tiny shakespeare, one thread.
// Usage: bench_bpe [gpt2-dir-or-.tiktoken [corpus.txt [repeats]]]
//   defaults: $LINEARNEXUS_SHARED_DATA (else ../shared/data)/gpt2, .../tinyshakespeare.txt, 5
// The first pass starts with an empty word cache, later ones hit it; both are printed because a
// training run's data loader sees the first kind once per corpus and the second afterwards.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "linearnexus/host/bpe_tokenizer.h"

int main(int argc, char** argv) {
  const char* env = std::getenv("LINEARNEXUS_SHARED_DATA");
  const std::string data = env ? env : "../shared/data";
  const std::string spec = argc > 1 ? argv[1] : data + "/gpt2";
  const std::string corpus_path = argc > 2 ? argv[2] : data + "/tinyshakespeare.txt";
  const int repeats = argc > 3 ? std::max(1, std::atoi(argv[3])) : 5;
  try {
    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    const auto tok = linearnexus::BPETokenizer::from_path(spec);
    const double load_s = std::chrono::duration<double>(clock::now() - t0).count();

    std::ifstream in(corpus_path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "bench_bpe: cannot open '%s'\n", corpus_path.c_str());
      return 1;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    const double mb = text.size() / 1e6;

    std::vector<double> seconds;
    size_t tokens = 0;
    for (int r = 0; r < repeats; ++r) {
      t0 = clock::now();
      tokens = tok.encode(text).size();
      seconds.push_back(std::chrono::duration<double>(clock::now() - t0).count());
    }
    const double cold = seconds.front();
    std::vector<double> warm(seconds.begin() + (repeats > 1 ? 1 : 0), seconds.end());
    std::sort(warm.begin(), warm.end());
    const double median = warm[warm.size() / 2];
    std::printf("load %.3f s; %s: %.2f MB -> %zu tokens\n", load_s, corpus_path.c_str(), mb, tokens);
    std::printf("encode: first pass %.1f MB/s, median of %zu later passes %.1f MB/s\n", mb / cold, warm.size(),
                mb / median);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_bpe: %s\n", e.what());
    return 1;
  }
  return 0;
}
