// A run's hold on its folder (run_folder.h).
#include "linearnexus/host/run_folder.h"

#include <filesystem>

#include "linearnexus/error.h"
#include "linearnexus/host/atomic_file.h"
#include "linearnexus/host/runtime.h"
#include "linearnexus/log.h"

namespace fs = std::filesystem;

namespace linearnexus {

RunFolder::RunFolder(const std::string& dir, bool main_rank) {
  // The topmost missing folder: what to remove again if the run never starts (runs/ too, on a first run).
  fs::path top;
  std::error_code ec;
  for (fs::path p = fs::absolute(dir, ec); !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    top = p;
    if (p == p.parent_path()) break;
  }
  fs::create_directories(dir, ec);
  if (ec) throw Error("trainer.out_dir: cannot create '" + dir + "': " + ec.message());
  if (!main_rank) return;
  created_ = top.string();
  try {
    lock_ = lock_run_folder(dir);
    log_ = log_to_file((fs::path(dir) / "train.log").string());
  } catch (...) {  // the destructor does not run for a constructor that throws
    log_.reset();
    lock_.reset();
    if (!created_.empty()) remove_folder_tree(created_);
    throw;
  }
}

RunFolder::~RunFolder() {
  log_.reset();   // train.log closed before its folder may go
  lock_.reset();  // removes .lock
  if (!keep_ && !created_.empty()) remove_folder_tree(created_);
  created_.clear();
}

}  // namespace linearnexus
