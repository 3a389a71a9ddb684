// `linearnexus serve` (server.h): routes, authentication, streaming, draining on SIGTERM.
#include "server.h"

#include <httplib.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "batch_scheduler.h"
#include "linearnexus/error.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/run_checkpoint.h"
#include "linearnexus/log.h"
#include "linearnexus/model.h"
#include "linearnexus/tokenizer.h"
#include "openai_api.h"
#include "plugin_errors.h"

namespace linearnexus {

namespace {
namespace fs = std::filesystem;

int g_signal_pipe[2] = {-1, -1};  // SIGTERM / SIGINT -> the draining thread (async-signal-safe)

// The key compared in time that depends only on the expected key's length, so response times do
// not reveal how many leading bytes of a guess were right.
bool same_key(const std::string& given, const std::string& expected) {
  unsigned diff = given.size() != expected.size();
  for (size_t i = 0; i < expected.size(); ++i)
    diff |= static_cast<unsigned char>(expected[i]) ^ static_cast<unsigned char>(i < given.size() ? given[i] : 0);
  return diff == 0;
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& type,
                const std::string& param = "", const std::string& code = "") {
  res.status = status;
  res.set_content(error_body(message, type, param, code), "application/json");
}

// Requests being answered (a streamed one until its last byte is written): draining waits for 0.
struct InFlight {
  std::atomic<int64_t> count{0};
  std::atomic<bool> draining{false};
};

struct InFlightGuard {
  InFlight& f;
  explicit InFlightGuard(InFlight& f) : f(f) { ++f.count; }
  ~InFlightGuard() { --f.count; }
};

// A streamed response's state, owned by httplib's content provider; when httplib drops it (the
// response written, or the client gone) an unfinished job is cancelled and its rows free up.
struct StreamState {
  StreamState(InFlight& f, std::shared_ptr<Ticket> t, ParsedRequest r)
      : guard(f), ticket(std::move(t)), request(std::move(r)) {}
  ~StreamState() { ticket->cancel(); }
  InFlightGuard guard;
  std::shared_ptr<Ticket> ticket;
  ParsedRequest request;
  std::string id;
  int64_t created = 0;
  std::vector<bool> role_sent;
};

class Server {
 public:
  Server(const ServeOptions& o, LoadedModel& lm, const Registry& registry)
      : options_(o), scheduler_(*lm.model, registry, *lm.tokenizer, o.max_batch) {
    model_.tokenizer = lm.tokenizer.get();
    model_.context = lm.model->config().dims.max_seq_len;
    model_.max_prompt_tokens = o.max_prompt_tokens > 0 ? o.max_prompt_tokens : model_.context - 1;
    model_.max_batch = o.max_batch;
    fs::path p = fs::absolute(o.checkpoint).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();
    model_.id = fs::is_regular_file(p) ? p.parent_path().filename().string() : p.filename().string();
    if (model_.max_prompt_tokens >= model_.context)
      throw Error("serve --max-prompt-tokens " + std::to_string(o.max_prompt_tokens) + ": the model's context is " +
                  std::to_string(model_.context) + " tokens; give at most " + std::to_string(model_.context - 1));
  }

  int run();

 private:
  const ServeOptions& options_;
  ServedModel model_;
  BatchScheduler scheduler_;
  httplib::Server http_;
  InFlight in_flight_;
  std::atomic<int64_t> next_id_{0};
  std::atomic<bool> listen_ended_{false};

