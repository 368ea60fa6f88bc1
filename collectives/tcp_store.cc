#include "collectives/tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>

#include "tensor/logging.h"

namespace loom::collectives {

namespace {

using Clock = std::chrono::steady_clock;
constexpr char kMagic[8] = {'L', 'O', 'O', 'M', 'S', 'T', 'R', '1'};
constexpr size_t kNonce = 32;
constexpr size_t kMac = 32;

enum Cmd : uint8_t { kSet = 1, kGet, kAdd, kWait, kCas, kDel, kNum, kCheck };
enum Status : uint8_t { kOk = 0, kTimedOut = 1, kError = 2 };

// ---- wire encoding: little-endian integers, strings as u32 length + bytes.
void put_u32(Bytes& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_u64(Bytes& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_str(Bytes& b, const std::string& s) {
  put_u32(b, static_cast<uint32_t>(s.size()));
  b.insert(b.end(), s.begin(), s.end());
}
void put_bytes(Bytes& b, const Bytes& s) {
  put_u32(b, static_cast<uint32_t>(s.size()));
  b.insert(b.end(), s.begin(), s.end());
}
void put_strs(Bytes& b, const std::vector<std::string>& v) {
  put_u32(b, static_cast<uint32_t>(v.size()));
  for (const auto& s : v) put_str(b, s);
}

// Bounds-checked reader; a malformed message throws CommError.
struct Reader {
  const uint8_t* p;
  size_t n;
  size_t i = 0;
  void need(size_t k) {
    if (n - i < k) LOOM_THROW(CommError, "TCPStore: malformed message (", n, " bytes, need ", i + k, ")");
  }
  uint8_t u8() {
    need(1);
    return p[i++];
  }
  uint32_t u32() {
    need(4);
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) v |= static_cast<uint32_t>(p[i + k]) << (8 * k);
    i += 4;
    return v;
  }
  uint64_t u64() {
    need(8);
    uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v |= static_cast<uint64_t>(p[i + k]) << (8 * k);
    i += 8;
    return v;
  }
  Bytes bytes() {
    uint32_t len = u32();
    need(len);
    Bytes b(p + i, p + i + len);
    i += len;
    return b;
  }
  std::string str() { return to_string(bytes()); }
  std::vector<std::string> strs() {
    uint32_t k = u32();
    need(k);  // each string takes at least 4 bytes; this bounds the reserve
    std::vector<std::string> v;
    for (uint32_t j = 0; j < k; ++j) v.push_back(str());
    return v;
  }
};

std::string resolve_secret(const std::string& given) {
  if (!given.empty()) return given;
  const char* env = std::getenv("LOOM_STORE_SECRET");
  if (env != nullptr && *env != '\0') return env;
  static std::once_flag warned;
  std::call_once(warned, [] {
    LOOM_WARN(
        "TCPStore: no secret given and LOOM_STORE_SECRET is unset; any local process that "
        "knows the port can join. Set LOOM_STORE_SECRET to the same random value on every rank");
  });
  return "";
}

Bytes handshake_payload(const uint8_t* nonce) {
  Bytes b(8 + kNonce);
  std::memcpy(b.data(), kMagic, 8);
  std::memcpy(b.data() + 8, nonce, kNonce);
  return b;
}

std::string peer_name(const sockaddr_storage& ss) {
  char host[NI_MAXHOST] = "?", serv[NI_MAXSERV] = "?";
  getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof(ss), host, sizeof(host), serv, sizeof(serv),
              NI_NUMERICHOST | NI_NUMERICSERV);
  return std::string(host) + ":" + serv;
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

// Writes all of buf to a blocking-or-not fd before deadline; false on error/timeout.
bool write_all(int fd, const uint8_t* p, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd pf{fd, POLLOUT, 0};
      ::poll(&pf, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
      continue;
    }
    return false;
  }
  return true;
}

// Reads exactly n bytes before deadline. 1: ok, 0: timeout, -1: closed/error.
int read_all(int fd, uint8_t* p, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
    if (left <= 0) return 0;
    pollfd pf{fd, POLLIN, 0};
    int r = ::poll(&pf, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno != EINTR) return -1;
    if (r <= 0) continue;
    ssize_t got = ::recv(fd, p, n, 0);
    if (got == 0) return -1;
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return -1;
    }
    p += got;
    n -= static_cast<size_t>(got);
  }
  return 1;
}

}  // namespace

