#include "tensor/logging.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <string_view>

namespace loom {
namespace {

std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}
std::string& prefix_storage() {
  static std::string p;
  return p;
}
LogLevel level_from_env() {
  const char* env = std::getenv("LOOM_LOG_LEVEL");
  if (!env) return LogLevel::kInfo;
  std::string_view v(env);
  if (v == "debug") return LogLevel::kDebug;
  if (v == "warn" || v == "warning") return LogLevel::kWarn;
  if (v == "error") return LogLevel::kError;
  return LogLevel::kInfo;
}
std::atomic<int>& level_storage() {
  static std::atomic<int> l{static_cast<int>(level_from_env())};
  return l;
}
const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug:
      return "D";
    case LogLevel::kInfo:
      return "I";
    case LogLevel::kWarn:
      return "W";
    case LogLevel::kError:
      return "E";
  }
  return "?";
}

}  // namespace

void set_log_prefix(const std::string& prefix) {
  std::lock_guard<std::mutex> lock(log_mutex());
  prefix_storage() = prefix;
}
void set_log_level(LogLevel level) { level_storage() = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(level_storage().load()); }

void log_line(LogLevel level, const std::string& message) {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  localtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
  std::lock_guard<std::mutex> lock(log_mutex());
  std::string line = std::string(level_name(level)) + " " + stamp + " ";
  if (!prefix_storage().empty()) line += "[" + prefix_storage() + "] ";
  line += message;
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace loom
