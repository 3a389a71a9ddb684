// Process and device set-up (runtime.h).
#include "linearnexus/host/runtime.h"

#include <fcntl.h>
#include <sched.h>
#include <malloc.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <c10/macros/Macros.h>
#if defined(C10_USE_GLOG) && defined(LINEARNEXUS_HAVE_GLOG)
#include <glog/logging.h>
#endif

#include "linearnexus/error.h"
#include "linearnexus/host/config.h"

namespace fs = std::filesystem;

namespace linearnexus {

namespace {
// LibTorch's own log lines (c10d's "[c10d] The client socket has timed out ...", glog's "Logging
// before InitGoogleLogging() is written to STDERR") would come before the one error line that
// already names what failed, and say it worse: only fatal ones are printed, unless
// LINEARNEXUS_LOG_LEVEL=debug (or trace) asks for everything. A LibTorch that logs through glog
// (Debian's) has glog's flag; one without glog (torch's wheels) is left as it is.
void quiet_libtorch_logs() {
#if defined(C10_USE_GLOG) && defined(LINEARNEXUS_HAVE_GLOG)
  const char* level = std::getenv("LINEARNEXUS_LOG_LEVEL");
  const bool verbose = level && (std::string(level) == "debug" || std::string(level) == "trace");
  FLAGS_minloglevel = verbose ? google::GLOG_INFO : google::GLOG_FATAL;
#endif
}
}  // namespace

namespace {
// Distinct (physical id, core id) pairs of /proc/cpuinfo: hyper-threads of one core share its
// vector units, so a thread per hyper-thread only adds contention to the matmuls. 0 when unknown.
int physical_cores() {
  std::ifstream in("/proc/cpuinfo");
  std::set<std::pair<std::string, std::string>> cores;
  std::string line, package = "0";
  while (std::getline(in, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    const std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if (key == "physical id") package = value;
    if (key == "core id") cores.emplace(package, value);
  }
  return static_cast<int>(cores.size());
}

// The CPUs this process may run on (taskset, a container's cpuset).
int usable_cpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::thread::hardware_concurrency());
}

ThreadChoice g_threads;
}  // namespace

ThreadChoice choose_num_threads() {
  for (const char* var : {"LINEARNEXUS_NUM_THREADS", "OMP_NUM_THREADS"}) {
    const char* env = std::getenv(var);
    if (!env) continue;
    // OMP_NUM_THREADS may list a count per nesting level ("4,2"): the first is this level's.
    std::string text = env;
    if (std::string(var) == "OMP_NUM_THREADS") text = text.substr(0, text.find(','));
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end || errno || n < 1 || n > 4096)
      throw Error(std::string(var) + "='" + env + "' is not a number of threads (a whole number from 1 to 4096); " +
                  "unset it to use the physical cores");
    return {static_cast<int>(n), var};
  }
  const int cores = physical_cores(), cpus = std::max(1, usable_cpus());
  return {cores > 0 ? std::min(cores, cpus) : cpus, ""};
}

const ThreadChoice& thread_choice() { return g_threads; }

std::string ThreadChoice::describe() const {
  return std::to_string(threads) + " CPU threads (" +
         (source.empty()
              ? std::string("the physical cores; LINEARNEXUS_NUM_THREADS or OMP_NUM_THREADS sets another number")
              : "from " + source) +
         ")";
}

void init_runtime() {
  quiet_libtorch_logs();
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 256 << 20);
  g_threads = choose_num_threads();
  at::set_num_threads(g_threads.threads);
}

at::Device resolve_device(const std::string& device) {
  if (device != "cpu" && device != "cuda" && device != "auto")
    throw Error("device must be cpu, cuda or auto (got '" + device + "')");
  if (device == "cpu") return at::kCPU;
  const bool cuda = at::hasCUDA();
  if (device == "cuda" && !cuda)
    throw Error(
        "device: cuda was asked for, but this LibTorch sees no CUDA device (a CPU-only build, or no GPU/driver "
        "here); use device: cpu or device: auto");
  return cuda ? at::Device(at::kCUDA) : at::Device(at::kCPU);
}