Bytes hmac_sha256(const std::string& key, const uint8_t* data, size_t n) {
  Bytes out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  // An empty key still yields a well-defined MAC; OpenSSL wants a non-null pointer.
  static const char kEmpty[1] = {0};
  HMAC(EVP_sha256(), key.empty() ? kEmpty : key.data(), static_cast<int>(key.size()), data, n, out.data(), &len);
  out.resize(len);
  return out;
}

// ============================================================== server

namespace detail {

class TCPStoreServer {
 public:
  TCPStoreServer(const std::string& host, int port, std::string secret, size_t max_frame, Millis handshake_timeout)
      : secret_(std::move(secret)), max_frame_(max_frame), handshake_timeout_(handshake_timeout) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | (host.empty() ? AI_PASSIVE : 0);
    addrinfo* res = nullptr;
    std::string bind_host = host == "0.0.0.0" ? "" : host;
    if (bind_host.empty()) hints.ai_flags |= AI_PASSIVE;
    int rc = getaddrinfo(bind_host.empty() ? nullptr : bind_host.c_str(), std::to_string(port).c_str(), &hints, &res);
    LOOM_CHECK_T(CommError, rc == 0, "TCPStore server: cannot resolve '", host, "': ", gai_strerror(rc),
                 "; give an address of this machine (e.g. 127.0.0.1)");
    std::string err;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      int one = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 512) == 0) {
        listen_fd_ = fd;
        break;
      }
      err = std::strerror(errno);
      ::close(fd);
    }
    freeaddrinfo(res);
    LOOM_CHECK_T(CommError, listen_fd_ >= 0, "TCPStore server: cannot listen on ", host, ":", port, ": ", err,
                 "; pick another port (MASTER_PORT) or free this one");
    sockaddr_storage ss{};
    socklen_t sl = sizeof(ss);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &sl);
    port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                           : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    set_nonblocking(listen_fd_);
    LOOM_CHECK_T(CommError, ::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) == 0, "TCPStore server: pipe failed");
    thread_ = std::thread([this] { run(); });
  }

  ~TCPStoreServer() {
    stop_ = true;
    uint8_t x = 1;
    [[maybe_unused]] ssize_t w = ::write(wake_[1], &x, 1);
    thread_.join();
    for (auto& [fd, c] : conns_) ::close(fd);
    ::close(listen_fd_);
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  int port() const { return port_; }
  TCPStore::AuthFailures auth_failures() const {
    std::lock_guard<std::mutex> g(stats_mu_);
    return auth_failures_;
  }

 private:
  struct Conn {
    std::string peer;
    bool authed = false;
    uint8_t nonce[kNonce];
    Bytes in;
    Bytes out;
    Clock::time_point last_progress;
    bool blocked = false;  // a GET/WAIT is pending; later frames wait behind it
  };
  struct Waiter {
    int fd;
    uint8_t cmd;
    std::vector<std::string> keys;
    Clock::time_point deadline;
  };

  void drop(int fd, const std::string& why) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    LOOM_WARN("TCPStore server: dropped connection from ", it->second.peer, ": ", why);
    waiters_.remove_if([fd](const Waiter& w) { return w.fd == fd; });
    ::close(fd);
    conns_.erase(it);
  }

  void close_quiet(int fd) {
    waiters_.remove_if([fd](const Waiter& w) { return w.fd == fd; });
    ::close(fd);
    conns_.erase(fd);
  }

  void reply(int fd, Status st, const Bytes& body) {
    Conn& c = conns_.at(fd);
    Bytes frame;
    put_u32(frame, static_cast<uint32_t>(body.size() + 1));
    frame.push_back(st);
    frame.insert(frame.end(), body.begin(), body.end());
    c.out.insert(c.out.end(), frame.begin(), frame.end());
  }

  bool have_all(const std::vector<std::string>& keys) const {
    for (const auto& k : keys)
      if (!map_.count(k)) return false;
    return true;
  }

  void answer_wait(const Waiter& w) {
    if (w.cmd == kGet) {
      reply(w.fd, kOk, [&] {
        Bytes b;
        put_bytes(b, map_.at(w.keys[0]));
        return b;
      }());
    } else {
      reply(w.fd, kOk, {});
    }
    conns_.at(w.fd).blocked = false;
  }

  // Answers the waiters whose keys now all exist.
  void wake_waiters() {
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (have_all(it->keys)) {
        answer_wait(*it);
        int fd = it->fd;
        it = waiters_.erase(it);
        process_frames(fd);  // frames queued behind the wait
      } else {
        ++it;
      }
    }
  }

  // Handles one request frame; throws CommError on a malformed one.
  void handle(int fd, const uint8_t* p, size_t n) {
    Reader r{p, n};
    uint8_t cmd = r.u8();
    Bytes body;
    switch (cmd) {
      case kSet: {
        std::string key = r.str();
        map_[key] = r.bytes();
        reply(fd, kOk, {});
        wake_waiters();
        return;
      }
      case kGet:
      case kWait: {
        std::vector<std::string> keys = cmd == kGet ? std::vector<std::string>{r.str()} : r.strs();
        Millis timeout(static_cast<int64_t>(r.u64()));
        if (have_all(keys)) {
          answer_wait(Waiter{fd, cmd, keys, Clock::now()});
        } else {
          conns_.at(fd).blocked = true;
          waiters_.push_back(Waiter{fd, cmd, std::move(keys), Clock::now() + timeout});
        }
        return;
      }
      case kAdd: {
        std::string key = r.str();
        int64_t delta = static_cast<int64_t>(r.u64());
        auto it = map_.find(key);
        int64_t v = 0;
        if (it != map_.end()) {
          std::string s = to_string(it->second);
          char* end = nullptr;
          v = std::strtoll(s.c_str(), &end, 10);
          if (s.empty() || *end != '\0') {
            put_str(body, "Store::add: key '" + key + "' holds '" + s + "', not an integer");
            reply(fd, kError, body);
            return;
          }
        }
        v += delta;
        map_[key] = to_bytes(std::to_string(v));
        put_u64(body, static_cast<uint64_t>(v));
        reply(fd, kOk, body);
        wake_waiters();
        return;
      }
      case kCas: {
        std::string key = r.str();
        Bytes expected = r.bytes(), desired = r.bytes();
        auto it = map_.find(key);
        Bytes out;
        if ((it == map_.end() && expected.empty()) || (it != map_.end() && it->second == expected)) {
          map_[key] = desired;
          out = desired;
        } else {
          out = it == map_.end() ? expected : it->second;
        }
        put_bytes(body, out);
        reply(fd, kOk, body);
        wake_waiters();
        return;
      }
      case kDel: {
        body.push_back(map_.erase(r.str()) > 0 ? 1 : 0);
        reply(fd, kOk, body);
        return;
      }
      case kNum:
        put_u64(body, map_.size());
        reply(fd, kOk, body);
        return;
      case kCheck:
        body.push_back(have_all(r.strs()) ? 1 : 0);
        reply(fd, kOk, body);
        return;
      default:
        LOOM_THROW(CommError, "unknown command ", static_cast<int>(cmd));
    }
  }

  // Consumes complete frames from fd's input buffer. May drop the connection.
  void process_frames(int fd) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    Conn& c = it->second;
    if (!c.authed) {
      if (c.in.size() < kMac) return;
      Bytes expect = hmac_sha256(secret_, handshake_payload(c.nonce).data(), 8 + kNonce);
      if (CRYPTO_memcmp(expect.data(), c.in.data(), kMac) != 0) {
        {
          std::lock_guard<std::mutex> g(stats_mu_);
          ++auth_failures_.count;
          auth_failures_.last_peer = c.peer;
        }
        drop(fd, "failed authentication (wrong secret or not a loom client)");
        return;
      }
      c.authed = true;
      c.in.erase(c.in.begin(), c.in.begin() + kMac);
      c.out.push_back(1);  // accepted
    }
    while (!c.blocked && c.in.size() >= 4) {
      uint32_t len = Reader{c.in.data(), 4}.u32();
      if (len == 0 || len > max_frame_) {
        drop(fd, "frame of " + std::to_string(len) + " bytes (limit " + std::to_string(max_frame_) + ")");
        return;
      }
      if (c.in.size() < 4 + static_cast<size_t>(len)) return;
      try {
        handle(fd, c.in.data() + 4, len);
      } catch (const std::exception& e) {
        drop(fd, e.what());
        return;
      }
      c.in.erase(c.in.begin(), c.in.begin() + 4 + len);
    }
  }

  void flush(int fd) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    Conn& c = it->second;
    while (!c.out.empty()) {
      ssize_t w = ::send(fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (w > 0) {
        c.out.erase(c.out.begin(), c.out.begin() + w);
        continue;
      }
      if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
      close_quiet(fd);
      return;
    }
  }

  void accept_all() {
    for (;;) {
      sockaddr_storage ss{};
      socklen_t sl = sizeof(ss);
      int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      Conn c;
      c.peer = peer_name(ss);
      c.last_progress = Clock::now();
      if (RAND_bytes(c.nonce, kNonce) != 1) {
        LOOM_ERROR("TCPStore server: RAND_bytes failed; refusing connection from ", c.peer);
        ::close(fd);
        continue;
      }
      c.out = handshake_payload(c.nonce);
      conns_.emplace(fd, std::move(c));
      flush(fd);
    }
  }

  void run() {
    std::vector<pollfd> pfds;
    std::vector<uint8_t> buf(1 << 16);
    while (!stop_) {
      pfds.clear();
      pfds.push_back({wake_[0], POLLIN, 0});
      pfds.push_back({listen_fd_, POLLIN, 0});
      for (auto& [fd, c] : conns_) pfds.push_back({fd, static_cast<short>(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
      auto now = Clock::now();
      int64_t wait_ms = 500;
      for (const auto& w : waiters_)
        wait_ms = std::min<int64_t>(wait_ms, std::chrono::duration_cast<Millis>(w.deadline - now).count() + 1);
      ::poll(pfds.data(), pfds.size(), static_cast<int>(std::max<int64_t>(wait_ms, 0)));
      if (stop_) break;
      if (pfds[1].revents & POLLIN) accept_all();
      for (size_t i = 2; i < pfds.size(); ++i) {
        int fd = pfds[i].fd;
        if (!conns_.count(fd)) continue;
        if (pfds[i].revents & POLLOUT) flush(fd);
        if (!conns_.count(fd)) continue;
        if (pfds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
          ssize_t got = ::recv(fd, buf.data(), buf.size(), 0);
          if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
            Conn& c = conns_.at(fd);
            if (!c.authed) {
              drop(fd, "closed before authenticating");
            } else if (!c.in.empty()) {
              drop(fd, "closed in the middle of a frame");
            } else {
              close_quiet(fd);
            }
            continue;
          }
          if (got > 0) {
            Conn& c = conns_.at(fd);
            c.in.insert(c.in.end(), buf.data(), buf.data() + got);
            c.last_progress = Clock::now();
            if (c.in.size() > max_frame_ + 4 + kMac && !c.blocked) {
              // process_frames drops it on the oversize length prefix
            }
            process_frames(fd);
            flush(fd);
          }
        }
      }
      // Expired waits answer kTimedOut with the keys still missing.
      now = Clock::now();
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->deadline <= now) {
          Bytes body;
          std::vector<std::string> missing;
          for (const auto& k : it->keys)
            if (!map_.count(k)) missing.push_back(k);
          put_strs(body, missing);
          int fd = it->fd;
          reply(fd, kTimedOut, body);
          conns_.at(fd).blocked = false;
          it = waiters_.erase(it);
          process_frames(fd);
          flush(fd);
        } else {
          ++it;
        }
      }
      // Half-open sockets: no handshake, or a frame started and not finished.
      std::vector<int> stale;
      for (auto& [fd, c] : conns_) {
        bool pending = !c.authed || (!c.in.empty() && !c.blocked);
        if (pending && now - c.last_progress > handshake_timeout_) stale.push_back(fd);
      }
      for (int fd : stale)
        drop(fd, conns_.at(fd).authed ? "stalled in the middle of a frame" : "no handshake in time (half-open)");
      for (auto& [fd, c] : conns_)
        if (!c.out.empty()) flush(fd);
    }
  }

  std::string secret_;
  size_t max_frame_;
  Millis handshake_timeout_;
  int listen_fd_ = -1;
  int port_ = 0;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::map<int, Conn> conns_;
  std::list<Waiter> waiters_;
  std::map<std::string, Bytes> map_;
  mutable std::mutex stats_mu_;
  TCPStore::AuthFailures auth_failures_;
};

}  // namespace detail

