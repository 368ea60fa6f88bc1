// Tensor: a handle to shared storage plus sizes, strides (in elements) and an
// offset. Copying a Tensor copies the handle; views share storage and never
// copy. The autograd slot is opaque here: tensor/ knows nothing of gradients.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "tensor/device.h"
#include "tensor/dtype.h"
#include "tensor/error.h"
#include "tensor/storage.h"

namespace loom {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);
/// Row-major strides for sizes.
Shape contiguous_strides(const Shape& sizes);
/// Normalises a possibly negative dim against ndim; throws naming op on range error.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

/// Opaque per-tensor autograd state, defined by loom::autograd.
struct AutogradMetaInterface {
  virtual ~AutogradMetaInterface() = default;
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape sizes;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  std::shared_ptr<AutogradMetaInterface> autograd_meta;
  /// Bumped by in-place ops; autograd checks saved tensors against it.
  std::shared_ptr<int64_t> version = std::make_shared<int64_t>(0);
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}
  /// A view of `storage` (shares it).
  Tensor(std::shared_ptr<Storage> storage, Shape sizes, Shape strides, int64_t offset, DType dtype);

  bool defined() const { return impl_ != nullptr; }
  const Shape& sizes() const { return impl().sizes; }
  const Shape& shape() const { return impl().sizes; }
  const Shape& strides() const { return impl().strides; }
  /// Size of dim d (negative counts from the end).
  int64_t size(int64_t d) const;
  int64_t stride(int64_t d) const;
  int64_t dim() const { return static_cast<int64_t>(impl().sizes.size()); }
  int64_t numel() const { return shape_numel(impl().sizes); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device(); }
  int64_t storage_offset() const { return impl().offset; }
  size_t element_size() const { return loom::element_size(dtype()); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return impl().storage; }

  /// Pointer to the first element (storage base + offset).
  void* data_ptr() const;
  template <typename T>
  T* data() const {
    LOOM_CHECK(DTypeOf<T>::value == dtype(), "Tensor::data<", dtype_name(DTypeOf<T>::value), ">: tensor has dtype ",
               dtype_name(dtype()));
    return static_cast<T*>(data_ptr());
  }
  /// Value of a one-element tensor as double (copies from device if needed).
  double item() const;
  template <typename T>
  T item() const {
    return static_cast<T>(item());
  }
  /// Copies all elements to a host vector of T (converting dtype).
  template <typename T>
  std::vector<T> to_vector() const;

  TensorImpl& impl() const {
    LOOM_CHECK(impl_ != nullptr, "use of an undefined Tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  /// True when both handles share one TensorImpl.
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }
  int64_t version() const { return *impl().version; }
  void bump_version() const { ++*impl().version; }

  // Autograd (implemented in loom::autograd, as libtorch does; link it to use these).
  bool requires_grad() const;
  /// Marks a leaf as needing a gradient; returns *this.
  Tensor& set_requires_grad(bool value = true);
  /// The accumulated gradient of a leaf (undefined until a backward reached it).
  Tensor grad() const;
  void set_grad(const Tensor& g) const;
  /// Runs backward from this tensor; `gradient` defaults to ones for a scalar.
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;

 private:
  std::shared_ptr<TensorImpl> impl_;
};

/// Prints like PyTorch: tensor([[1., 2.], [3., 4.]], dtype=..., requires_grad...)
std::ostream& operator<<(std::ostream& os, const Tensor& t);
std::string to_string(const Tensor& t);

/// A new contiguous tensor with uninitialised contents.
Tensor empty(const Shape& sizes, DType dtype = DType::f32, Device device = kCPU);

/// A tensor holding a copy of `values` with the given shape (numel must match).
template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& sizes, Device device = kCPU);

/// Throws InvalidArgument naming op when a and b are on different devices.
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
/// Throws InvalidArgument naming op when dtypes differ.
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);

}  // namespace loom
