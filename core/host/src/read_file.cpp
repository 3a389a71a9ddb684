// Reading files a user names (read_file.h): open without blocking, fstat, size limit per kind.
#include "linearnexus/host/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "linearnexus/error.h"

namespace linearnexus {

namespace {
std::string type_of(mode_t mode) {
  if (S_ISFIFO(mode)) return "a named pipe (FIFO)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a plain file";
}

std::string bytes_text(uint64_t n) {
  char buf[32];
  if (n >= (uint64_t{1} << 30))
    std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(n) / (1 << 30));
  else if (n >= (uint64_t{1} << 20))
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(n) / (1 << 20));
  else
    std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(n));
  return buf;
}
}  // namespace

RegularFile::RegularFile(std::string path, const FileKind& kind) : path_(std::move(path)), what_(kind.what) {
  const std::string name = std::string(kind.what) + " '" + path_ + "'";
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer that never comes.
  fd_ = ::open(path_.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) {
    const int e = errno;
    if (e == ENOENT) throw Error(name + " does not exist");
    throw Error(name + " cannot be opened (" + std::strerror(e) + ")");
  }
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    const std::string type = type_of(st.st_mode);
    ::close(fd_);
    throw Error(name + " is " + type + ", not a regular file; name the file itself");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (kind.max_bytes > 0 && size_ > kind.max_bytes) {
    ::close(fd_);
    throw Error(name + " is " + bytes_text(size_) + ", over the " + bytes_text(kind.max_bytes) + " limit for " +
                kind.what + "s; is it the right file?");
  }
  // Regular files ignore O_NONBLOCK; cleared anyway so reads mean exactly what they say.
  const int flags = ::fcntl(fd_, F_GETFL);
  if (flags >= 0) ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK);
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

void RegularFile::read_at(uint64_t offset, uint64_t bytes, char* out) const {
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd_, out + done, static_cast<size_t>(bytes - done), static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw Error(std::string(what_) + " '" + path_ + "': reading " + std::to_string(bytes) + " bytes at " +
                  std::to_string(offset) + " failed" + (n < 0 ? " (" + std::string(std::strerror(errno)) + ")" : "") +
                  "; did the file change or shrink while it was read?");
    done += static_cast<uint64_t>(n);
  }
}

std::string RegularFile::read_all() const {
  std::string out(static_cast<size_t>(size_), '\0');
  read_at(0, size_, out.data());
  return out;
}

std::string read_file(const std::string& path, const FileKind& kind) { return RegularFile(path, kind).read_all(); }

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace linearnexus
