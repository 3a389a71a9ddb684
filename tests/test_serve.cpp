// `linearnexus serve` and `linearnexus chat`, through the real program: answers equal `sample`'s for
// the same seed, concurrent clients batched and each answered as alone, server-sent events, a client
// hanging up mid-stream, every bad input's 4xx + OpenAI error, the API key, draining on SIGTERM, and
// the chat REPL on piped stdin. The model: a tiny chat SFT on the smollm fixture tokenizer (each user
// names a colour, the assistant says "I like <colour>."), trained once per build and shared.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <sstream>
#include <thread>

#include "http_client.h"
#include "test_util.h"

using namespace lntest;
using nlohmann::json;

namespace {

// The shared checkpoint: made once per build of the runner (keyed by its modification time),
// under a lock so parallel test processes make it once.
std::string fixture_checkpoint() {
  struct stat st {};
  ::stat(LINEARNEXUS_RUNNER, &st);
  const std::string dir = std::string(LINEARNEXUS_BINARY_DIR) + "/tests/serve_fixture_" + std::to_string(st.st_mtime);
  const int lock = ::open((dir + ".lock").c_str(), O_CREAT | O_RDWR, 0644);
  ::flock(lock, LOCK_EX);
  if (!fs::exists(dir + "/done")) {
    fs::create_directories(dir);
    const char* colours[] = {"red", "blue", "green", "black", "white", "pink", "grey", "gold"};
    std::string rows;
    for (int i = 0; i < 64; ++i) {
      const std::string c = colours[i % 8];
      rows += R"({"messages": [{"role": "user", "content": ")" + c +
              R"("}, {"role": "assistant", "content": "I like )" + c +
              R"(."}]})"
              "\n";
    }
    write_text(dir + "/chat.jsonl", rows);
    write_text(
        dir + "/exp.yaml",
        "data: {path: '" + dir +
            "/chat.jsonl', format: chat, seq_len: 32, val_fraction: 0.125, tokenizer: '" LINEARNEXUS_SOURCE_DIR
            "/tests/fixtures/hf_tokenizers/smollm'}\n"
            "model: {hidden_size: 64, n_layer: 2, max_seq_len: 128, block_pattern: [attention], blocks: {attention: {n_head: 4}}}\n"
            "optimizer: {name: adamw, lr: 0.003}\nschedule: {warmup_steps: 5}\n"
            "trainer: {name: sft, max_steps: 150, batch_size: 16, log_every: 40, eval_every: 1000, eval_batches: 1, out_dir: '" +
            dir +
            "/run'}\n"
            "sample: {num_samples: 0}\n");
    const CliResult r = run_cli("run '" + dir + "/exp.yaml'");
    INFO(r.err);
    REQUIRE(r.code == 0);
    write_text(dir + "/done", "");
  }
  ::close(lock);
  return dir + "/run";
}

