// The key-value Store that ranks rendezvous through: an abstract interface
// (set/get/add/wait/compare_set/delete_key/num_keys, every blocking call with a
// std::chrono timeout) and the in-memory, file and prefix implementations.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tensor/error.h"

namespace loom::collectives {

using Bytes = std::vector<uint8_t>;
using Millis = std::chrono::milliseconds;

/// Bytes of a string and back (keys and most values are text).
Bytes to_bytes(const std::string& s);
std::string to_string(const Bytes& b);

/// Reads a duration in seconds from env var `name` (fractions allowed);
/// `fallback` when unset. Throws InvalidArgument on a malformed value.
Millis env_timeout(const char* name, Millis fallback);

/// Default timeout of blocking store calls: LOOM_STORE_TIMEOUT_S or 300 s.
Millis default_store_timeout();

/// Builds the Timeout error of an expired wait: which timeout fired, the keys
/// waited for and those still missing.
[[noreturn]] void throw_store_timeout(const std::string& store, const std::string& timeout_name, Millis timeout,
                                      const std::vector<std::string>& keys, const std::vector<std::string>& missing);

/// A key-value store shared by the ranks of a job. Thread-safe.
class Store {
 public:
  explicit Store(Millis timeout = default_store_timeout()) : timeout_(timeout) {}
  virtual ~Store() = default;

  /// Sets key to value (overwrites).
  virtual void set(const std::string& key, const Bytes& value) = 0;
  void set(const std::string& key, const std::string& value) { set(key, to_bytes(value)); }
  /// The value of key, waiting up to timeout() for it to exist; throws Timeout.
  virtual Bytes get(const std::string& key) = 0;
  std::string get_string(const std::string& key) { return to_string(get(key)); }
  /// Atomically adds delta to the integer stored at key (0 when absent) and
  /// returns the new value. Throws InvalidArgument if the value is not an integer.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  /// Blocks until every key exists; throws Timeout naming the missing keys.
  virtual void wait(const std::vector<std::string>& keys, Millis timeout) = 0;
  void wait(const std::vector<std::string>& keys) { wait(keys, timeout()); }
  /// Sets key to desired if its value equals expected (or if it is absent and
  /// expected is empty); returns the value after the call.
  virtual Bytes compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) = 0;
  /// Removes key; true when it existed.
  virtual bool delete_key(const std::string& key) = 0;
  /// Number of keys stored (all prefixes).
  virtual int64_t num_keys() = 0;
  /// True when every key exists (does not block).
  virtual bool check(const std::vector<std::string>& keys) = 0;

  Millis timeout() const { return timeout_; }
  void set_timeout(Millis t) { timeout_ = t; }

 protected:
  Millis timeout_;
};

/// In-memory store for ranks-as-threads tests (one instance shared by threads).
class HashStore : public Store {
 public:
  explicit HashStore(Millis timeout = default_store_timeout()) : Store(timeout) {}
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

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Bytes> map_;
};

/// Store in a directory on a shared file system: one file per key, updates
/// under an flock'ed lock file, waits poll. For jobs without a TCP path.
class FileStore : public Store {
 public:
  /// Creates the directory if needed. Throws IoError when it cannot.
  explicit FileStore(std::string dir, Millis timeout = default_store_timeout());
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

 private:
  std::string path_of(const std::string& key) const;
  bool read_key(const std::string& key, Bytes* out) const;
  void write_key(const std::string& key, const Bytes& value);
  std::string dir_;
};

/// Prepends "prefix/" to every key of an underlying store.
class PrefixStore : public Store {
 public:
  PrefixStore(std::string prefix, std::shared_ptr<Store> base);
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
  const std::shared_ptr<Store>& base() const { return base_; }

 private:
  std::string k(const std::string& key) const { return prefix_ + "/" + key; }
  std::vector<std::string> ks(const std::vector<std::string>& keys) const;
  std::string prefix_;
  std::shared_ptr<Store> base_;
};

}  // namespace loom::collectives
