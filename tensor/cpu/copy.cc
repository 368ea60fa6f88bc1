// Copies and conversions: copy_ (broadcasting, dtype-converting, into strided
// views), fill_, zero_, clone, contiguous, to(dtype), to(device). The cpu loops
// are here; CUDA tensors go to the kernel table's copy and fill entries.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "tensor/cuda_dispatch.h"
#include "tensor/iter.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"
#include "tensor/profiler.h"

namespace loom {
namespace {

/// Converts one element between any two of our dtypes (16-bit floats via f32).
template <typename D, typename S>
inline D convert(S x) {
  if constexpr (std::is_same_v<D, S>) {
    return x;
  } else if constexpr (std::is_same_v<D, Half> || std::is_same_v<D, BFloat16>) {
    return D(static_cast<float>(static_cast<acc_t<S>>(x)));
  } else {
    return static_cast<D>(static_cast<acc_t<S>>(x));
  }
}

template <typename D, typename S>
void convert_runs(const TensorIter<2>& it) {
  it.for_each([](const std::array<char*, 2>& p, const std::array<int64_t, 2>& s, int64_t n) {
    if (s[0] == static_cast<int64_t>(sizeof(D)) && s[1] == static_cast<int64_t>(sizeof(S))) {
      D* __restrict d = reinterpret_cast<D*>(p[0]);
      const S* __restrict x = reinterpret_cast<const S*>(p[1]);
      if constexpr (std::is_same_v<D, S>) {
        std::memcpy(d, x, static_cast<size_t>(n) * sizeof(D));
      } else {
        for (int64_t i = 0; i < n; ++i) d[i] = convert<D>(x[i]);
      }
    } else if (s[1] == 0) {
      const D v = convert<D>(*reinterpret_cast<const S*>(p[1]));
      char* d = p[0];
      for (int64_t i = 0; i < n; ++i) *reinterpret_cast<D*>(d + i * s[0]) = v;
    } else {
      char* d = p[0];
      const char* x = p[1];
      for (int64_t i = 0; i < n; ++i)
        *reinterpret_cast<D*>(d + i * s[0]) = convert<D>(*reinterpret_cast<const S*>(x + i * s[1]));
    }
  });
}

}  // namespace

namespace ops {

void copy_(const Tensor& dst, const Tensor& src) {
  profiler::Scope scope("copy_");
  if (optrace::active()) [[unlikely]]  // in place: dst gets a new value id (no ONNX mapping when it is used)
    optrace::record("copy_", {dst, src}, {dst});
  check_same_device("copy_", dst, src);
  const detail::CudaKernels* ck = detail::cuda_kernels_for("copy_", dst);
  Tensor s = src;
  if (s.sizes() != dst.sizes()) {
    Shape b = broadcast_shapes(dst.sizes(), src.sizes(), "copy_");
    LOOM_CHECK(b == dst.sizes(), "copy_: source of shape ", shape_str(src.sizes()),
               " cannot be broadcast to destination shape ", shape_str(dst.sizes()));
    s = expand(src, dst.sizes());
  }
  dst.bump_version();
  if (dst.numel() == 0) return;
  if (ck) {
    detail::need(ck->copy, "copy_", dst)(dst, s);
    return;
  }
  // Fast path: both dense in the same layout and same dtype.
  if (dst.dtype() == s.dtype() && dst.is_contiguous() && s.is_contiguous()) {
    if (dst.data_ptr() == s.data_ptr()) return;
    char* d = static_cast<char*>(dst.data_ptr());
    const char* x = static_cast<const char*>(s.data_ptr());
    const int64_t es = static_cast<int64_t>(dst.element_size());
    parallel_for(0, dst.numel(), kElementwiseGrain * 4, [&](int64_t b, int64_t e) {
      std::memmove(d + b * es, x + b * es, static_cast<size_t>((e - b) * es));
    });
    return;
  }
  TensorIter<2> it({dst, s}, dst.sizes());
  LOOM_DISPATCH_ALL(dst.dtype(), "copy_", [&] {
    using dst_t = scalar_t;
    LOOM_DISPATCH_ALL(s.dtype(), "copy_", [&] {
      using src_t = scalar_t;
      convert_runs<dst_t, src_t>(it);
    });
  });
}

void fill_(const Tensor& t, double value) {
  profiler::Scope scope("fill_");
  if (optrace::active()) [[unlikely]]
    optrace::record("fill_", {t}, {t}, {{"value", value}});
  const detail::CudaKernels* ck = detail::cuda_kernels_for("fill_", t);
  t.bump_version();
  if (t.numel() == 0) return;
  if (ck) {
    detail::need(ck->fill, "fill_", t)(t, value);
    return;
  }
  LOOM_DISPATCH_ALL(t.dtype(), "fill_", [&] {
    const scalar_t v = convert<scalar_t>(value);
    if (t.is_contiguous()) {
      scalar_t* p = static_cast<scalar_t*>(t.data_ptr());
      parallel_for(0, t.numel(), kElementwiseGrain * 4, [&](int64_t b, int64_t e) { std::fill(p + b, p + e, v); });
      return;
    }
    TensorIter<1> it({t}, t.sizes());
    it.for_each([&](const std::array<char*, 1>& p, const std::array<int64_t, 1>& s, int64_t n) {
      for (int64_t i = 0; i < n; ++i) *reinterpret_cast<scalar_t*>(p[0] + i * s[0]) = v;
    });
  });
}

void zero_(const Tensor& t) {
  profiler::Scope scope("zero_");
  if (detail::cuda_kernels_for("zero_", t)) return fill_(t, 0.0);  // the CUDA fill memsets zero bits
  if (t.is_contiguous()) {
    t.bump_version();
    char* p = static_cast<char*>(t.data_ptr());
    const int64_t es = static_cast<int64_t>(t.element_size());
    parallel_for(0, t.numel(), kElementwiseGrain * 4,
                 [&](int64_t b, int64_t e) { std::memset(p + b * es, 0, static_cast<size_t>((e - b) * es)); });
    return;
  }
  fill_(t, 0.0);
}

Tensor clone(const Tensor& t) {
  profiler::Scope scope("clone");
  Tensor out = empty(t.sizes(), t.dtype(), t.device());
  copy_(out, t);
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("clone", {t}, {out});
    return out;
  }
}

Tensor contiguous(const Tensor& t) {
  if (t.is_contiguous()) {
    {
      Tensor out = t;
      if (optrace::active()) [[unlikely]]
        optrace::record("contiguous", {t}, {out});
      return out;
    }
  }
  {
    profiler::Scope scope("contiguous");  // only the copying path: a no-op contiguous() is not an op worth a row
    Tensor out = clone(t);
    if (optrace::active()) [[unlikely]]
      optrace::record("contiguous", {t}, {out});
    return out;
  }
}

Tensor to(const Tensor& t, DType dtype) {
  if (t.dtype() == dtype) {
    {
      Tensor out = t;
      if (optrace::active()) [[unlikely]]
        optrace::record("cast", {t}, {out});
      return out;
    }
  }
  Tensor out = empty(t.sizes(), dtype, t.device());
  copy_(out, t);
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("cast", {t}, {out});
    return out;
  }
}

Tensor to(const Tensor& t, Device device) {
  if (t.device() == device) {
    {
      Tensor out = t;
      if (optrace::active()) [[unlikely]]
        optrace::record("to_device", {t}, {out});
      return out;
    }
  }
  auto& hooks = detail::cuda_hooks();
  if (!hooks.copy)
    LOOM_THROW(Unsupported, "to: cannot move a tensor of shape ", shape_str(t.sizes()), " from ", t.device().str(),
               " to ", device.str(), ": this build has no CUDA backend (rebuild with -DLOOM_CUDA=ON)");
  Tensor src = contiguous(t);
  Tensor out = empty(t.sizes(), t.dtype(), device);
  if (out.nbytes() > 0) hooks.copy(out.data_ptr(), device, src.data_ptr(), src.device(), out.nbytes());
  {
    if (optrace::active()) [[unlikely]]
      optrace::record("to_device", {t}, {out});
    return out;
  }
}

}  // namespace ops
}  // namespace loom
