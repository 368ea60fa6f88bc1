// Error hierarchy shared by every layer. Messages name the operation, the
// values that were wrong and what to do; LOOM_CHECK adds [file:line].
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace loom {

/// Base of every error loom throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
/// Bad argument: wrong shape, dtype, device, index, option.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};
/// A collective or store connection failed.
class CommError : public Error {
 public:
  using Error::Error;
};
/// A blocking call did not finish within its timeout.
class Timeout : public CommError {
 public:
  using CommError::CommError;
};
/// A file could not be read or written.
class IoError : public Error {
 public:
  using Error::Error;
};
/// A config file is malformed.
class ConfigError : public Error {
 public:
  using Error::Error;
};
/// A feature is not available in this build (for example CUDA in a CPU build).
class Unsupported : public Error {
 public:
  using Error::Error;
};
/// A device ran out of memory; the message names the request and the usage.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace loom

/// Throws ExcType with "[file:line] message" when cond is false.
#define LOOM_CHECK_T(ExcType, cond, ...)                                                       \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      throw ExcType(::loom::detail::str_cat("[", __FILE__, ":", __LINE__, "] ", __VA_ARGS__)); \
    }                                                                                          \
  } while (0)
#define LOOM_CHECK(cond, ...) LOOM_CHECK_T(::loom::InvalidArgument, cond, __VA_ARGS__)
#define LOOM_THROW(ExcType, ...) throw ExcType(::loom::detail::str_cat("[", __FILE__, ":", __LINE__, "] ", __VA_ARGS__))
