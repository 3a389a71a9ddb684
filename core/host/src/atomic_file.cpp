// Atomic file and folder writes (see atomic_file.h): temporary file or folder, check, fsync, rename,
// fsync the folder.
#include "linearnexus/host/atomic_file.h"

#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "linearnexus/error.h"

namespace fs = std::filesystem;

namespace linearnexus {

namespace {
// fsync a file or folder by path: the data (or the folder entry of a rename) reaches the disk.
void sync_path(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags);
  if (fd < 0) return;  // nothing to sync that we could open; the rename itself still holds
  ::fsync(fd);
  ::close(fd);
}
}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp";
  // A leftover of a killed writer is ours to replace; removed first so that whatever sits under that
  // name (even a named pipe, which an open for writing would wait on) is never opened.
  std::error_code ec;
  fs::remove(tmp_, ec);
  out_.open(tmp_, std::ios::binary | std::ios::trunc);
  if (!out_)
    throw Error("cannot write '" + tmp_ + "': " + std::strerror(errno) + " (is the folder there and writable?)");
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  if (out_.is_open()) out_.close();
  std::error_code ec;
  fs::remove(tmp_, ec);
}

void AtomicFile::close_stream() {
  if (closed_) return;
  closed_ = true;
  out_.flush();
  const bool ok = static_cast<bool>(out_);
  out_.close();
  if (!ok || out_.fail()) throw Error("writing '" + path_ + "' failed (disk full?); it was left as it was");
}

void AtomicFile::commit() {
  close_stream();
  sync_path(tmp_, O_RDONLY);
  std::error_code ec;
  fs::rename(tmp_, path_, ec);
  if (ec) throw Error("cannot move '" + tmp_ + "' to '" + path_ + "': " + ec.message());
  committed_ = true;
  const fs::path dir = fs::path(path_).parent_path();
  sync_path(dir.empty() ? "." : dir.string(), O_RDONLY | O_DIRECTORY);
}

void write_file_atomically(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  f.stream() << text;
  f.commit();
}

// ---- StagedFolder -------------------------------------------------------------------------------

void remove_folder_tree(const std::string& path) {
  // nftw rather than std::filesystem::remove_all: torch 2.x's libtorch.so exports a copy of the
  // latter that the dynamic linker may bind first, and that copy crashes (tests/test_util.h).
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); }, 16,
      FTW_DEPTH | FTW_PHYS);
}

StagedFolder::StagedFolder(std::string path) : path_(std::move(path)) {
  while (path_.size() > 1 && path_.back() == '/') path_.pop_back();
  std::error_code ec;
  if (fs::exists(path_, ec) && (!fs::is_directory(path_, ec) || !fs::is_empty(path_, ec)))
    throw Error("'" + path_ + "' is not empty; convert writes a new folder: name another one or remove it");
  const fs::path target(path_);
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  fs::create_directories(parent, ec);
  if (ec) throw Error("cannot create '" + parent.string() + "': " + ec.message());
  // Leftovers of earlier writers of this folder that were killed: removed once their process is gone.
  const std::string stem = "." + target.filename().string() + ".partial-";
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(stem, 0) != 0) continue;
    const long pid = std::atol(name.c_str() + stem.size());
    if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) remove_folder_tree(e.path().string());
  }
  tmp_ = (parent / (stem + std::to_string(::getpid()))).string();
  remove_folder_tree(tmp_);  // this process's own leftover, if any
  if (::mkdir(tmp_.c_str(), 0755) != 0)
    throw Error("cannot create the temporary folder '" + tmp_ + "': " + std::strerror(errno) + " (is '" +
                parent.string() + "' writable?)");
}

StagedFolder::~StagedFolder() {
  if (!committed_) remove_folder_tree(tmp_);
}

void StagedFolder::commit() {
  // rename(2) replaces an empty folder and refuses one that is not empty: a folder someone filled
  // meanwhile is never mixed with ours.
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw Error("cannot move '" + tmp_ + "' to '" + path_ + "': " + std::strerror(errno) +
                (errno == ENOTEMPTY || errno == EEXIST ? " (it is not empty any more; name another folder)" : ""));
  committed_ = true;
  const fs::path dir = fs::path(path_).parent_path();
  sync_path(dir.empty() ? "." : dir.string(), O_RDONLY | O_DIRECTORY);
}

}  // namespace linearnexus
