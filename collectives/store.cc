#include "collectives/store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

namespace loom::collectives {

Bytes to_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }
std::string to_string(const Bytes& b) { return std::string(b.begin(), b.end()); }

Millis env_timeout(const char* name, Millis fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  double s = std::strtod(v, &end);
  LOOM_CHECK(end != v && *end == '\0' && s >= 0, "env_timeout: ", name, "='", v,
             "' is not a number of seconds; set it to e.g. 30 or 2.5");
  return Millis(static_cast<int64_t>(s * 1000.0));
}

Millis default_store_timeout() { return env_timeout("LOOM_STORE_TIMEOUT_S", Millis(300000)); }

namespace {
std::string join(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s + "]";
}
int64_t parse_int(const std::string& key, const Bytes& b) {
  std::string s = to_string(b);
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  LOOM_CHECK(!s.empty() && *end == '\0', "Store::add: key '", key, "' holds '", s,
             "', not an integer; use a separate key for counters");
  return v;
}
}  // namespace

void throw_store_timeout(const std::string& store, const std::string& timeout_name, Millis timeout,
                         const std::vector<std::string>& keys, const std::vector<std::string>& missing) {
  LOOM_THROW(Timeout, store, "::wait: the ", timeout_name, " (", timeout.count(), " ms) expired waiting for keys ",
             join(keys), "; still missing ", join(missing),
             ". A rank may have died or not reached this point; raise the timeout with "
             "LOOM_STORE_TIMEOUT_S if it is merely slow");
}

// ---------------------------------------------------------------- HashStore

void HashStore::set(const std::string& key, const Bytes& value) {
  {
    std::lock_guard<std::mutex> g(mu_);
    map_[key] = value;
  }
  cv_.notify_all();
}

Bytes HashStore::get(const std::string& key) {
  wait({key}, timeout());
  std::lock_guard<std::mutex> g(mu_);
  return map_.at(key);
}

int64_t HashStore::add(const std::string& key, int64_t delta) {
  int64_t v;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = map_.find(key);
    v = (it == map_.end() ? 0 : parse_int(key, it->second)) + delta;
    map_[key] = to_bytes(std::to_string(v));
  }
  cv_.notify_all();
  return v;
}

void HashStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  std::unique_lock<std::mutex> lk(mu_);
  auto all = [&] {
    for (const auto& k : keys)
      if (!map_.count(k)) return false;
    return true;
  };
  if (!cv_.wait_for(lk, timeout, all)) {
    std::vector<std::string> missing;
    for (const auto& k : keys)
      if (!map_.count(k)) missing.push_back(k);
    throw_store_timeout("HashStore", "store timeout", timeout, keys, missing);
  }
}

Bytes HashStore::compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) {
  Bytes out;
  {
    std::lock_guard<std::mutex> g(mu_);
    auto it = map_.find(key);
    if ((it == map_.end() && expected.empty()) || (it != map_.end() && it->second == expected)) {
      map_[key] = desired;
      out = desired;
    } else {
      out = it == map_.end() ? expected : it->second;
    }
  }
  cv_.notify_all();
  return out;
}

bool HashStore::delete_key(const std::string& key) {
  std::lock_guard<std::mutex> g(mu_);
  return map_.erase(key) > 0;
}

int64_t HashStore::num_keys() {
  std::lock_guard<std::mutex> g(mu_);
  return static_cast<int64_t>(map_.size());
}

bool HashStore::check(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> g(mu_);
  for (const auto& k : keys)
    if (!map_.count(k)) return false;
  return true;
}

// ---------------------------------------------------------------- FileStore

