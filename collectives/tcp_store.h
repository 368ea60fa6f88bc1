// TCPStore: the job's key-value store over TCP. One process hosts the server
// (a poll() thread bound only to the address it was given); every client proves
// knowledge of the job secret by HMAC-SHA256 challenge-response before any key.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "collectives/store.h"

namespace loom::collectives {

/// Options of a TCPStore; every field has a default.
struct TCPStoreOptions {
  /// Host the server in this process (rank 0 or the launcher).
  bool is_server = false;
  /// Timeout of blocking calls (get/wait). Default: LOOM_STORE_TIMEOUT_S or 300 s.
  Millis timeout = default_store_timeout();
  /// How long a client retries connecting (with backoff) before it gives up.
  /// Default: LOOM_STORE_CONNECT_TIMEOUT_S or 60 s.
  Millis connect_timeout = env_timeout("LOOM_STORE_CONNECT_TIMEOUT_S", Millis(60000));
  /// Shared secret; empty means LOOM_STORE_SECRET (a warning is logged when both are empty).
  std::string secret;
  /// Largest frame accepted, bytes; larger ones drop the connection.
  size_t max_frame_bytes = size_t{64} << 20;
  /// A server drops a connection that has not finished its handshake, or a
  /// frame it started, within this time (half-open sockets).
  Millis handshake_timeout = env_timeout("LOOM_STORE_HANDSHAKE_TIMEOUT_S", Millis(10000));
};

namespace detail {
class TCPStoreServer;
}

/// A Store client connected to a TCPStore server (and the server itself when
/// options.is_server). host is an address or name; with is_server the server
/// listens on that address only ("0.0.0.0" or "" listens on all interfaces);
/// port 0 picks a free port (see port()). Throws CommError when the server
/// cannot be reached within connect_timeout or rejects the secret.
class TCPStore : public Store {
 public:
  TCPStore(std::string host, int port, TCPStoreOptions options = {});
  ~TCPStore() override;
  TCPStore(const TCPStore&) = delete;
  TCPStore& operator=(const TCPStore&) = delete;

  void set(const std::string& key, const Bytes& value) override;
  Bytes get(const std::string& key) override;
  int64_t add(const std::string& key, int64_t delta) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  Bytes compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) override;
  bool delete_key(const std::string& key) override;
  int64_t num_keys() override;
  bool check(const std::vector<std::string>& keys) override;
  using Store::set;
  using Store::wait;

  /// The port the server listens on (the one given, or the one picked for 0).
  int port() const { return port_; }
  const std::string& host() const { return host_; }

  /// This client's own address on its connection to the server (numeric, no
  /// port): the address by which the server's node sees this one. "" when
  /// not connected.
  std::string local_address();

  /// Connections the server dropped because they failed the secret handshake.
  struct AuthFailures {
    int64_t count = 0;
    std::string last_peer;  // "10.0.0.2:41234" of the latest one
  };
  /// The server's count of failed handshakes (zero when not the server).
  AuthFailures auth_failures() const;

 private:
  void connect_locked();
  Bytes request(const Bytes& payload, Millis reply_timeout, const std::vector<std::string>& keys);

  std::string host_;
  int port_;
  TCPStoreOptions opts_;
  std::unique_ptr<detail::TCPStoreServer> server_;
  std::mutex mu_;
  int fd_ = -1;
};

/// HMAC-SHA256 of data under key (32 bytes). Exposed for tests and the launcher.
Bytes hmac_sha256(const std::string& key, const uint8_t* data, size_t n);

}  // namespace loom::collectives