// What JSON carries of raw model bytes: invalid UTF-8 becomes U+FFFD, as the server dumps it.
std::string as_json_text(const std::string& raw) {
  return json::parse(json(raw).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

// `sample`'s texts (one per --num-samples), without the header lines and the printed prompt.
std::vector<std::string> sample_texts(const std::string& checkpoint, const std::string& args,
                                      const std::string& printed_prompt) {
  const CliResult r = run_cli("sample --checkpoint '" + checkpoint + "' " + args);
  INFO(r.err);
  REQUIRE(r.code == 0);
  std::vector<std::string> out;
  for (int k = 1;; ++k) {
    const std::string head = "---- sample " + std::to_string(k) + " ----\n" + printed_prompt;
    const size_t at = r.out.find(head);
    if (at == std::string::npos) break;
    const size_t end = r.out.find("\n---- sample " + std::to_string(k + 1) + " ----\n", at);
    std::string text =
        r.out.substr(at + head.size(), (end == std::string::npos ? r.out.size() - 1 : end) - at - head.size());
    out.push_back(as_json_text(text));
  }
  return out;
}

// A `linearnexus serve` process on a free loopback port; killed when the test ends.
struct ServerProcess {
  TempDir dir{"linearnexus_serve_"};
  pid_t pid = -1;
  int port = 0;

  explicit ServerProcess(const std::string& args) {
    pid = lnhttp::spawn_serve(LINEARNEXUS_RUNNER, args, dir / "out", dir / "err", &port);
    INFO("server log: " << log());
    REQUIRE(port > 0);
  }
  ~ServerProcess() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  std::string log() const { return read_text(dir / "err"); }
  // Sends `sig` and waits (up to 60 s) for the exit code.
  int stop(int sig = SIGTERM) {
    ::kill(pid, sig);
    int status = 0;
    for (int i = 0; i < 600; ++i) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return -1;
  }
  lnhttp::Response post(const std::string& path, const json& body, const std::string& extra = "") const {
    return lnhttp::request(port, "POST", path, body.dump(), extra);
  }
  // The body of a 200 answer.
  json answer(const std::string& path, const json& body) const {
    const auto r = post(path, body);
    INFO(path << " " << body.dump() << " -> " << r.status << " " << r.body);
    REQUIRE(r.status == 200);
    return json::parse(r.body);
  }
};

// A streamed response's events: the JSON chunks, and whether it ended with [DONE].
std::vector<json> sse_events(const std::string& body, bool* done) {
  std::vector<json> out;
  *done = false;
  size_t pos = 0;
  for (size_t end; (end = body.find("\n\n", pos)) != std::string::npos; pos = end + 2) {
    const std::string event = body.substr(pos, end - pos);
    REQUIRE(event.rfind("data: ", 0) == 0);
    if (event == "data: [DONE]")
      *done = true;
    else
      out.push_back(json::parse(event.substr(6)));
  }
  CHECK(pos == body.size());
  return out;
}

const std::string kCompletions = "/v1/completions", kChat = "/v1/chat/completions";

}  // namespace

TEST_CASE("serve: completions and chat completions equal sample's for the same seed", "[serve][cli]") {
  const std::string ckpt = fixture_checkpoint();
  ServerProcess server("--checkpoint '" + ckpt + "'");
  auto health = lnhttp::request(server.port, "GET", "/health");
  CHECK(health.status == 200);
  CHECK(json::parse(health.body)["status"] == "ok");
  auto models = json::parse(lnhttp::request(server.port, "GET", "/v1/models").body);
  CHECK(models["data"][0]["id"] == "run");

  struct Case {
    std::string prompt;
    uint64_t seed;
    double temperature, top_p;
    int64_t top_k, max_tokens;
  };
  for (const Case& c :
       {Case{"Hello", 1, 1.0, 1.0, 0, 20}, Case{"I like", 7, 0.8, 0.9, 50, 30}, Case{"blue red", 3, 0.0, 1.0, 0, 12}}) {
    INFO("prompt " << c.prompt << " seed " << c.seed);
    const json a = server.answer(kCompletions, {{"prompt", c.prompt},
                                                {"seed", c.seed},
                                                {"temperature", c.temperature},
                                                {"top_p", c.top_p},
                                                {"top_k", c.top_k},
                                                {"max_tokens", c.max_tokens},
                                                {"model", "anything"},
                                                {"logit_bias", {{"1", 2}}}});  // unknown fields: ignored
    const auto want = sample_texts(ckpt,
                                   "--prompt '" + c.prompt + "' --seed " + std::to_string(c.seed) + " --temperature " +
                                       json(c.temperature).dump() + " --top-p " + json(c.top_p).dump() + " --top-k " +
                                       std::to_string(c.top_k) + " --max-tokens " + std::to_string(c.max_tokens),
                                   c.prompt);
    REQUIRE(want.size() == 1);
    CHECK(a["object"] == "text_completion");
    CHECK(a["choices"][0]["text"] == want[0]);
    CHECK(a["choices"][0]["finish_reason"] == "length");
    CHECK(a["usage"]["completion_tokens"] == c.max_tokens);
    CHECK(a["usage"]["total_tokens"] == a["usage"]["prompt_tokens"].get<int64_t>() + c.max_tokens);
  }
  // n choices: choice j is sample j + 1 of `sample --seed S --num-samples n`; several prompts: one after the other.
  const json two = server.answer(
      kCompletions, {{"prompt", json::array({"Hello", "gold"})}, {"n", 2}, {"seed", 11}, {"max_tokens", 9}});
  REQUIRE(two["choices"].size() == 4);
  const auto hello = sample_texts(
      ckpt, "--prompt Hello --seed 11 --num-samples 2 --temperature 1 --top-k 0 --top-p 1 --max-tokens 9", "Hello");
  const auto gold = sample_texts(
      ckpt, "--prompt gold --seed 11 --num-samples 2 --temperature 1 --top-k 0 --top-p 1 --max-tokens 9", "gold");
  REQUIRE(hello.size() == 2);
  REQUIRE(gold.size() == 2);
  CHECK(two["choices"][0]["text"] == hello[0]);
  CHECK(two["choices"][1]["text"] == hello[1]);
  CHECK(two["choices"][2]["text"] == gold[0]);
  CHECK(two["choices"][3]["text"] == gold[1]);
  CHECK(two["choices"][3]["index"] == 3);

  // Chat: the messages in the tokenizer's template, as `sample --chat` renders its prompt.
  using ChatCase = std::tuple<std::string, int, double>;
  for (const auto& [colour, seed, temperature] : {ChatCase{"blue", 0, 0.0}, ChatCase{"pink", 5, 1.0}}) {
    const json a = server.answer(kChat, {{"messages", {{{"role", "user"}, {"content", colour}}}},
                                         {"seed", seed},
                                         {"temperature", temperature},
                                         {"max_tokens", 12}});
    const auto want = sample_texts(ckpt,
                                   "--chat --prompt " + colour + " --seed " + std::to_string(seed) + " --temperature " +
                                       json(temperature).dump() + " --top-k 0 --top-p 1 --max-tokens 12",
                                   "user: " + colour + "\nassistant: ");
    REQUIRE(want.size() == 1);
    CHECK(a["object"] == "chat.completion");
    CHECK(a["choices"][0]["message"]["role"] == "assistant");
    CHECK(a["choices"][0]["message"]["content"] == want[0]);
    if (temperature == 0) {
      CHECK(want[0] == "I like " + colour + ".");  // learned, and it ends at the end of turn
      CHECK(a["choices"][0]["finish_reason"] == "stop");
    }
  }
  // A stop string: the reply ends before it (OpenAI drops the stop sequence).
  const json stopped = server.answer(kChat, {{"messages", {{{"role", "user"}, {"content", "green"}}}},
                                             {"temperature", 0},
                                             {"stop", json::array({"ee", "like"})}});
  CHECK(stopped["choices"][0]["message"]["content"] == "I ");
  CHECK(stopped["choices"][0]["finish_reason"] == "stop");
  CHECK(server.stop() == 0);
}

TEST_CASE("serve: 32 concurrent clients are batched continuously and each answered as if alone", "[serve][cli]") {
  const std::string ckpt = fixture_checkpoint();
  ServerProcess server("--checkpoint '" + ckpt + "' --max-batch 16");
  const char* words[] = {"red", "blue", "Hello", "gold", "I like", "white pink", "x", "grey"};
  std::vector<json> requests;
  for (int i = 0; i < 32; ++i) {
    json body = {{"seed", 100 + i}, {"max_tokens", 3 + i % 11}, {"temperature", i % 3 == 0 ? 0.7 : 1.0}};
    if (i % 4 == 1)
      body["messages"] = {{{"role", "user"}, {"content", words[i % 8]}}};
    else
      body["prompt"] = words[i % 8];
    if (i % 5 == 0) body["n"] = 2;
    requests.push_back(body);
  }
  auto path = [](const json& body) { return body.contains("messages") ? kChat : kCompletions; };
  auto texts = [](const json& a) {
    std::vector<std::string> out;
    for (const auto& c : a["choices"])
      out.push_back((c.contains("message") ? c["message"]["content"] : c["text"]).get<std::string>());
    return out;
  };
  // Alone: one request at a time, each a batch of its own.
  std::vector<std::vector<std::string>> alone;
  for (const auto& body : requests) alone.push_back(texts(server.answer(path(body), body)));
  // Together: all at once (every fourth streamed).
  std::vector<lnhttp::Response> got(requests.size());
  std::atomic<int> ready{0};
  std::vector<std::thread> clients;
  for (size_t i = 0; i < requests.size(); ++i)
    clients.emplace_back([&, i] {
      json body = requests[i];
      if (i % 4 == 0) body["stream"] = true;
      ++ready;
      while (ready < static_cast<int>(requests.size())) std::this_thread::yield();
      got[i] = server.post(path(body), body);
    });
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < requests.size(); ++i) {
    INFO("request " << i << ": " << requests[i].dump() << " -> " << got[i].body);
    REQUIRE(got[i].status == 200);
    std::vector<std::string> together;
    if (i % 4 == 0) {
      bool done = false;
      together.assign(alone[i].size(), "");
      for (const auto& e : sse_events(got[i].body, &done)) {
        const auto& c = e["choices"][0];
        const size_t index = c["index"];
        if (c.contains("text"))
          together.at(index) += c["text"].get<std::string>();
        else if (c["delta"].contains("content"))
          together.at(index) += c["delta"]["content"].get<std::string>();
      }
      CHECK(done);
    } else {
      together = texts(json::parse(got[i].body));
    }
    CHECK(together == alone[i]);
  }
  CHECK(server.stop() == 0);
  // The log's summary: more than one request's rows were decoded together, and rows joined a batch
  // that was already decoding (continuous batching, not rounds).
  const std::string log = server.log();
  INFO(log);
  const size_t at = log.find("at most ");
  REQUIRE(at != std::string::npos);
  CHECK(std::atoi(log.c_str() + at + 8) > 2);
  const size_t joined = log.find(" joined a running batch");
  REQUIRE(joined != std::string::npos);
  const size_t number = log.rfind(' ', joined - 1);
  CHECK(std::atoi(log.c_str() + number + 1) > 0);
}

