// Where a tensor lives: `cpu` or `cuda:N`.
#pragma once

#include <ostream>
#include <string>

namespace loom {

enum class DeviceType : uint8_t { kCPU, kCUDA };

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;  // CUDA ordinal; 0 for cpu

  Device() = default;
  Device(DeviceType t, int i = 0) : type(t), index(i) {}  // NOLINT
  /// Parses "cpu", "cuda" or "cuda:N"; throws InvalidArgument.
  explicit Device(const std::string& spec);

  bool is_cpu() const { return type == DeviceType::kCPU; }
  bool is_cuda() const { return type == DeviceType::kCUDA; }
  std::string str() const;
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

inline const Device kCPU{DeviceType::kCPU, 0};

inline std::ostream& operator<<(std::ostream& os, const Device& d) { return os << d.str(); }

/// True when this build has the CUDA backend and at least one device is present.
bool cuda_is_available();
/// Number of CUDA devices (0 in a CPU build).
int cuda_device_count();

}  // namespace loom
