// TensorBoard event files (tensorboard.h). The messages, from TensorFlow's event.proto, summary.proto,
// tensor.proto (only the fields written here):
//   Event          { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//                    SessionLog session_log = 6; }
//   SessionLog     { SessionStatus status = 1; }                       // START = 1
//   Summary        { repeated Value value = 1; }
//   Summary.Value  { string tag = 1; float simple_value = 2; TensorProto tensor = 8; SummaryMetadata metadata = 9; }
//   SummaryMetadata { PluginData plugin_data = 1; }  PluginData { string plugin_name = 1; }
//   TensorProto    { DataType dtype = 1; TensorShapeProto tensor_shape = 2; repeated bytes string_val = 8; }  // DT_STRING = 7
#include "linearnexus/host/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "linearnexus/error.h"

namespace fs = std::filesystem;

namespace linearnexus {

namespace {
// The table of the reflected Castagnoli polynomial 0x82F63B78, one entry per byte value.
struct Crc32cTable {
  uint32_t t[256];
  Crc32cTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
  }
};

// TFRecord stores CRCs masked: a CRC of data that holds CRCs is then less likely to be degenerate.
uint32_t masked_crc(const std::string& bytes) {
  const uint32_t crc = crc32c(bytes.data(), bytes.size());
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

// ---- protobuf wire format ----
void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
void tag(std::string& out, int field, int wire_type) { varint(out, static_cast<uint64_t>(field) << 3 | wire_type); }
void bytes_field(std::string& out, int field, const std::string& bytes) {
  tag(out, field, 2);
  varint(out, bytes.size());
  out += bytes;
}
void varint_field(std::string& out, int field, uint64_t v) {
  tag(out, field, 0);
  varint(out, v);
}
template <class T>
void fixed_field(std::string& out, int field, T v) {  // little-endian, as x86 and the wire format are
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "fixed32 or fixed64");
  tag(out, field, sizeof(T) == 4 ? 5 : 1);
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}
void le_bytes(std::string& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::string hostname() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0 || !buf[0]) return "localhost";
  return buf;
}
}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  static const Crc32cTable table;
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < size; ++i) c = table.t[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

TensorBoardWriter::TensorBoardWriter(const std::string& out_dir) {
  const fs::path dir = fs::path(out_dir) / "tb";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("trainer.trackers: tensorboard: cannot create '" + dir.string() + "': " + ec.message());
  // TensorBoard reads the files in name order, and a resume's SessionLog must come after what it
  // purges: a file's time is later than every earlier file's, even within one second.
  int64_t time =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string prefix = "events.out.tfevents.";
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0) time = std::max<int64_t>(time, std::atoll(name.c_str() + prefix.size()) + 1);
  }
  path_ = (dir / (prefix + std::to_string(time) + "." + hostname() + "." + std::to_string(::getpid()))).string();
  out_.open(path_, std::ios::binary | std::ios::app);
  if (!out_) throw Error("trainer.trackers: tensorboard: cannot write " + path_);
  std::string body;
  bytes_field(body, 3, "brain.Event:2");  // file_version: SessionLog events are honoured from version 2
  write_event(0, body);
}

void TensorBoardWriter::add_scalars(int64_t step, const std::map<std::string, double>& values) {
  std::string summary;
  for (const auto& [name, v] : values) {
    std::string value;
    bytes_field(value, 1, name);
    fixed_field(value, 2, static_cast<float>(v));
    bytes_field(summary, 1, value);
  }
  std::string body;
  bytes_field(body, 5, summary);
  write_event(step, body);
}

void TensorBoardWriter::add_text(int64_t step, const std::string& tag_name, const std::string& text) {
  std::string indented, line;
  std::istringstream in(text);
  while (std::getline(in, line)) indented += "    " + line + "\n";
  std::string plugin_data, metadata, tensor, value, summary, body;
  bytes_field(plugin_data, 1, "text");
  bytes_field(metadata, 1, plugin_data);
  varint_field(tensor, 1, 7);  // DT_STRING
  bytes_field(tensor, 2, "");  // a scalar: the empty shape
  bytes_field(tensor, 8, indented);
  bytes_field(value, 1, tag_name);
  bytes_field(value, 8, tensor);
  bytes_field(value, 9, metadata);
  bytes_field(summary, 1, value);
  bytes_field(body, 5, summary);
  write_event(step, body);
}

void TensorBoardWriter::add_session_start(int64_t step) {
  std::string session_log, body;
  varint_field(session_log, 1, 1);  // START
  bytes_field(body, 6, session_log);
  write_event(step, body);
}

void TensorBoardWriter::write_event(int64_t step, const std::string& body) {
  std::string event;
  const double wall = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  fixed_field(event, 1, wall);
  varint_field(event, 2, static_cast<uint64_t>(step));
  event += body;
  std::string length;
  le_bytes(length, event.size(), 8);
  std::string record = length;
  le_bytes(record, masked_crc(length), 4);
  record += event;
  le_bytes(record, masked_crc(event), 4);
  out_.write(record.data(), static_cast<std::streamsize>(record.size()));
  out_.flush();
  if (!out_)
    throw Error("cannot append to " + path_ + " (disk full?); training stopped so that no metric is lost. " +
                "Free some space and run again with trainer.resume: auto");
}

}  // namespace linearnexus