namespace {
// Holds an exclusive flock on dir/.lock for the life of the object.
class DirLock {
 public:
  explicit DirLock(const std::string& dir) {
    fd_ = ::open((dir + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    LOOM_CHECK_T(IoError, fd_ >= 0, "FileStore: cannot open lock file in ", dir, ": ", std::strerror(errno));
    while (::flock(fd_, LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  ~DirLock() {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  int fd_ = -1;
};
}  // namespace

FileStore::FileStore(std::string dir, Millis timeout) : Store(timeout), dir_(std::move(dir)) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  LOOM_CHECK_T(IoError, std::filesystem::is_directory(dir_), "FileStore: cannot create directory '", dir_,
               "': ", ec.message());
}

std::string FileStore::path_of(const std::string& key) const {
  static const char* hex = "0123456789abcdef";
  std::string name = "k_";
  for (unsigned char c : key) {
    name += hex[c >> 4];
    name += hex[c & 15];
  }
  return dir_ + "/" + name;
}

bool FileStore::read_key(const std::string& key, Bytes* out) const {
  std::ifstream f(path_of(key), std::ios::binary);
  if (!f) return false;
  out->assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return true;
}

void FileStore::write_key(const std::string& key, const Bytes& value) {
  std::string tmp = path_of(key) + ".tmp" + std::to_string(::getpid()) + "_" +
                    std::to_string(std::hash<std::thread::id>()(std::this_thread::get_id()));
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(value.data()), static_cast<std::streamsize>(value.size()));
    LOOM_CHECK_T(IoError, f.good(), "FileStore::set: cannot write ", tmp);
  }
  LOOM_CHECK_T(IoError, std::rename(tmp.c_str(), path_of(key).c_str()) == 0, "FileStore::set: rename to ", path_of(key),
               " failed: ", std::strerror(errno));
}

void FileStore::set(const std::string& key, const Bytes& value) {
  DirLock l(dir_);
  write_key(key, value);
}

Bytes FileStore::get(const std::string& key) {
  wait({key}, timeout());
  Bytes b;
  LOOM_CHECK_T(IoError, read_key(key, &b), "FileStore::get: key '", key, "' vanished");
  return b;
}

int64_t FileStore::add(const std::string& key, int64_t delta) {
  DirLock l(dir_);
  Bytes b;
  int64_t v = (read_key(key, &b) ? parse_int(key, b) : 0) + delta;
  write_key(key, to_bytes(std::to_string(v)));
  return v;
}

void FileStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!check(keys)) {
    if (std::chrono::steady_clock::now() >= deadline) {
      std::vector<std::string> missing;
      for (const auto& k : keys)
        if (!check({k})) missing.push_back(k);
      throw_store_timeout("FileStore", "store timeout", timeout, keys, missing);
    }
    std::this_thread::sleep_for(Millis(5));
  }
}

Bytes FileStore::compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) {
  DirLock l(dir_);
  Bytes cur;
  bool have = read_key(key, &cur);
  if ((!have && expected.empty()) || (have && cur == expected)) {
    write_key(key, desired);
    return desired;
  }
  return have ? cur : expected;
}

bool FileStore::delete_key(const std::string& key) {
  DirLock l(dir_);
  return ::unlink(path_of(key).c_str()) == 0;
}

int64_t FileStore::num_keys() {
  DirLock l(dir_);
  int64_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    std::string name = e.path().filename().string();
    if (name.rfind("k_", 0) == 0 && name.find(".tmp") == std::string::npos) ++n;
  }
  return n;
}

bool FileStore::check(const std::vector<std::string>& keys) {
  for (const auto& k : keys)
    if (::access(path_of(k).c_str(), F_OK) != 0) return false;
  return true;
}

// ---------------------------------------------------------------- PrefixStore

PrefixStore::PrefixStore(std::string prefix, std::shared_ptr<Store> base)
    : Store(base->timeout()), prefix_(std::move(prefix)), base_(std::move(base)) {}

std::vector<std::string> PrefixStore::ks(const std::vector<std::string>& keys) const {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& key : keys) out.push_back(k(key));
  return out;
}

void PrefixStore::set(const std::string& key, const Bytes& value) { base_->set(k(key), value); }
Bytes PrefixStore::get(const std::string& key) {
  base_->wait({k(key)}, timeout());
  return base_->get(k(key));
}
int64_t PrefixStore::add(const std::string& key, int64_t delta) { return base_->add(k(key), delta); }
void PrefixStore::wait(const std::vector<std::string>& keys, Millis timeout) { base_->wait(ks(keys), timeout); }
Bytes PrefixStore::compare_set(const std::string& key, const Bytes& expected, const Bytes& desired) {
  return base_->compare_set(k(key), expected, desired);
}
bool PrefixStore::delete_key(const std::string& key) { return base_->delete_key(k(key)); }
int64_t PrefixStore::num_keys() { return base_->num_keys(); }
bool PrefixStore::check(const std::vector<std::string>& keys) { return base_->check(ks(keys)); }

}  // namespace loom::collectives
