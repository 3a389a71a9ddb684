#pragma once
// `linearnexus run --nproc N`: N data-parallel ranks of the same command on this machine.
#include <cstdint>
#include <string>
#include <vector>

namespace linearnexus {

// Starts N ranks of this same command (argv without --nproc / --nproc-max) with torchrun's
// environment, rendezvous on a free localhost port, as torchrun --standalone would, and waits for
// them. Before any rank starts: N at most the GPUs on CUDA, and at most the CPU cores this process
// may use otherwise (or `nproc_max` when > 0), and the experiment checked once (preflight.h), so a
// bad file fails once, not N times. SIGTERM / SIGINT are forwarded to the ranks (which stop after
// their current step and save; a second signal aborts them) and the launcher waits for them; if the
// launcher itself dies, each rank stops as on SIGTERM (watch_launcher). Returns 0 when every rank
// succeeded, else 1.
int launch_ranks(int64_t nproc, int64_t nproc_max, const std::string& path, const std::vector<std::string>& overrides,
                 char** argv);

// In a rank started by launch_ranks: a thread that sends this process SIGTERM once the launcher is
// gone (its pipe reaches end-of-file). Does nothing in any other process.
void watch_launcher();

}  // namespace linearnexus
