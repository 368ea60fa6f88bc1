#include "tensor/tensor.h"

#include <cstring>
#include <sstream>

#include "tensor/cpu/blas_core.h"
#include "tensor/ops.h"

namespace loom {

namespace {
// OpenBLAS's kernels are re-chosen (tensor/cpu/blas_core.h) when the program loads, before any product runs.
[[maybe_unused]] const bool kBlasCoreChosen = (detail::blas_core_reselected(), true);
}  // namespace

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t v : s) n *= v;
  return n;
}

Shape contiguous_strides(const Shape& sizes) {
  Shape st(sizes.size());
  int64_t acc = 1;
  for (int64_t i = static_cast<int64_t>(sizes.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(sizes[i], 1);
  }
  return st;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  int64_t n = std::max<int64_t>(ndim, 1);
  LOOM_CHECK(dim >= -n && dim < n, op, ": dim ", dim, " is out of range for a tensor with ", ndim,
             " dims (expected in [", -n, ", ", n - 1, "])");
  return dim < 0 ? dim + n : dim;
}

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape sizes, Shape strides, int64_t offset, DType dtype) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(storage);
  impl->sizes = std::move(sizes);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = dtype;
  impl_ = std::move(impl);
}

int64_t Tensor::size(int64_t d) const { return sizes()[wrap_dim(d, dim(), "Tensor::size")]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "Tensor::stride")]; }

bool Tensor::is_contiguous() const {
  const auto& sz = sizes();
  const auto& st = strides();
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (sz[i] == 1) continue;
    if (st[i] != expected) return false;
    expected *= sz[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  return static_cast<char*>(impl().storage->data()) + impl().offset * static_cast<int64_t>(element_size());
}

double Tensor::item() const {
  LOOM_CHECK(numel() == 1, "item(): tensor of shape ", shape_str(sizes()), " has ", numel(),
             " elements, expected exactly 1");
  Tensor host = ops::contiguous(ops::to(*this, kCPU));
  double out = 0;
  LOOM_DISPATCH_ALL(dtype(), "item", [&] { out = static_cast<double>(acc_t<scalar_t>(*host.data<scalar_t>())); });
  return out;
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = ops::contiguous(ops::to(ops::to(*this, kCPU), DTypeOf<T>::value));
  const T* p = host.data<T>();
  return std::vector<T>(p, p + host.numel());
}

Tensor empty(const Shape& sizes, DType dtype, Device device) {
  for (int64_t s : sizes) LOOM_CHECK(s >= 0, "empty: negative size in ", shape_str(sizes));
  auto storage = std::make_shared<Storage>(static_cast<size_t>(shape_numel(sizes)) * element_size(dtype), device);
  return Tensor(std::move(storage), sizes, contiguous_strides(sizes), 0, dtype);
}

template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& sizes, Device device) {
  LOOM_CHECK(static_cast<int64_t>(values.size()) == shape_numel(sizes), "from_vector: ", values.size(),
             " values do not fill shape ", shape_str(sizes));
  Tensor host = empty(sizes, DTypeOf<T>::value, kCPU);
  if (!values.empty()) std::memcpy(host.data_ptr(), values.data(), values.size() * sizeof(T));
  return ops::to(host, device);
}

#define LOOM_INSTANTIATE(T)                             \
  template std::vector<T> Tensor::to_vector<T>() const; \
  template Tensor from_vector<T>(const std::vector<T>&, const Shape&, Device);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
LOOM_INSTANTIATE(Half)
LOOM_INSTANTIATE(BFloat16)
LOOM_INSTANTIATE(int32_t)
LOOM_INSTANTIATE(int64_t)
LOOM_INSTANTIATE(uint8_t)
#undef LOOM_INSTANTIATE

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  LOOM_CHECK(a.device() == b.device(), op, ": tensors are on different devices: ", a.device().str(), " ",
             shape_str(a.sizes()), " and ", b.device().str(), " ", shape_str(b.sizes()));
}
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  LOOM_CHECK(a.dtype() == b.dtype(), op, ": dtypes differ: ", dtype_name(a.dtype()), " ", shape_str(a.sizes()), " and ",
             dtype_name(b.dtype()), " ", shape_str(b.sizes()));
}

DType parse_dtype(const std::string& n) {
  if (n == "float32" || n == "f32" || n == "fp32" || n == "float") return DType::f32;
  if (n == "float64" || n == "f64" || n == "fp64" || n == "double") return DType::f64;
  if (n == "float16" || n == "f16" || n == "fp16" || n == "half") return DType::f16;
  if (n == "bfloat16" || n == "bf16") return DType::bf16;
  if (n == "int32" || n == "i32") return DType::i32;
  if (n == "int64" || n == "i64" || n == "long") return DType::i64;
  if (n == "uint8" || n == "u8" || n == "bool") return DType::u8;
  LOOM_THROW(InvalidArgument, "unknown dtype '", n,
             "' (expected float32, float64, float16, bfloat16, int32, int64 or uint8)");
}

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  auto rank = [](DType t) {
    switch (t) {
      case DType::u8:
        return 0;
      case DType::i32:
        return 1;
      case DType::i64:
        return 2;
      case DType::f16:
        return 3;
      case DType::bf16:
        return 3;
      case DType::f32:
        return 4;
      case DType::f64:
        return 5;
    }
    return 0;
  };
  if ((a == DType::f16 && b == DType::bf16) || (a == DType::bf16 && b == DType::f16)) return DType::f32;
  return rank(a) >= rank(b) ? a : b;
}

Device::Device(const std::string& spec) {
  if (spec == "cpu") {
    type = DeviceType::kCPU;
    index = 0;
  } else if (spec == "cuda") {
    type = DeviceType::kCUDA;
    index = 0;
  } else if (spec.rfind("cuda:", 0) == 0 && spec.size() > 5 &&
             spec.find_first_not_of("0123456789", 5) == std::string::npos) {
    type = DeviceType::kCUDA;
    index = std::stoi(spec.substr(5));
  } else {
    LOOM_THROW(InvalidArgument, "unknown device '", spec, "' (expected cpu, cuda or cuda:N)");
  }
}

std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

}  // namespace loom
