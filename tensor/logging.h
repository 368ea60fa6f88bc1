// The one logger: levels, an optional rank prefix, whole lines to stderr.
// LOOM_LOG_LEVEL=debug|info|warn|error picks the threshold (default info).
#pragma once

#include <string>

#include "tensor/error.h"

namespace loom {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

/// Sets the prefix printed before every line, e.g. "rank 3" (empty: none).
void set_log_prefix(const std::string& prefix);
void set_log_level(LogLevel level);
LogLevel log_level();
/// Writes one whole line (atomic with respect to other threads).
void log_line(LogLevel level, const std::string& message);

}  // namespace loom

#define LOOM_LOG(level, ...)                                              \
  do {                                                                    \
    if (static_cast<int>(level) >= static_cast<int>(::loom::log_level())) \
      ::loom::log_line(level, ::loom::detail::str_cat(__VA_ARGS__));      \
  } while (0)
#define LOOM_DEBUG(...) LOOM_LOG(::loom::LogLevel::kDebug, __VA_ARGS__)
#define LOOM_INFO(...) LOOM_LOG(::loom::LogLevel::kInfo, __VA_ARGS__)
#define LOOM_WARN(...) LOOM_LOG(::loom::LogLevel::kWarn, __VA_ARGS__)
#define LOOM_ERROR(...) LOOM_LOG(::loom::LogLevel::kError, __VA_ARGS__)
