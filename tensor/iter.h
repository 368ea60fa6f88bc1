// Strided N-d iteration for elementwise kernels: TensorIter coalesces the dims
// of N operands that share one shape (outputs and broadcast-expanded inputs),
// then hands a kernel 1-D runs of elements with per-operand byte strides, so the
// kernel's inner loop is a plain (vectorisable) loop and index math is per run.
#pragma once

#include <array>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "tensor/parallel.h"
#include "tensor/tensor.h"

namespace loom {

/// Element offset (in elements, relative to the tensor's first element) of the
/// element with row-major linear index `linear` in a tensor of sizes/strides.
inline int64_t linear_to_offset(int64_t linear, const Shape& sizes, const Shape& strides) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    const int64_t s = sizes[d];
    if (s == 0) return 0;
    off += (linear % s) * strides[d];
    linear /= s;
  }
  return off;
}

/// Iterates N operands of one common shape. Operand k has base pointer data[k]
/// and element strides strides[k] (0 for a broadcast dim) in units of elem_size[k].
template <int N>
class TensorIter {
 public:
  /// All tensors must already have `sizes` (expand inputs first).
  TensorIter(const std::array<Tensor, N>& ts, const Shape& sizes) {
    std::array<const Shape*, N> st;
    for (int k = 0; k < N; ++k) {
      data_[k] = static_cast<char*>(ts[k].data_ptr());
      elem_[k] = static_cast<int64_t>(ts[k].element_size());
      st[k] = &ts[k].strides();
    }
    numel_ = shape_numel(sizes);
    // Keep non-trivial dims (outermost first), then merge neighbours whose
    // strides chain for every operand.
    for (size_t d = 0; d < sizes.size(); ++d) {
      if (sizes[d] == 1) continue;
      std::array<int64_t, N> s;
      for (int k = 0; k < N; ++k) s[k] = (*st[k])[d] * elem_[k];
      if (!sizes_.empty()) {
        bool can_merge = true;
        for (int k = 0; k < N; ++k)
          if (strides_.back()[k] != s[k] * sizes[d]) can_merge = false;
        if (can_merge) {
          sizes_.back() *= sizes[d];
          strides_.back() = s;
          continue;
        }
      }
      sizes_.push_back(sizes[d]);
      strides_.push_back(s);
    }
    if (sizes_.empty()) {
      sizes_.push_back(1);
      std::array<int64_t, N> s;
      for (int k = 0; k < N; ++k) s[k] = elem_[k];
      strides_.push_back(s);
    }
  }

  int64_t numel() const { return numel_; }
  int64_t ndim() const { return static_cast<int64_t>(sizes_.size()); }
  /// Size of the innermost coalesced dim (the length of a full run).
  int64_t inner_size() const { return sizes_.back(); }
  /// Byte strides of the innermost dim, per operand.
  const std::array<int64_t, N>& inner_strides() const { return strides_.back(); }
  /// True when the operands are all dense and in the same order (one run).
  bool is_one_run() const { return sizes_.size() == 1; }

  /// Calls fn(ptrs, byte_strides, n) for runs covering linear elements [begin, end).
  template <typename F>
  void for_each_range(int64_t begin, int64_t end, F&& fn) const {
    if (begin >= end) return;
    const int64_t nd = ndim();
    std::vector<int64_t> idx(nd, 0);
    int64_t rem = begin;
    std::array<char*, N> p = data_;
    for (int64_t d = nd - 1; d >= 0; --d) {
      idx[d] = rem % sizes_[d];
      rem /= sizes_[d];
      for (int k = 0; k < N; ++k) p[k] += idx[d] * strides_[d][k];
    }
    const std::array<int64_t, N>& is = strides_.back();
    const int64_t inner = sizes_.back();
    int64_t pos = begin;
    while (pos < end) {
      const int64_t n = std::min(inner - idx[nd - 1], end - pos);
      fn(p, is, n);
      pos += n;
      if (pos >= end) break;
      // Advance to the start of the next run: idx[nd-1] wraps to 0.
      for (int k = 0; k < N; ++k) p[k] -= idx[nd - 1] * is[k];
      idx[nd - 1] = 0;
      for (int64_t d = nd - 2; d >= 0; --d) {
        ++idx[d];
        for (int k = 0; k < N; ++k) p[k] += strides_[d][k];
        if (idx[d] < sizes_[d]) break;
        for (int k = 0; k < N; ++k) p[k] -= idx[d] * strides_[d][k];
        idx[d] = 0;
      }
    }
  }

  /// for_each_range over all elements, split across threads above grain elements.
  template <typename F>
  void for_each(F&& fn, int64_t grain = kElementwiseGrain) const {
    parallel_for(0, numel_, grain, [&](int64_t b, int64_t e) { for_each_range(b, e, fn); });
  }

 private:
  std::array<char*, N> data_{};
  std::array<int64_t, N> elem_{};
  int64_t numel_ = 0;
  std::vector<int64_t> sizes_;                   // coalesced, outermost first
  std::vector<std::array<int64_t, N>> strides_;  // bytes, per dim per operand
};

