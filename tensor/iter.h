// Strided N-d iteration for elementwise kernels: TensorIter coalesces the dims
// of N operands that share one shape (outputs and broadcast-expanded inputs),
// then hands a kernel 1-D runs of elements with per-operand byte strides, so the
// kernel's inner loop is a plain (vectorisable) loop and index math is per run.
#pragma once

#include <array>
#include <cstdint>
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
/// Throws Unsupported naming op when t is not on the cpu (no CUDA kernels in this build).
inline void check_cpu(const char* op, const Tensor& t) {
  if (!t.device().is_cpu())
    LOOM_THROW(Unsupported, op, ": no kernel for a tensor on ", t.device().str(), " of shape ",
               shape_str(t.sizes()), " in this build (only cpu kernels are built)");
}
}  // namespace detail

}  // namespace loom