// ============================================================== client

TCPStore::TCPStore(std::string host, int port, TCPStoreOptions options)
    : Store(options.timeout), host_(std::move(host)), port_(port), opts_(std::move(options)) {
  opts_.secret = resolve_secret(opts_.secret);
  if (opts_.is_server) {
    server_ = std::make_unique<detail::TCPStoreServer>(host_, port_, opts_.secret, opts_.max_frame_bytes,
                                                       opts_.handshake_timeout);
    port_ = server_->port();
  }
  std::lock_guard<std::mutex> g(mu_);
  connect_locked();
}

TCPStore::~TCPStore() {
  if (fd_ >= 0) ::close(fd_);
}

std::string TCPStore::local_address() {
  std::lock_guard<std::mutex> g(mu_);
  if (fd_ < 0) return "";
  sockaddr_storage ss{};
  socklen_t sl = sizeof(ss);
  if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &sl) != 0) return "";
  char host[NI_MAXHOST] = {0};
  if (getnameinfo(reinterpret_cast<sockaddr*>(&ss), sl, host, sizeof(host), nullptr, 0, NI_NUMERICHOST) != 0) return "";
  return host;
}

TCPStore::AuthFailures TCPStore::auth_failures() const { return server_ ? server_->auth_failures() : AuthFailures{}; }

