// ONNX export by tracing, as torch.onnx.export: run the module's forward under an
// op trace (tensor/op_trace.h), map each recorded op to standard ONNX operators
// (opset 17), and write one .onnx file with the weights as initializers.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nn/module.h"
#include "tensor/error.h"

namespace loom::onnx {

/// Thrown when a traced op has no ONNX mapping or a size cannot be expressed; the
/// message names the op and the module path that ran it.
class ExportError : public Error {
 public:
  using Error::Error;
};

struct ExportOptions {
  /// Graph input names, one per example input (default input_0, input_1, …).
  std::vector<std::string> input_names;
  /// Graph output names, one per forward output (default output_0, …).
  std::vector<std::string> output_names;
  /// name (input or output) -> axis -> symbol, as torch.onnx.export's dynamic_axes:
  /// {"input_ids", {{0, "batch"}, {1, "seq"}}}. An axis of an input listed here is
  /// computed at run time wherever the graph depends on it (no size baked in).
  std::map<std::string, std::map<int64_t, std::string>> dynamic_axes;
  /// ONNX opset of the default domain; 17 or later (LayerNormalization).
  int64_t opset = 17;
  /// Write initializers to PATH.data beside the model: "auto" (when they pass
  /// 2 GB, protobuf's limit), "always" or "never".
  std::string external_data = "auto";
};

/// The forward to trace: example inputs -> outputs.
using ForwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;

/// Traces forward(example_inputs) on module's parameters and buffers (in eval mode,
/// without gradients; the training flag is restored) and writes the ONNX model to
/// path. Each dynamic symbol is traced once more at its size + 1 (inputs grown by
/// repeating their first slice along that axis) so sizes that follow it are emitted
/// as computations on the input's shape. Throws ExportError naming the op and module
/// path for an op without a mapping; IoError when path cannot be written.
void export_onnx(nn::Module& module, const ForwardFn& forward, const std::vector<Tensor>& example_inputs,
                 const std::string& path, const ExportOptions& opts = {});

/// Convenience for a module called with one tensor (a CausalLM, a Sequential).
template <typename M>
void export_onnx(M& module, const std::vector<Tensor>& example_inputs, const std::string& path,
                 const ExportOptions& opts = {}) {
  export_onnx(
      static_cast<nn::Module&>(module),
      [&module](const std::vector<Tensor>& in) {
        LOOM_CHECK(in.size() == 1, "export_onnx: this module takes one input, got ", in.size());
        return std::vector<Tensor>{module(in[0])};
      },
      example_inputs, path, opts);
}

}  // namespace loom::onnx