  bool authorized(const httplib::Request& req, httplib::Response& res);
  void completion(const httplib::Request& req, httplib::Response& res, bool chat);
  void routes();
};

bool Server::authorized(const httplib::Request& req, httplib::Response& res) {
  if (options_.api_key.empty()) return true;
  const std::string header = req.get_header_value("Authorization"), bearer = "Bearer ";
  const std::string given = header.compare(0, bearer.size(), bearer) == 0 ? header.substr(bearer.size()) : "";
  if (same_key(given, options_.api_key)) return true;
  send_error(res, 401, "missing or wrong API key (Authorization: Bearer KEY)", "invalid_request_error", "",
             "invalid_api_key");
  return false;
}

void Server::completion(const httplib::Request& req, httplib::Response& res, bool chat) {
  InFlightGuard guard(in_flight_);
  if (in_flight_.draining) return send_error(res, 503, "the server is shutting down", "server_error");
  if (!authorized(req, res)) return;
  ParsedRequest r;
  try {
    r = parse_request(req.body, chat, model_);
  } catch (const ApiError& e) {
    return send_error(res, e.status, e.what(), e.type, e.param, e.code);
  }
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(++next_id_);
  const int64_t created =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const size_t rows = r.job.rows.size();
  auto ticket = scheduler_.submit(r.job);
  if (!r.stream) {
    std::vector<std::string> texts(rows), reasons(rows);
    int64_t tokens = 0;
    for (JobEvent e; ticket->next(&e);) {
      if (!e.error.empty()) return send_error(res, 500, "generation failed: " + e.error, "server_error");
      texts[static_cast<size_t>(e.row)] += e.text;
      if (!e.finish_reason.empty()) reasons[static_cast<size_t>(e.row)] = e.finish_reason, tokens += e.tokens;
    }
    res.set_content(dump_json(response_json(r, id, created, model_.id, texts, reasons, tokens)), "application/json");
    return;
  }
  auto st = std::make_shared<StreamState>(in_flight_, ticket, std::move(r));
  st->id = id;
  st->created = created;
  st->role_sent.assign(rows, false);
  res.set_header("Cache-Control", "no-cache");
  // Called by httplib until sink.done(): each call waits for the job's next event and writes it.
  res.set_chunked_content_provider("text/event-stream", [st, this](size_t, httplib::DataSink& sink) {
    JobEvent e;
    std::string out;
    if (!st->ticket->next(&e)) {
      out = "data: [DONE]\n\n";
      const bool ok = sink.write(out.data(), out.size());
      sink.done();
      return ok;
    }
    const ParsedRequest& r = st->request;
    if (!e.error.empty()) {
      out = "data: " + error_body("generation failed: " + e.error, "server_error") + "\n\n";
    } else {
      if (r.chat && !st->role_sent[static_cast<size_t>(e.row)]) {
        out += sse_chunk(r, st->id, st->created, model_.id, e.row, "", "", true);
        st->role_sent[static_cast<size_t>(e.row)] = true;
      }
      if (!e.text.empty()) out += sse_chunk(r, st->id, st->created, model_.id, e.row, e.text, "");
      if (!e.finish_reason.empty()) out += sse_chunk(r, st->id, st->created, model_.id, e.row, "", e.finish_reason);
    }
    if (out.empty()) return true;
    return sink.write(out.data(), out.size());  // false: the client is gone (~StreamState cancels the job)
  });
}

void Server::routes() {
  http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = in_flight_.draining ? 503 : 200;
    res.set_content(in_flight_.draining ? R"({"status":"draining"})" : R"({"status":"ok"})", "application/json");
  });
  http_.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    const nlohmann::json m = {{"id", model_.id},
                              {"object", "model"},
                              {"created", 0},
                              {"owned_by", "linearnexus"},
                              {"context_length", model_.context}};
    res.set_content(dump_json({{"object", "list"}, {"data", nlohmann::json::array({m})}}), "application/json");
  });
  http_.Post("/v1/completions",
             [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, false); });
  http_.Post("/v1/chat/completions",
             [this](const httplib::Request& req, httplib::Response& res) { completion(req, res, true); });
  // httplib's own refusals (no route, a body over --max-body-bytes, a malformed request) in OpenAI's format.
  http_.set_error_handler(
      httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        if (res.status == 404)
          send_error(res, 404, "no route " + req.method + " " + req.path, "invalid_request_error");
        else if (res.status == 413)
          send_error(res, 413, "the body is larger than --max-body-bytes " + std::to_string(options_.max_body_bytes),
                     "invalid_request_error");
        else
          send_error(res, res.status, "the request was refused (HTTP " + std::to_string(res.status) + ")",
                     res.status >= 500 ? "server_error" : "invalid_request_error");
        return httplib::Server::HandlerResponse::Handled;
      }));
  http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = error_text(e);
    } catch (...) {
    }
    send_error(res, 500, what, "server_error");
  });
}