void TCPStore::connect_locked() {
  if (fd_ >= 0) return;
  std::string connect_host = host_.empty() || host_ == "0.0.0.0" ? "127.0.0.1" : host_;
  auto deadline = Clock::now() + opts_.connect_timeout;
  Millis backoff(10);
  std::string last_err = "no attempt";
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(connect_host.c_str(), std::to_string(port_).c_str(), &hints, &res);
    if (rc != 0) {
      last_err = std::string("cannot resolve: ") + gai_strerror(rc);
    } else {
      for (addrinfo* a = res; a != nullptr && fd_ < 0; a = a->ai_next) {
        int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
          fd_ = fd;
        } else {
          last_err = std::strerror(errno);
          ::close(fd);
        }
      }
      freeaddrinfo(res);
    }
    if (fd_ >= 0) break;
    if (Clock::now() + backoff >= deadline) {
      LOOM_THROW(CommError, "TCPStore: the connect timeout (", opts_.connect_timeout.count(),
                 " ms, LOOM_STORE_CONNECT_TIMEOUT_S) expired connecting to ", connect_host, ":", port_,
                 " (last error: ", last_err,
                 "). Is the server (rank 0 / the launcher) running at "
                 "MASTER_ADDR:MASTER_PORT?");
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, Millis(1000));
  }
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // Challenge-response: server sends magic + nonce; we answer with the HMAC.
  auto hs_deadline = Clock::now() + std::max(opts_.connect_timeout, Millis(1000));
  uint8_t hello[8 + kNonce];
  uint8_t ok = 0;
  bool good = read_all(fd_, hello, sizeof(hello), hs_deadline) == 1 && std::memcmp(hello, kMagic, 8) == 0;
  if (good) {
    Bytes mac = hmac_sha256(opts_.secret, hello, sizeof(hello));
    good = write_all(fd_, mac.data(), mac.size(), hs_deadline) && read_all(fd_, &ok, 1, hs_deadline) == 1 && ok == 1;
  }
  if (!good) {
    ::close(fd_);
    fd_ = -1;
    LOOM_THROW(CommError, "TCPStore: ", connect_host, ":", port_,
               " rejected the handshake; the secret differs from the server's (check LOOM_STORE_SECRET "
               "on every rank) or the port is not a loom store");
  }
}

