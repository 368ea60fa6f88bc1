// Reading and writing the safetensors format (an 8-byte little-endian header
// length, a JSON header naming each tensor's dtype, shape and byte range, then
// the raw bytes), so models move to and from the Python ecosystem as they are.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace loom::checkpoint {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

/// Writes tensors (any device, any layout; copied to host contiguous) to path.
/// The file is written under a temporary name and renamed into place when
/// complete, so a failure never leaves a truncated file at path. Throws
/// IoError naming the path; InvalidArgument on a duplicate name.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

struct SafetensorsFile {
  NamedTensors tensors;  // in file order
  std::map<std::string, std::string> metadata;
  /// The tensor named name; throws InvalidArgument naming the file and key.
  const Tensor& at(const std::string& name) const;
  std::string path;
};

/// Reads a whole safetensors file onto the cpu. Throws IoError naming the
/// file and what was wrong (truncated, bad header, unknown dtype, bad range).
SafetensorsFile load_safetensors(const std::string& path);

/// safetensors' dtype code ("F32", "BF16", …) for a dtype, and back.
std::string safetensors_dtype(DType dtype);
DType dtype_from_safetensors(const std::string& code, const std::string& context);

}  // namespace loom::checkpoint
