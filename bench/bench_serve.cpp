// `linearnexus serve` under load: requests/s and completion tokens/s at 1, 8 and 32 concurrent
// clients (each sending its requests one after another), on a server this program starts.
//
//   build/bin/bench_serve --checkpoint RUN [--clients 1,8,32] [--requests 4] [--max-tokens 64]
//                         [--max-batch 32] [--device cpu] [--stream]
//
// Without --checkpoint it first trains a GPT for one step (random weights cost what trained ones do)
// of --hidden 192, --layers 4, context 256, char tokens of builtin:arithmetic, into a temporary folder.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "http_client.h"  // tests/http_client.h

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Args {
  std::string runner = LINEARNEXUS_RUNNER, checkpoint, device = "cpu";
  std::vector<int> clients = {1, 8, 32};
  int requests = 4, max_tokens = 64, max_batch = 32, hidden = 192, layers = 4;
  bool stream = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(k + " needs a value");
      return argv[++i];
    };
    if (k == "--runner")
      a.runner = value();
    else if (k == "--checkpoint")
      a.checkpoint = value();
    else if (k == "--device")
      a.device = value();
    else if (k == "--requests")
      a.requests = std::stoi(value());
    else if (k == "--max-tokens")
      a.max_tokens = std::stoi(value());
    else if (k == "--max-batch")
      a.max_batch = std::stoi(value());
    else if (k == "--hidden")
      a.hidden = std::stoi(value());
    else if (k == "--layers")
      a.layers = std::stoi(value());
    else if (k == "--stream")
      a.stream = true;
    else if (k == "--clients") {
      a.clients.clear();
      std::stringstream ss(value());
      for (std::string c; std::getline(ss, c, ',');) a.clients.push_back(std::stoi(c));
    } else {
      throw std::runtime_error("unknown option " + k + " (see the comment at the top of bench/bench_serve.cpp)");
    }
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) try {
  Args a = parse(argc, argv);
  char tmpl[] = "/tmp/bench_serve_XXXXXX";
  const std::string dir = ::mkdtemp(tmpl);
  if (a.checkpoint.empty()) {
    std::ofstream(dir + "/exp.yaml")
        << "data: {path: 'builtin:arithmetic', seq_len: 64}\n"
        << "model: {hidden_size: " << a.hidden << ", n_layer: " << a.layers
        << ", max_seq_len: 256, block_pattern: [attention], blocks: {attention: {n_head: 6}}}\n"
        << "trainer: {max_steps: 1, batch_size: 2, eval_every: 1000, out_dir: " << dir << "/run}\n"
        << "sample: {num_samples: 0}\n";
    if (std::system((a.runner + " run " + dir + "/exp.yaml > " + dir + "/train.log 2>&1").c_str()) != 0)
      throw std::runtime_error("training the benchmark's model failed: see " + dir + "/train.log");
    a.checkpoint = dir + "/run";
  }
  int port = 0;
  const pid_t pid = lnhttp::spawn_serve(
      a.runner,
      "--checkpoint '" + a.checkpoint + "' --device " + a.device + " --max-batch " + std::to_string(a.max_batch),
      dir + "/out", dir + "/err", &port);
  if (port == 0) throw std::runtime_error("the server did not start: " + read_file(dir + "/err"));
  std::printf(
      "| clients | requests | max_tokens | wall s | requests/s | tokens/s | mean latency s |\n|---|---|---|---|---|---|---|\n");
  for (int c : a.clients) {
    std::atomic<int64_t> tokens{0}, failed{0};
    std::atomic<double> latency{0};
    std::vector<std::thread> threads;
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < c; ++k)
      threads.emplace_back([&, k] {
        for (int r = 0; r < a.requests; ++r) {
          const nlohmann::json body = {{"prompt", std::to_string(k * 7 + r) + "+"},
                                       {"seed", k * 1000 + r},
                                       {"max_tokens", a.max_tokens},
                                       {"temperature", 1.0},
                                       {"stream", a.stream}};
          const auto s0 = std::chrono::steady_clock::now();
          const auto resp = lnhttp::request(port, "POST", "/v1/completions", body.dump());
          const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
          double seen = latency.load();
          while (!latency.compare_exchange_weak(seen, seen + dt)) {
          }
          if (resp.status != 200) {
            ++failed;
            continue;
          }
          // A streamed completion decodes max_tokens (completions end at no EOS, no stop strings here).
          tokens +=
              a.stream ? a.max_tokens : nlohmann::json::parse(resp.body)["usage"]["completion_tokens"].get<int64_t>();
        }
      });
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t n = static_cast<int64_t>(c) * a.requests;
    std::printf("| %d | %lld | %d | %.2f | %.2f | %.1f | %.3f |%s\n", c, static_cast<long long>(n), a.max_tokens, wall,
                n / wall, tokens / wall, latency / n, failed ? " FAILED REQUESTS" : "");
    std::fflush(stdout);
  }
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  const std::string log = read_file(dir + "/err");
  const size_t at = log.find("serve: stopped");
  if (at != std::string::npos) std::printf("\nserver: %s", log.substr(at, log.find('\n', at) - at + 1).c_str());
  std::system(("rm -rf " + dir).c_str());
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
