// `linearnexus run --nproc N` (launcher.h): the ranks' processes, their signals and their ends.
#include "launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/cuda.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <iostream>
#include <map>
#include <thread>

#include "linearnexus/error.h"
#include "linearnexus/host/config.h"
#include "linearnexus/host/plugin_host.h"
#include "linearnexus/host/preflight.h"
#include "linearnexus/host/runtime.h"
#include "plugin_errors.h"

namespace linearnexus {

namespace {

const char* kLauncherFdVariable = "LINEARNEXUS_LAUNCHER_FD";

// A free TCP port on localhost for the ranks' rendezvous (bound once, released, then used).
int free_local_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    throw Error("run --nproc: no free localhost port for the ranks to meet on");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// The CPU cores this process may run on (its affinity mask, as nproc counts them).
int64_t usable_cores() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return std::max<int64_t>(1, std::thread::hardware_concurrency());
}

// The launcher's signals: counted here, forwarded to the ranks by the wait loop.
volatile sig_atomic_t g_signals = 0, g_last_signal = 0;
void on_signal(int sig) {
  g_last_signal = sig;
  g_signals = g_signals + 1;
}

}  // namespace

int launch_ranks(int64_t nproc, int64_t nproc_max, const std::string& path, const std::vector<std::string>& overrides,
                 char** argv) {
  if (std::getenv("WORLD_SIZE"))
    throw Error(
        "run --nproc: WORLD_SIZE is already set (a launcher such as torchrun starts the ranks itself): "
        "drop --nproc, or unset WORLD_SIZE");
  {
    // Check the experiment once here (bad files fail once, not N times), and the ranks it may have.
    PluginHost host;
    with_plugin_errors_copied([&] {
      Experiment exp = load_experiment(path, overrides, host);
      const at::Device device = resolve_device(exp.run.device);
      if (device.is_cuda()) {
        const int64_t gpus = static_cast<int64_t>(torch::cuda::device_count());
        if (nproc > gpus)
          throw Error("run --nproc " + std::to_string(nproc) + ": this machine has " + std::to_string(gpus) +
                      " GPU(s); ask for at most that many ranks (or device: cpu)");
      } else {
        // Every rank holds the whole model and runs its own threads: ranks past the cores only
        // slow each other down (and a typo like --nproc 1000 would fork a thousand processes).
        const int64_t cores = usable_cores(), limit = nproc_max > 0 ? nproc_max : cores;
        if (nproc > limit)
          throw Error("run --nproc " + std::to_string(nproc) + ": " +
                      (nproc_max > 0 ? "more than --nproc-max " + std::to_string(nproc_max)
                                     : "this process may use " + std::to_string(cores) + " CPU core(s)") +
                      "; ask for at most " + std::to_string(limit) + " ranks" +
                      (nproc_max > 0 ? "" : " (--nproc-max N allows more, each rank slower)"));
      }
      preflight(exp, host);
      return 0;
    });
  }
  const int port = free_local_port();
  std::vector<std::string> args;
  for (int i = 0; argv[i]; ++i) {
    const std::string a = argv[i];
    if (a == "--nproc" || a == "--nproc-max") {
      ++i;
      continue;
    }
    if (a.rfind("--nproc=", 0) == 0 || a.rfind("--nproc-max=", 0) == 0) continue;
    args.push_back(a);
  }
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  // The ranks' line to the launcher: they hold the read end (launcher_watch), the launcher alone the
  // write end (close-on-exec), so it reaches end-of-file in every rank when the launcher ends, however
  // it ends. (Not PR_SET_PDEATHSIG: that fires again each time a dying multi-threaded parent hands the
  // child to another of its threads, and a second stop signal aborts.)
  int line[2];
  if (::pipe2(line, O_CLOEXEC) != 0)
    throw Error(std::string("run --nproc: cannot make a pipe: ") + std::strerror(errno));
  ::fcntl(line[0], F_SETFD, 0);  // the read end survives execv; the write end does not
  // Each rank's environment, made before fork: LibTorch's threads may hold malloc's lock at the fork,
  // so the child calls nothing that allocates before execve.
  std::vector<std::vector<std::string>> envs(static_cast<size_t>(nproc));
  for (int64_t r = 0; r < nproc; ++r) {
    const std::map<std::string, std::string> set = {{"RANK", std::to_string(r)},
                                                    {"LOCAL_RANK", std::to_string(r)},
                                                    {"WORLD_SIZE", std::to_string(nproc)},
                                                    {"LOCAL_WORLD_SIZE", std::to_string(nproc)},
                                                    {"MASTER_ADDR", "127.0.0.1"},
                                                    {"MASTER_PORT", std::to_string(port)},
                                                    {kLauncherFdVariable, std::to_string(line[0])}};
    for (char** e = environ; *e; ++e) {
      const std::string kv = *e;
      if (!set.count(kv.substr(0, kv.find('=')))) envs[r].push_back(kv);
    }
    for (const auto& [k, v] : set) envs[r].push_back(k + "=" + v);
  }
  std::vector<std::vector<char*>> envps(envs.size());
  for (size_t r = 0; r < envs.size(); ++r) {
    for (auto& kv : envs[r]) envps[r].push_back(kv.data());
    envps[r].push_back(nullptr);
  }
  std::map<pid_t, int64_t> ranks;
  for (int64_t r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw Error(std::string("run --nproc: cannot start a rank: ") + std::strerror(errno));
    if (pid == 0) {
      // A process group of its own: a terminal's Ctrl-C reaches the launcher alone, which forwards
      // it once (a rank that got it twice would abort).
      ::setpgid(0, 0);
      ::execve("/proc/self/exe", cargs.data(), envps[static_cast<size_t>(r)].data());
      ::_exit(127);
    }
    ranks[pid] = r;
  }
  int first_failure = 0;
  sig_atomic_t forwarded = 0;
  while (!ranks.empty()) {
    // Forward each signal once to every rank still running: the first asks them to stop after their
    // step and save, a second aborts them.
    while (forwarded < g_signals) {
      for (const auto& [p, r] : ranks) ::kill(p, g_last_signal);
      ++forwarded;
    }
    // Polled (20 times a second), so that a signal arriving just before a blocking wait is never
    // held up until a rank ends.
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) break;
    const int64_t r = ranks[pid];
    ranks.erase(pid);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code != 0 && first_failure == 0) {
      first_failure = code;
      if (WIFSIGNALED(status) && forwarded == 0)
        std::cerr << "error: run --nproc: rank " << r << " was killed by signal " << WTERMSIG(status) << "\n";
      // Stopping on a signal, every rank saves and ends by itself: wait for all of them.
      if (forwarded > 0) continue;
      // The others notice the lost peer at their next collective and end with an error; give them
      // a moment to say so, then stop whoever is left.
      for (int wait = 0; wait < 100 && !ranks.empty(); ++wait) {
        const pid_t done = ::waitpid(-1, &status, WNOHANG);
        if (done > 0)
          ranks.erase(done);
        else
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      for (const auto& [p, rr] : ranks) ::kill(p, SIGKILL);
    }
  }
  ::signal(SIGTERM, SIG_DFL);
  ::signal(SIGINT, SIG_DFL);
  ::close(line[0]);
  ::close(line[1]);
  return first_failure == 0 && forwarded == 0 ? 0 : 1;
}

void watch_launcher() {
  const char* fd_text = std::getenv(kLauncherFdVariable);
  if (!fd_text) return;
  const int fd = std::atoi(fd_text);
  ::unsetenv(kLauncherFdVariable);
  // Blocks until the launcher's end of the pipe closes: then the launcher is gone, and this rank
  // stops as on SIGTERM (after its step, with a checkpoint) rather than train on as an orphan.
  std::thread([fd] {
    char c;
    while (::read(fd, &c, 1) < 0 && errno == EINTR) {
    }
    ::kill(::getpid(), SIGTERM);
  }).detach();
}

}  // namespace linearnexus
