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

// A folder that appears complete or not at all (convert hf-import / hf-export): its files are written
// into a temporary folder beside `path` (".NAME.partial-PID", hidden, so a half-written export never
// looks like a finished one), and commit() renames it into place as the last step. Destroyed without
// commit() (an error on the way), the temporary folder and everything in it are removed; the
// leftovers of a writer that was killed (kill -9, power loss) are removed by the next StagedFolder
// for the same `path` once that writer's process is gone. `path` must be new or an empty folder.
class StagedFolder {
 public:
  explicit StagedFolder(std::string path);
  ~StagedFolder();
  StagedFolder(const StagedFolder&) = delete;
  StagedFolder& operator=(const StagedFolder&) = delete;
  // Where the files go until commit().
  const std::string& dir() const { return tmp_; }
  const std::string& path() const { return path_; }
  void commit();

 private:
  std::string path_, tmp_;
  bool committed_ = false;
};

// `path` and everything under it, without following symlinks (nftw; the host's one way to remove
// a folder tree).
void remove_folder_tree(const std::string& path);

}  // namespace linearnexus
