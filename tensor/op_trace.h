// Op tracing: while an OpTrace is active on this thread, every op of tensor/ops.h
// that runs records itself (op name, input and output value ids, attributes,
// shapes, dtypes, the module running it). The ONNX exporter (onnx/) reads it.
// Off, the cost is one predictable branch per op (a thread-local pointer test).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

#include "tensor/tensor.h"

namespace loom::optrace {

/// An attribute value: an int, a float, a list of ints or a string.
using AttrValue = std::variant<int64_t, double, std::vector<int64_t>, std::string>;

struct Attr {
  Attr(const char* n, int v) : name(n), value(static_cast<int64_t>(v)) {}
  Attr(const char* n, int64_t v) : name(n), value(v) {}
  Attr(const char* n, double v) : name(n), value(v) {}
  Attr(const char* n, std::vector<int64_t> v) : name(n), value(std::move(v)) {}
  Attr(const char* n, std::string v) : name(n), value(std::move(v)) {}
  std::string name;
  AttrValue value;
};

/// One value of the trace: a tensor seen as an op's input or output.
struct ValueInfo {
  Shape sizes;
  DType dtype = DType::f32;
  int64_t producer = -1;  // index of the op record that wrote it; -1: came from outside (input, parameter)
};

struct OpRecord {
  std::string op;                // the tensor/ops.h name ("add", "add_scalar", "layer_norm", …)
  std::vector<int64_t> inputs;   // value ids; -1 for an undefined optional tensor (a Linear without bias)
  std::vector<int64_t> outputs;  // value ids
  std::vector<Attr> attrs;
  std::vector<const void*> modules;  // the module stack when it ran, outermost first (nn::Module*)

  /// The attribute called name; throws InvalidArgument naming the op when absent.
  const AttrValue& attr(const std::string& name) const;
  bool has_attr(const std::string& name) const;
};

/// Records ops on the calling thread from construction to destruction. Values
/// are identified by tensor handle (TensorImpl): an op that writes its input in
/// place gives that handle a new value id. The trace keeps every tensor it saw
/// alive, so no handle is reused while it runs. Not nestable. Ops run inside other ops are
/// recorded too (consumers drop those whose results nothing uses). Trace under NoGradGuard:
/// with grad mode on, autograd hands back new handles that the trace has not seen.
class OpTrace {
 public:
  OpTrace();
  ~OpTrace();
  OpTrace(const OpTrace&) = delete;
  OpTrace& operator=(const OpTrace&) = delete;

  /// The value id of t: its current id, or a new one with no producer.
  int64_t value_of(const Tensor& t);
  /// The value id t has now, or -1 when the trace has not seen it.
  int64_t find(const Tensor& t) const;
  /// The tensor a value id was given for (kept alive by the trace).
  const Tensor& tensor(int64_t id) const { return tensors_.at(id); }

  const std::vector<OpRecord>& ops() const { return ops_; }
  const std::vector<ValueInfo>& values() const { return values_; }

  // Used by record(), and by nn::Module around each forward (push before its pre-hooks, pop after its forward hooks).
  void add(const std::string& op, std::initializer_list<Tensor> in, std::initializer_list<Tensor> out,
           std::initializer_list<Attr> attrs);
  void add(const std::string& op, const std::vector<Tensor>& in, const std::vector<Tensor>& out,
           std::initializer_list<Attr> attrs);
  void push_module(const void* m) { module_stack_.push_back(m); }
  void pop_module() { module_stack_.pop_back(); }

 private:
  int64_t new_value(const Tensor& t, int64_t producer);
  std::vector<OpRecord> ops_;
  std::vector<ValueInfo> values_;
  std::vector<Tensor> tensors_;
  std::unordered_map<const TensorImpl*, int64_t> ids_;
  std::vector<const void*> module_stack_;
};

namespace detail {
extern thread_local OpTrace* t_active;
}

/// Whether an OpTrace records on this thread.
inline bool active() { return detail::t_active != nullptr; }

/// Records one op into the active trace (call only when active()).
inline void record(const std::string& op, std::initializer_list<Tensor> in, std::initializer_list<Tensor> out,
                   std::initializer_list<Attr> attrs = {}) {
  detail::t_active->add(op, in, out, attrs);
}
inline void record(const std::string& op, const std::vector<Tensor>& in, const std::vector<Tensor>& out,
                   std::initializer_list<Attr> attrs = {}) {
  detail::t_active->add(op, in, out, attrs);
}

}  // namespace loom::optrace