TEST_CASE("serve: streams reassemble to the plain answer, and a client that hangs up frees its row", "[serve][cli]") {
  const std::string ckpt = fixture_checkpoint();
  ServerProcess server("--checkpoint '" + ckpt + "'");
  for (const std::string& path : {kCompletions, kChat}) {
    json body = {{"seed", 42}, {"max_tokens", 40}};
    if (path == kChat)
      body["messages"] = {{{"role", "user"}, {"content", "black"}}};
    else
      body["prompt"] = "Hello";
    const json plain = server.answer(path, body);
    body["stream"] = true;
    const auto r = server.post(path, body);
    REQUIRE(r.status == 200);
    CHECK_CONTAINS(r.headers, "Content-Type: text/event-stream");
    bool done = false;
    const auto events = sse_events(r.body, &done);
    CHECK(done);
    std::string text, finish;
    for (const auto& e : events) {
      const auto& c = e["choices"][0];
      if (path == kChat) {
        CHECK(e["object"] == "chat.completion.chunk");
        if (c["delta"].contains("content")) text += c["delta"]["content"].get<std::string>();
      } else {
        text += c["text"].get<std::string>();
      }
      if (!c["finish_reason"].is_null()) finish = c["finish_reason"].get<std::string>();
    }
    if (path == kChat) {
      CHECK(events.front()["choices"][0]["delta"]["role"] == "assistant");
      CHECK(text == plain["choices"][0]["message"]["content"]);
    } else {
      CHECK(events.size() > 3);  // streamed token by token, not in one piece
      CHECK(text == plain["choices"][0]["text"]);
    }
    CHECK(finish == plain["choices"][0]["finish_reason"]);
  }
  // A stop string streamed: " li" arrives before "ke", so "li" is held back until "like" is complete, then dropped.
  const json stop_body = {
      {"messages", {{{"role", "user"}, {"content", "grey"}}}}, {"temperature", 0}, {"stop", "like"}, {"stream", true}};
  bool stop_done = false;
  std::string stop_text;
  for (const auto& e : sse_events(server.post(kChat, stop_body).body, &stop_done))
    if (e["choices"][0]["delta"].contains("content"))
      stop_text += e["choices"][0]["delta"]["content"].get<std::string>();
  CHECK(stop_done);
  CHECK(stop_text == "I ");
  // A client reads the first event of a long stream and hangs up.
  const int fd = lnhttp::connect_loopback(server.port);
  REQUIRE(fd >= 0);
  REQUIRE(lnhttp::send_all(
      fd, lnhttp::request_text("POST", kCompletions,
                               json{{"prompt", "Hello"}, {"max_tokens", 120}, {"stream", true}}.dump())));
  std::string seen;
  char buf[4096];
  for (ssize_t n; seen.find("data: ") == std::string::npos && (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
    seen.append(buf, n);
  ::close(fd);
  CHECK_CONTAINS(seen, "data: ");
  // The server keeps serving, and says that the row stopped early.
  const json after = server.answer(kCompletions, {{"prompt", "red"}, {"max_tokens", 5}});
  CHECK(after["choices"][0]["text"].is_string());
  std::string log;
  for (int i = 0; i < 100 && log.find("went away") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    log = server.log();
  }
  INFO(log);
  const size_t at = log.find("went away after ");
  REQUIRE(at != std::string::npos);
  CHECK(std::atoi(log.c_str() + at + 16) < 120);
  CHECK(server.stop() == 0);
}

TEST_CASE("serve: bad input gets a 4xx with an OpenAI error and the server keeps serving, the API key is checked",
          "[serve][cli]") {
  const std::string ckpt = fixture_checkpoint();
  ServerProcess server("--checkpoint '" + ckpt + "' --api-key s3cret --max-body-bytes 4096 --max-prompt-tokens 40");
  const std::string key = "Authorization: Bearer s3cret\r\n";
  auto check_error = [&](const lnhttp::Response& r, int status, const std::string& says,
                         const std::string& param = "") {
    INFO(r.status << " " << r.body);
    CHECK(r.status == status);
    json e;
    REQUIRE_NOTHROW(e = json::parse(r.body).at("error"));
    CHECK_CONTAINS(e.at("message").get<std::string>(), says);
    CHECK(e.at("type").is_string());
    CHECK(e.contains("code"));
    if (!param.empty()) CHECK(e.at("param") == param);
  };
  // The key: /v1/ routes need it, /health does not.
  check_error(server.post(kCompletions, {{"prompt", "a"}}), 401, "API key");
  check_error(server.post(kCompletions, {{"prompt", "a"}}, "Authorization: Bearer s3creT\r\n"), 401, "API key");
  check_error(lnhttp::request(server.port, "GET", "/v1/models"), 401, "API key");
  CHECK(lnhttp::request(server.port, "GET", "/v1/models", "", key).status == 200);
  CHECK(lnhttp::request(server.port, "GET", "/health").status == 200);
  auto post_text = [&](const std::string& path, const std::string& body) {
    return lnhttp::request(server.port, "POST", path, body, key);
  };
  auto post = [&](const std::string& path, const json& body) { return post_text(path, body.dump()); };
  CHECK(post(kCompletions, {{"prompt", "a"}, {"max_tokens", 2}, {"whatever", {1, 2}}}).status == 200);

  check_error(post_text(kCompletions, "{\"prompt\": "), 400, "not valid JSON");
  check_error(post_text(kCompletions, "[1, 2]"), 400, "must be a JSON object");
  check_error(post_text(kCompletions, "{\"prompt\": \"\xff\xfe\"}"), 400, "not valid JSON");
  check_error(post_text(kCompletions, std::string(2000, '[') + std::string(2000, ']')), 400, "not valid JSON");
  check_error(post(kCompletions, json::object()), 400, "'prompt' is required", "prompt");
  check_error(post(kCompletions, {{"prompt", 5}}), 400, "must be a string", "prompt");
  check_error(post(kCompletions, {{"prompt", {1, 2}}}), 400, "token-id prompts are not supported", "prompt");
  check_error(post(kCompletions, {{"prompt", ""}}), 400, "empty", "prompt");
  check_error(post(kCompletions, {{"prompt", "a"}, {"max_tokens", "10"}}), 400, "must be an integer", "max_tokens");
  check_error(post(kCompletions, {{"prompt", "a"}, {"max_tokens", 1.5}}), 400, "must be an integer", "max_tokens");
  check_error(post(kCompletions, {{"prompt", "a"}, {"max_tokens", 0}}), 400, "between 1 and", "max_tokens");
  check_error(post(kCompletions, {{"prompt", "a"}, {"temperature", "hot"}}), 400, "must be a number", "temperature");
  check_error(post(kCompletions, {{"prompt", "a"}, {"temperature", 3}}), 400, "between 0", "temperature");
  check_error(post(kCompletions, {{"prompt", "a"}, {"top_p", -0.5}}), 400, "between 0", "top_p");
  check_error(post(kCompletions, {{"prompt", "a"}, {"top_k", -1}}), 400, "at least 0", "top_k");
  check_error(post(kCompletions, {{"prompt", "a"}, {"stream", "yes"}}), 400, "must be a boolean", "stream");
  check_error(post(kCompletions, {{"prompt", "a"}, {"n", 0}}), 400, "between 1", "n");
  check_error(post(kCompletions, {{"prompt", "a"}, {"n", 17}}), 400, "between 1 and 16", "n");
  check_error(post(kCompletions, {{"prompt", {"a", "b", "c"}}, {"n", 6}}), 400, "more than --max-batch 16", "n");
  check_error(post(kCompletions, {{"prompt", "a"}, {"seed", "x"}}), 400, "must be an integer", "seed");
  check_error(post(kCompletions, {{"prompt", "a"}, {"stop", 5}}), 400, "at most 4 strings", "stop");
  check_error(post(kCompletions, {{"prompt", "a"}, {"stop", {"a", "b", "c", "d", "e"}}}), 400, "at most 4 strings",
              "stop");
  check_error(post(kCompletions, {{"prompt", "a"}, {"stop", {""}}}), 400, "empty string", "stop");
  check_error(post(kChat, {{"prompt", "a"}}), 400, "'messages' is required", "messages");
  check_error(post(kChat, {{"messages", "hi"}}), 400, "non-empty array", "messages");
  check_error(post(kChat, {{"messages", json::array()}}), 400, "non-empty array", "messages");
  check_error(post(kChat, {{"messages", {{{"role", 1}, {"content", "x"}}}}}), 400, "must be a string",
              "messages[0].role");
  check_error(post(kChat, {{"messages", {{{"role", "user"}}}}}), 400, "must be a string", "messages[0].content");
  // Lengths: the body, the prompt, the prompt plus max_tokens against the context (128).
  check_error(post(kCompletions, {{"prompt", std::string(5000, 'a')}}), 413, "--max-body-bytes 4096");
  std::string long_prompt;
  for (int i = 0; i < 60; ++i) long_prompt += i % 2 ? " red" : " blue";  // over 40 tokens
  check_error(post(kCompletions, {{"prompt", long_prompt}}), 400, "at most 40", "prompt");
  CHECK(json::parse(post(kCompletions, {{"prompt", long_prompt}}).body)["error"]["code"] == "context_length_exceeded");
  check_error(post(kCompletions, {{"prompt", "Hello"}, {"max_tokens", 128}}), 400, "context is 128", "max_tokens");
  check_error(post(kCompletions, {{"prompt", "Hello"}, {"max_tokens", 500}}), 400, "between 1 and 128", "max_tokens");
  // Routes and HTTP itself.
  check_error(lnhttp::request(server.port, "GET", "/v1/completions", "", key), 404, "no route GET /v1/completions");
  check_error(lnhttp::request(server.port, "POST", "/v2/x", "{}", key), 404, "no route");
  const auto garbage = lnhttp::send_raw(server.port, "BLAH\r\n\r\n");
  CHECK(garbage.status == 400);
  // Still serving, the right answer.
  CHECK(post(kCompletions, {{"prompt", "a"}, {"max_tokens", 2}}).status == 200);
  CHECK(server.stop() == 0);

  // Errors of the command itself: one line, exit 1.
  // (`timeout`: a server that wrongly started would never end.)
  check_one_clean_error(run_cli("serve --checkpoint /nonexistent/run", "timeout 60"), "/nonexistent/run");
  ServerProcess other("--checkpoint '" + ckpt + "'");
  check_one_clean_error(run_cli("serve --checkpoint '" + ckpt + "' --port " + std::to_string(other.port), "timeout 60"),
                        "cannot listen");
  check_one_clean_error(run_cli("serve --checkpoint '" + ckpt + "' --max-prompt-tokens 500", "timeout 60"),
                        "context is 128");
  CHECK(other.stop(SIGINT) == 0);
}

TEST_CASE("serve: SIGTERM lets the requests in flight finish, then exits 0", "[serve][cli]") {
  const std::string ckpt = fixture_checkpoint();
  ServerProcess server("--checkpoint '" + ckpt + "'");
  const json body = {{"prompt", "Hello"}, {"seed", 9}, {"max_tokens", 120}};
  const std::string want = server.answer(kCompletions, body)["choices"][0]["text"];
  // Four streams; SIGTERM once each has its first event.
  json streamed = body;
  streamed["stream"] = true;
  std::vector<std::string> texts(4);
  std::vector<int> done(4, 0);  // not vector<bool>: written from four threads
  std::vector<std::thread> clients;
  std::atomic<int> started{0};  // clients that have their first event (so their requests are in flight)
  for (int i = 0; i < 4; ++i)
    clients.emplace_back([&, i] {
      const int fd = lnhttp::connect_loopback(server.port);
      if (fd < 0 || !lnhttp::send_all(fd, lnhttp::request_text("POST", kCompletions, streamed.dump()))) return;
      std::string raw;
      char buf[4096];
      bool first = true;
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) {
        raw.append(buf, static_cast<size_t>(n));
        if (first && raw.find("data: ") != std::string::npos) first = false, ++started;
      }
      ::close(fd);
      const size_t split = raw.find("\r\n\r\n");
      if (split == std::string::npos) return;
      bool d = false;
      for (const auto& e : sse_events(lnhttp::dechunk(raw.substr(split + 4)), &d))
        texts[i] += e["choices"][0]["text"].get<std::string>();
      done[i] = d;
    });
  for (int i = 0; i < 60000 && started < 4; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(started == 4);  // (not REQUIRE: the client threads must be joined first)
  ::kill(server.pid, SIGTERM);
  // While it drains, a new request is refused (503), or finds the port closed once it is done.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto late = lnhttp::request(server.port, "POST", kCompletions, body.dump());
  CHECK((late.status == 503 || late.status == 0));
  if (late.status == 503) CHECK_CONTAINS(late.body, "shutting down");
  const int code = server.stop(SIGTERM);  // (a second SIGTERM changes nothing)
  for (auto& t : clients) t.join();
  CHECK(code == 0);
  for (int i = 0; i < 4; ++i) {
    CHECK(done[i] == 1);
    CHECK(texts[i] == want);
  }
  INFO(server.log());
  CHECK_CONTAINS(server.log(), "SIGTERM: draining");
  CHECK(lnhttp::connect_loopback(server.port) < 0);  // no longer listening
}

TEST_CASE("chat: a REPL on stdin with history, /reset and /exit, answering as sample --chat", "[serve][cli]") {
  const std::string ckpt = fixture_checkpoint();
  TempDir t;
  write_text(t / "in", "blue\n/reset\nblue\ngold\n");
  const std::string flags = " --seed 4 --temperature 1 --top-k 0 --top-p 1 --max-tokens 12";
  CliResult r = run_cli("chat --checkpoint '" + ckpt + "'" + flags + " < '" + (t / "in") + "'");
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto want = sample_texts(ckpt, "--chat --prompt blue" + flags, "user: blue\nassistant: ");
  REQUIRE(want.size() == 1);
  std::vector<std::string> lines;
  std::istringstream in(r.out);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 4);
  CHECK(as_json_text(lines[0]) == want[0]);
  CHECK(lines[1] == "(conversation cleared)");
  CHECK(lines[2] == lines[0]);  // the same first turn again: same seed, no history
  // /exit ends the conversation; what follows is not read.
  write_text(t / "in", "gold\n/exit\nblue\n");
  r = run_cli("chat --checkpoint '" + ckpt + "' --temperature 0 < '" + (t / "in") + "'");
  CHECK(r.code == 0);
  CHECK(r.out == "I like gold.\n");
  check_one_clean_error(run_cli("chat --checkpoint /nonexistent/run < /dev/null"), "/nonexistent/run");
}

TEST_CASE("sample --prompts: continuous batching answers each prompt as sample --prompt with seed + i",
          "[serve][cli]") {
  const std::string ckpt = fixture_checkpoint();
  TempDir dir("linearnexus_prompts_");
  const std::vector<std::string> prompts{"red", "I like", "Hello", "x", "white pink", "gold", "blue"};
  std::string file;
  for (const auto& p : prompts) file += p + "\n\n";  // empty lines are skipped
  write_text(dir / "prompts.txt", file);
  // Three rows for seven prompts: rows join as others finish (max-tokens differ by where EOS falls: none
  // here, so every row runs its 12 tokens; the batch is refilled from the queue).
  const CliResult r =
      run_cli("sample --checkpoint '" + ckpt + "' --prompts '" + (dir / "prompts.txt") +
              "' --seed 7 --max-tokens 12 --temperature 1 --max-batch 3 --output '" + (dir / "out.jsonl") + "'");
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK_CONTAINS(r.err, "sample --prompts: 7 prompts");
  std::vector<json> rows;
  std::istringstream lines(read_text(dir / "out.jsonl"));
  for (std::string line; std::getline(lines, line);) rows.push_back(json::parse(line));
  REQUIRE(rows.size() == prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt " << i << ": " << rows[i].dump());
    CHECK(rows[i]["index"] == i);
    CHECK(rows[i]["prompt"] == prompts[i]);
    CHECK(rows[i]["finish_reason"] == "length");
    CHECK(rows[i]["completion_tokens"] == 12);
    const auto alone = sample_texts(ckpt,
                                    "--prompt '" + prompts[i] + "' --seed " + std::to_string(7 + i) +
                                        " --max-tokens 12 --temperature 1 --num-samples 1",
                                    prompts[i]);
    REQUIRE(alone.size() == 1);
    CHECK(rows[i]["completion"] == alone[0]);
  }
  // Chat rows (.jsonl): rendered with the template, ended by the end of turn, as sample --chat.
  write_text(dir / "chats.jsonl", R"({"messages": [{"role": "user", "content": "gold"}]})"
                                  "\n"
                                  R"({"prompt": "Hello"})"
                                  "\n");
  const CliResult c = run_cli("sample --checkpoint '" + ckpt + "' --prompts '" + (dir / "chats.jsonl") +
                              "' --seed 3 --max-tokens 20 --temperature 0.5");
  INFO(c.err);
  REQUIRE(c.code == 0);
  const json chat = json::parse(c.out.substr(0, c.out.find('\n')));
  CHECK(chat["finish_reason"] == "stop");
  CHECK(chat["completion"] == sample_texts(ckpt, "--prompt gold --chat --seed 3 --max-tokens 20 --temperature 0.5",
                                           "user: gold\nassistant: ")[0]);
  // Bad input: one line naming the file and line, exit 1; --output needs --prompts.
  write_text(dir / "bad.jsonl", "{\"prompt\": \"a\"}\n{\"text\": 3}\n");
  const CliResult bad = run_cli("sample --checkpoint '" + ckpt + "' --prompts '" + (dir / "bad.jsonl") + "'");
  CHECK(bad.code == 1);
  CHECK_CONTAINS(bad.err, "bad.jsonl, line 2: each line is {\"prompt\": TEXT} or {\"messages\": [...]}");
  CHECK(run_cli("sample --checkpoint '" + ckpt + "' --output x.jsonl").code != 0);
}
