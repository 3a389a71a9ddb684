#pragma once
// Process and device set-up the runner and the test programs share.
#include <ATen/ATen.h>

#include <memory>
#include <string>

namespace linearnexus {

struct Experiment;

// LibTorch's intra-op threads: $LINEARNEXUS_NUM_THREADS, else $OMP_NUM_THREADS (its first count), else
// the physical cores (distinct core ids of /proc/cpuinfo, at most the CPUs this process may use).
// A variable that is not a whole number from 1 to 4096 is an Error naming it.
struct ThreadChoice {
  int threads = 1;
  std::string source;            // the variable it came from; "" = the physical cores
  std::string describe() const;  // "2 CPU threads (the physical cores; ...)"
};
ThreadChoice choose_num_threads();
// What init_runtime chose (a run logs it).
const ThreadChoice& thread_choice();

// Process set-up for training, called first by the runner and the test programs:
//  * LibTorch's intra-op threads as choose_num_threads says (Debian's LibTorch defaults to one,
//    and reads neither variable itself); an Error for a bad variable;
//  * malloc keeps freed memory (up to 1 GiB blocks) instead of returning it to the OS, so the
//    large activations and logits of every step reuse pages already mapped: first-touch page
//    faults made a fresh 200 MB logits tensor cost 0.6 s on our VMs, five times its matmul.
void init_runtime();

// The `device` key: "auto" -> cuda when available, else cpu; "cuda" without CUDA is an error.
at::Device resolve_device(const std::string& device);
// The `precision` key: fp32 -> kFloat; bf16 -> kBFloat16 on CUDA (LMModel::set_compute_dtype),
// an error on the CPU (bf16 matmuls there are slow and autocast is CUDA-only here).
at::ScalarType compute_dtype(const Experiment& exp, const at::Device& device);

// SIGTERM and SIGINT while a run trains: the first asks the run to stop once the current step is
// done (TrainingRun::end_step then saves a checkpoint, says so, and ends the run with an Error: exit
// 1; data-parallel ranks agree on the step first); a second one ends the process at once, as the
// default action would (exit 128 + signal), with a line saying so: checkpoints are written
// atomically, so the last one stays intact. `linearnexus run` installs this around training and
// restores the default afterwards (samples, other commands: the default action).
void install_stop_signals();
void restore_stop_signals();
// The signal that asked the run to stop, or 0.
int stop_signal();
// "SIGTERM", "SIGINT", or "signal N".
std::string signal_name(int sig);

// An exclusive lock on a run folder (flock on DIR/.lock, which records the holder's pid), held
// until the returned handle is dropped or the process ends, even by kill -9. A second run on the
// same folder gets an Error naming the folder and the holder's pid.
// The lock file is removed when the handle is dropped (`attempt`: internal, a retry when a run that
// was ending removed the file while this one opened it).
std::shared_ptr<void> lock_run_folder(const std::string& dir, int attempt = 0);
// The same Error when another run holds `dir` now, without taking or creating anything (`validate`).
void check_run_folder_free(const std::string& dir);

}  // namespace linearnexus