at::ScalarType compute_dtype(const Experiment& exp, const at::Device& device) {
  if (exp.run.precision != "bf16") return at::kFloat;
  if (!device.is_cuda())
    throw Error(exp.source + ": precision: bf16 needs a CUDA device (device is " + device.str() +
                " here); use precision: fp32 on the CPU");
  return at::kBFloat16;
}

namespace {
// The error for a run folder whose .lock another run holds, naming the holder's pid (the lock file's
// text); closes fd.
[[noreturn]] void throw_in_use(int fd, const std::string& dir) {
  char buf[32] = {0};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  ::close(fd);
  const std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "unknown";
  throw Error("trainer.out_dir '" + dir + "' is in use by another run (pid " + pid.substr(0, pid.find('\n')) +
              "); wait for it to end, or give this run another out_dir");
}
}  // namespace

void check_run_folder_free(const std::string& dir) {
  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return;  // no lock file: nobody has run there
  struct stat st {};
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  // A shared lock conflicts with a running run's exclusive one, and is dropped at once.
  if (regular && ::flock(fd, LOCK_SH | LOCK_NB) != 0) {
    throw_in_use(fd, dir);
  }
  ::close(fd);
  if (!regular) throw Error("trainer.out_dir: the lock file '" + path + "' is not a regular file; remove it");
}

namespace {
// Lock-free, so async-signal-safe; an exchange because two signals may be handled at once on two
// threads (LibTorch's pool): exactly one of them sees 0 and asks for the stop.
std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the stop flag is set from a signal handler");

// Async-signal-safe: a flag, then for a second signal write(2), the default action and raise.
void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) == 0) return;
  const char msg[] = "error: a second stop signal: ending at once, without saving (the last checkpoint is intact)\n";
  const ssize_t ignored = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)ignored;
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}
}  // namespace

void install_stop_signals() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a signal must not make a read or write in flight fail
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
}

void restore_stop_signals() {
  ::signal(SIGTERM, SIG_DFL);
  ::signal(SIGINT, SIG_DFL);
}

int stop_signal() { return g_stop_signal.load(); }

std::string signal_name(int sig) {
  if (sig == SIGTERM) return "SIGTERM";
  if (sig == SIGINT) return "SIGINT";
  return "signal " + std::to_string(sig);
}

std::shared_ptr<void> lock_run_folder(const std::string& dir, int attempt) {
  const std::string path = (fs::path(dir) / ".lock").string();
  // O_NONBLOCK and the fstat: a named pipe or device planted as .lock is refused, never waited on.
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
  if (fd < 0) throw Error("trainer.out_dir: cannot create the lock file '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("trainer.out_dir: the lock file '" + path + "' is not a regular file; remove it");
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    throw_in_use(fd, dir);
  }
  // The holder removes the file when it ends (below): a run that opened the file just before that
  // holds a lock on a file no longer in the folder, and would share the folder with the next run
  // that creates a new one. The lock counts only if the name still points at the locked file.
  struct stat named {};
  if (::stat(path.c_str(), &named) != 0 || named.st_ino != st.st_ino || named.st_dev != st.st_dev) {
    ::close(fd);
    if (attempt < 3) return lock_run_folder(dir, attempt + 1);
    throw Error("trainer.out_dir '" + dir + "': its lock file keeps being replaced; is another run starting there?");
  }
  // The holder's pid, for the message above (the lock itself is the flock: it ends with the process).
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    // Only the message would lack the pid; the lock holds.
  }
  // Removed while still locked, so no run sees the folder free with the file still there.
  return std::shared_ptr<void>(nullptr, [fd, path](void*) {
    ::unlink(path.c_str());
    ::close(fd);
  });
}

}  // namespace linearnexus
