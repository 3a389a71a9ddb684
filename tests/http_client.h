#pragma once
// A minimal HTTP/1.1 client on raw loopback sockets for `linearnexus serve`'s tests and benchmark:
// one request per connection (Connection: close), so a test controls every byte it sends and can
// hang up in the middle of a response; and starting a server on a free port. Header-only, no dependencies.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

namespace lnhttp {

struct Response {
  int status = 0;
  std::string headers, body;  // body de-chunked
};

// A connected socket to 127.0.0.1:port (-1 when nothing listens).
inline int connect_loopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
  if (fd >= 0) ::close(fd);
  return -1;
}

inline bool send_all(int fd, const std::string& data) {
  for (size_t sent = 0; sent < data.size();) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

// The request's bytes: `extra` holds more header lines, each ending in \r\n.
inline std::string request_text(const std::string& method, const std::string& path, const std::string& body,
                                const std::string& extra = "") {
  return method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + extra +
         (body.empty() && method == "GET"
              ? ""
              : "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n") +
         "\r\n" + body;
}

// A chunked body (Transfer-Encoding: chunked) -> its bytes.
inline std::string dechunk(const std::string& in) {
  std::string out;
  size_t pos = 0;
  while (pos < in.size()) {
    const size_t eol = in.find("\r\n", pos);
    if (eol == std::string::npos) break;
    const size_t len = std::strtoul(in.substr(pos, eol - pos).c_str(), nullptr, 16);
    if (len == 0) break;
    out += in.substr(eol + 2, len);
    pos = eol + 2 + len + 2;
  }
  return out;
}

// Reads what the server sends until it closes the connection.
inline Response read_response(int fd) {
  std::string raw;
  char buf[65536];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) raw.append(buf, static_cast<size_t>(n));
  Response r;
  const size_t split = raw.find("\r\n\r\n");
  if (raw.compare(0, 9, "HTTP/1.1 ") != 0 || split == std::string::npos) return r;  // status 0: no response
  r.status = std::atoi(raw.c_str() + 9);
  r.headers = raw.substr(0, split);
  r.body = raw.substr(split + 4);
  if (r.headers.find("Transfer-Encoding: chunked") != std::string::npos) r.body = dechunk(r.body);
  return r;
}

// Raw bytes to the server, the whole response back (status 0 when the connection failed).
inline Response send_raw(int port, const std::string& bytes) {
  const int fd = connect_loopback(port);
  if (fd < 0) return {};
  send_all(fd, bytes);  // a server that refuses early (413) may stop reading: its answer still counts
  Response r = read_response(fd);
  ::close(fd);
  return r;
}

inline Response request(int port, const std::string& method, const std::string& path, const std::string& body = "",
                        const std::string& extra = "") {
  return send_raw(port, request_text(method, path, body, extra));
}

// Starts `RUNNER serve --port 0 ARGS` (stdout and stderr into the files out_file, err_file) and waits up
// to 60 s for its "listening on" line. Returns the process id and sets *port; on failure the process
// is gone, the id is -1 and *port 0 (err_file says why).
inline pid_t spawn_serve(const std::string& runner, const std::string& args, const std::string& out_file,
                         const std::string& err_file, int* port) {
  const std::string cmd = "exec " + runner + " serve --port 0 " + args + " >'" + out_file + "' 2>'" + err_file + "'";
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  *port = 0;
  const std::string mark = "listening on http://127.0.0.1:";
  for (int i = 0; i < 1200 && *port == 0; ++i) {
    std::stringstream out;
    out << std::ifstream(out_file).rdbuf();
    const std::string text = out.str();
    const size_t at = text.find(mark);
    if (at != std::string::npos)
      *port = std::atoi(text.c_str() + at + mark.size());
    else if (::waitpid(pid, nullptr, WNOHANG) == pid)
      return -1;
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (*port == 0) {  // never listened
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    return -1;
  }
  return pid;
}

}  // namespace lnhttp
