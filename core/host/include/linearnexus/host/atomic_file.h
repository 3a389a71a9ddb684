#pragma once
// Files that appear complete or not at all. Every file LinearNexus writes for keeps (checkpoints,
// config.yaml, tokenizer.json, prepared token files, meta.json, downloads) goes through here.
#include <fstream>
#include <string>

namespace linearnexus {

// Written to a temporary file in the same folder as `path`; commit() checks the stream, fsyncs the
// file, renames it over `path` and fsyncs the folder, so neither a crash nor a full disk can leave
// a torn or empty `path`. Destroyed without commit() (an exception on the way), the temporary file
// is removed and `path` is left as it was. Errors name `path` and say what to check.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  std::ostream& stream() { return out_; }
  // Where the bytes are until commit (to read back or resize before committing).
  const std::string& temp_path() const { return tmp_; }
  // Flush and close the stream, throwing when any write failed (disk full); the temporary file
  // can then be read or changed by path. commit() does this itself when it has not been done.
  void close_stream();
  void commit();

 private:
  std::string path_, tmp_;
  std::ofstream out_;
  bool closed_ = false, committed_ = false;
};

// The whole of `text` to `path`, atomically.
void write_file_atomically(const std::string& path, const std::string& text);

}  // namespace linearnexus
