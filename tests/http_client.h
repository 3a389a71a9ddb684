#pragma once
// A minimal HTTP/1.1 client on raw loopback sockets for `linearnexus serve`'s tests and benchmark:
// one request per connection (Connection: close), so a test controls every byte it sends and can
// hang up in the middle of a response. Header-only, no dependencies.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

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
         (body.empty() && method == "GET" ? "" : "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n") +
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

}  // namespace lnhttp