Bytes TCPStore::request(const Bytes& payload, Millis reply_timeout, const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> g(mu_);
  connect_locked();
  Bytes frame;
  put_u32(frame, static_cast<uint32_t>(payload.size()));
  frame.insert(frame.end(), payload.begin(), payload.end());
  LOOM_CHECK(payload.size() <= opts_.max_frame_bytes, "TCPStore: request of ", payload.size(),
             " bytes exceeds max_frame_bytes ", opts_.max_frame_bytes, "; store smaller values");
  // The reply may take the whole wait plus the server's poll slack.
  auto deadline = Clock::now() + reply_timeout + Millis(5000);
  auto fail = [&](const std::string& what) {
    ::close(fd_);
    fd_ = -1;
    LOOM_THROW(CommError, "TCPStore: ", what, " talking to ", host_, ":", port_,
               "; the server may have exited or dropped this client");
  };
  if (!write_all(fd_, frame.data(), frame.size(), deadline)) fail("send failed");
  uint8_t lenb[4];
  int r = read_all(fd_, lenb, 4, deadline);
  if (r != 1) fail(r == 0 ? "no reply in time" : "connection closed");
  uint32_t len = Reader{lenb, 4}.u32();
  if (len == 0 || len > opts_.max_frame_bytes + 16) fail("bad reply length");
  Bytes body(len);
  if (read_all(fd_, body.data(), len, deadline) != 1) fail("truncated reply");
  if (body[0] == kTimedOut) {
    Reader rd{body.data() + 1, body.size() - 1};
    throw_store_timeout("TCPStore", "store timeout (LOOM_STORE_TIMEOUT_S)", reply_timeout, keys, rd.strs());
  }
  if (body[0] == kError) {
    Reader rd{body.data() + 1, body.size() - 1};
    LOOM_THROW(InvalidArgument, rd.str());
  }
  return Bytes(body.begin() + 1, body.end());
}

