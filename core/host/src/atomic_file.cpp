// Atomic file writes (see atomic_file.h): temporary file, check, fsync, rename, fsync the folder.
#include "linearnexus/host/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
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

}  // namespace linearnexus