int Server::run() {
  routes();
  // Handler threads wait on their jobs, so there must be more of them than rows in a round.
  const size_t threads = static_cast<size_t>(std::max<int64_t>(32, 2 * options_.max_batch + 8));
  http_.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_.set_payload_max_length(static_cast<size_t>(options_.max_body_bytes));
  http_.set_keep_alive_timeout(2);  // an idle keep-alive connection delays the exit by this much at most
  // httplib's default adds SO_REUSEPORT, with which a second server binds a port already served and
  // the kernel splits the clients between the two; a taken port must be an error instead.
  http_.set_socket_options([](socket_t sock) {
    const int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  int port = options_.port;
  if (port == 0)
    port = http_.bind_to_any_port(options_.host);
  else if (!http_.bind_to_port(options_.host, port))
    port = -1;
  if (port < 0)
    throw Error("serve: cannot listen on " + options_.host + ":" + std::to_string(options_.port) +
                " (port taken, or not an address of this machine? --port 0 takes any free port)");
  std::cout << "linearnexus serve: listening on http://" << options_.host << ":" << port << " (model " << model_.id
            << ", context " << model_.context << " tokens, up to " << options_.max_batch << " rows per batch)"
            << std::endl;

  // SIGTERM / SIGINT reach this thread through the signal pipe (see serve()): refuse new requests,
  // wait for the ones in flight, then stop listening. A 0 byte is run()'s own wake-up call.
  std::thread signals([this] {
    char sig = 0;
    while (::read(g_signal_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig == 0) return;
    log_info(std::string("serve: ") + (sig == SIGTERM ? "SIGTERM" : "SIGINT") + ": draining " +
             std::to_string(in_flight_.count.load()) + " request(s) in flight, refusing new ones");
    in_flight_.draining = true;
    while (in_flight_.count > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    // stop() does nothing before the listener runs (a signal right after the bind): repeat it.
    while (!listen_ended_) {
      http_.stop();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  const bool ok = http_.listen_after_bind();
  listen_ended_ = true;
  if (!in_flight_.draining) {  // the listener ended on its own: wake the signal thread
    const char zero = 0;
    if (::write(g_signal_pipe[1], &zero, 1) < 0) signals.detach();
  }
  if (signals.joinable()) signals.join();
  scheduler_.stop();
  const SchedulerStats s = scheduler_.stats();
  log_info("serve: stopped after " + std::to_string(s.rows) + " completion(s), at most " +
           std::to_string(s.max_live_rows) + " rows decoded together, " + std::to_string(s.joined_running) +
           " joined a running batch, " + std::to_string(s.cancelled_rows) + " cancelled");
  return ok ? 0 : 1;
}
}  // namespace

int serve(const ServeOptions& o) {
  if (o.max_batch < 1) throw Error("serve --max-batch must be at least 1");
  if (o.max_body_bytes < 1) throw Error("serve --max-body-bytes must be at least 1");
  // Whichever thread a signal lands on (LibTorch's may exist already), the handler only writes its
  // number into a pipe that one thread of Server::run reads. A client that closes its socket must
  // not kill the server with SIGPIPE.
  if (::pipe(g_signal_pipe) != 0) throw Error("serve: cannot create the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = [](int sig) {
    const char c = static_cast<char>(sig);
    (void)!::write(g_signal_pipe[1], &c, 1);
  };
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  PluginHost host;
  return with_plugin_errors_copied([&] {
    LoadedModel lm = load_model_from_checkpoint(o.checkpoint, host, o.device);
    Server server(o, lm, host.registry());
    return server.run();
  });
}

}  // namespace linearnexus