void TCPStore::set(const std::string& key, const Bytes& value) {
  Bytes p{kSet};
  put_str(p, key);
  put_bytes(p, value);
  request(p, timeout(), {});
}

Bytes TCPStore::get(const std::string& key) {
  Bytes p{kGet};
  put_str(p, key);
  put_u64(p, static_cast<uint64_t>(timeout().count()));
  Bytes r = request(p, timeout(), {key});
  return Reader{r.data(), r.size()}.bytes();
}

int64_t TCPStore::add(const std::string& key, int64_t delta) {
  Bytes p{kAdd};
  put_str(p, key);
  put_u64(p, static_cast<uint64_t>(delta));
  Bytes r = request(p, timeout(), {});
  return static_cast<int64_t>(Reader{r.data(), r.size()}.u64());
}

void TCPStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  Bytes p{kWait};
  put_strs(p, keys);
  put_u64(p, static_cast<uint64_t>(timeout.count()));
  request(p, timeout, keys);
}

Bytes TCPStore::compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) {
  Bytes p{kCas};
  put_str(p, key);
  put_bytes(p, expected);
  put_bytes(p, desired);
  Bytes r = request(p, timeout(), {});
  return Reader{r.data(), r.size()}.bytes();
}

bool TCPStore::delete_key(const std::string& key) {
  Bytes p{kDel};
  put_str(p, key);
  Bytes r = request(p, timeout(), {});
  return Reader{r.data(), r.size()}.u8() == 1;
}

int64_t TCPStore::num_keys() {
  Bytes p{kNum};
  Bytes r = request(p, timeout(), {});
  return static_cast<int64_t>(Reader{r.data(), r.size()}.u64());
}

bool TCPStore::check(const std::vector<std::string>& keys) {
  Bytes p{kCheck};
  put_strs(p, keys);
  Bytes r = request(p, timeout(), {});
  return Reader{r.data(), r.size()}.u8() == 1;
}

}  // namespace loom::collectives