namespace detail {

/// Loads an element as its compute type (f32 for the 16-bit floats).
template <typename T>
inline acc_t<T> load(T x) {
  return static_cast<acc_t<T>>(x);
}
/// Stores a computed value as O (16-bit floats round to nearest even).
template <typename O, typename V>
inline O store(V v) {
  if constexpr (std::is_same_v<O, Half> || std::is_same_v<O, BFloat16>) {
    return O(static_cast<float>(v));
  } else {
    return static_cast<O>(v);
  }
}

// Dense run: every operand advances one element per step. Inputs whose bit is
// set in kScalarMask are broadcast scalars (inner stride 0), loaded once.
template <unsigned kScalarMask, typename O, typename F, typename... In, size_t... I>
inline void dense_run(O* o, int64_t n, F& f, std::index_sequence<I...>, const In*... x) {
  const std::tuple<const In*...> ptrs(x...);
  if constexpr (kScalarMask == 0) {
    for (int64_t i = 0; i < n; ++i) o[i] = store<O>(f(load(x[i])...));
  } else {
    const std::tuple<acc_t<In>...> scal(load(std::get<I>(ptrs)[0])...);
    auto pick = [&](auto k, int64_t i) {
      constexpr size_t K = decltype(k)::value;
      if constexpr ((kScalarMask >> K) & 1u) {
        return std::get<K>(scal);
      } else {
        return load(std::get<K>(ptrs)[i]);
      }
    };
    for (int64_t i = 0; i < n; ++i) o[i] = store<O>(f(pick(std::integral_constant<size_t, I>{}, i)...));
  }
}

}  // namespace detail

/// out[i] = f(in_0[i], ..., in_k[i]) over out's shape. Each input must already
/// have out's sizes (expand it) and the C++ type In...; f takes acc_t<In>
/// values and returns a value stored as O. Dense operands run a plain loop the
/// compiler vectorises; large tensors are split across threads. `out` may alias
/// an input at the same positions (in-place ops).
template <typename O, typename... In, typename F>
void elementwise_kernel(const Tensor& out, const std::array<Tensor, sizeof...(In)>& ins, F&& f) {
  constexpr int kIn = static_cast<int>(sizeof...(In));
  constexpr int N = kIn + 1;
  const int64_t n = out.numel();
  if (n == 0) return;
  std::array<Tensor, N> all;
  all[0] = out;
  bool dense = out.is_contiguous();
  for (int k = 0; k < kIn; ++k) {
    all[k + 1] = ins[k];
    dense = dense && ins[k].is_contiguous();
  }
  auto seq = std::index_sequence_for<In...>{};
  if (dense) {
    O* o = static_cast<O*>(out.data_ptr());
    std::tuple<const In*...> x;
    [&]<size_t... I>(std::index_sequence<I...>) { ((std::get<I>(x) = static_cast<const In*>(ins[I].data_ptr())), ...); }
    (seq);
    parallel_for(0, n, kElementwiseGrain, [&](int64_t b, int64_t e) {
      [&]<size_t... I>(std::index_sequence<I...> s) {
        detail::dense_run<0u>(o + b, e - b, f, s, (std::get<I>(x) + b)...);
      }
      (seq);
    });
    return;
  }
  static constexpr std::array<int64_t, N> kSizes = {static_cast<int64_t>(sizeof(O)),
                                                    static_cast<int64_t>(sizeof(In))...};
  TensorIter<N> it(all, out.sizes());
  it.for_each([&](const std::array<char*, N>& p, const std::array<int64_t, N>& s, int64_t cnt) {
    bool out_dense = s[0] == kSizes[0];
    unsigned scalar_mask = 0;
    bool ok = out_dense;
    for (int k = 1; k < N; ++k) {
      if (s[k] == 0) {
        scalar_mask |= 1u << (k - 1);
      } else if (s[k] != kSizes[k]) {
        ok = false;
      }
    }
    O* o = reinterpret_cast<O*>(p[0]);
    if (ok) {
      [&]<size_t... I>(std::index_sequence<I...> sq) {
        auto run = [&](auto mask) {
          detail::dense_run<decltype(mask)::value>(o, cnt, f, sq, reinterpret_cast<const In*>(p[I + 1])...);
        };
        if constexpr (kIn <= 2) {
          switch (scalar_mask) {
            case 0:
              run(std::integral_constant<unsigned, 0>{});
              return;
            case 1:
              run(std::integral_constant<unsigned, 1>{});
              return;
            case 2:
              run(std::integral_constant<unsigned, 2>{});
              return;
            default:
              break;
          }
        } else {
          if (scalar_mask == 0) {
            run(std::integral_constant<unsigned, 0>{});
            return;
          }
        }
        for (int64_t i = 0; i < cnt; ++i)
          o[i] = detail::store<O>(f(detail::load(*reinterpret_cast<const In*>(p[I + 1] + i * s[I + 1]))...));
      }
      (seq);
      return;
    }
    [&]<size_t... I>(std::index_sequence<I...>) {
      for (int64_t i = 0; i < cnt; ++i)
        *reinterpret_cast<O*>(p[0] + i * s[0]) =
            detail::store<O>(f(detail::load(*reinterpret_cast<const In*>(p[I + 1] + i * s[I + 1]))...));
    }
    (seq);
  });
}

namespace detail {
/// Throws Unsupported naming op when t is not on the cpu (no CUDA kernels in this build).
inline void check_cpu(const char* op, const Tensor& t) {
  if (!t.device().is_cpu())
    LOOM_THROW(Unsupported, op, ": no kernel for a tensor on ", t.device().str(), " of shape ", shape_str(t.sizes()),
               " in this build (only cpu kernels are built)");
}
}  // namespace detail

}  // namespace loom
