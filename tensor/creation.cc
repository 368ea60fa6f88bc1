// Creation ops: constant-filled tensors, arange, scalar tensors, and random
// tensors drawn from the counter-based Philox generator. Element i of a draw of
// n elements uses Philox block (start + i/4), lane i%4, where start =
// gen.advance(ceil(n/4)); so values depend only on (seed, offset, i), never on
// the number of threads. Random values for a CUDA tensor are generated on the
// host and copied, so a seed gives identical values on either device; constant
// fills run on the device (fill_).
#include <cmath>
#include <numbers>

#include "tensor/cuda_dispatch.h"
#include "tensor/iter.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"

namespace loom::ops {
namespace {

/// The four 32-bit draws of block `block` (second stream: counter word 2 = 1).
inline std::array<uint32_t, 4> draw_block(uint64_t seed, uint64_t block, uint32_t stream = 0) {
  return philox4x32({static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), stream, 0}, seed);
}

/// Fills n values out[i] = f(block_words, lane, i) in parallel over blocks.
/// f gets the words of block (start + i/4) for stream 0 and, when two_streams,
/// stream 1 (used for 64-bit values).
template <typename T, typename F>
void fill_random(T* out, int64_t n, uint64_t seed, uint64_t start, bool two_streams, F&& f) {
  const int64_t blocks = (n + 3) / 4;
  parallel_for(0, blocks, 4096, [&](int64_t b, int64_t e) {
    for (int64_t blk = b; blk < e; ++blk) {
      auto w0 = draw_block(seed, start + static_cast<uint64_t>(blk), 0);
      std::array<uint32_t, 4> w1{};
      if (two_streams) w1 = draw_block(seed, start + static_cast<uint64_t>(blk), 1);
      const int64_t i0 = blk * 4;
      const int64_t lim = std::min<int64_t>(4, n - i0);
      for (int64_t l = 0; l < lim; ++l) out[i0 + l] = f(w0, w1, static_cast<int>(l));
    }
  });
}

/// Writes `src` (contiguous) into t, which may be a strided view.
void write_back(const Tensor& t, const Tensor& src) {
  if (!t.is_same(src)) copy_(t, src);
}

/// A contiguous tensor of t's shape/dtype to generate into (t itself if possible).
Tensor scratch_for(const Tensor& t) { return t.is_contiguous() ? t : empty(t.sizes(), t.dtype(), t.device()); }

/// For a CUDA tensor t: fills a host tensor of its shape and dtype with gen_host (the cpu op,
/// drawing from the same generator), then copies it into t. Returns false for a cpu tensor.
template <typename F>
bool generate_on_host(const char* op, const Tensor& t, F&& gen_host) {
  if (!detail::cuda_kernels_for(op, t)) return false;
  Tensor host = empty(t.sizes(), t.dtype(), kCPU);
  gen_host(host);
  if (t.is_contiguous()) {
    t.bump_version();
    if (t.nbytes() > 0) detail::cuda_hooks().copy(t.data_ptr(), t.device(), host.data_ptr(), kCPU, t.nbytes());
  } else {
    copy_(t, to(host, t.device()));
  }
  return true;
}

template <typename T>
T cast_from_double(double v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    return T(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

}  // namespace

Tensor zeros(const Shape& sizes, DType dtype, Device device) {
  Tensor t = empty(sizes, dtype, device);
  zero_(t);
  {
    Tensor out = t;
    if (optrace::active()) [[unlikely]]
      optrace::record("full", std::vector<Tensor>{}, {out}, {{"value", 0.0}});
    return out;
  }
}
Tensor ones(const Shape& sizes, DType dtype, Device device) { return full(sizes, 1.0, dtype, device); }
Tensor full(const Shape& sizes, double value, DType dtype, Device device) {
  Tensor t = empty(sizes, dtype, device);
  fill_(t, value);
  {
    Tensor out = t;
    if (optrace::active()) [[unlikely]]
      optrace::record("full", std::vector<Tensor>{}, {out}, {{"value", value}});
    return out;
  }
}
Tensor zeros_like(const Tensor& t) { return zeros(t.sizes(), t.dtype(), t.device()); }
Tensor ones_like(const Tensor& t) { return ones(t.sizes(), t.dtype(), t.device()); }
Tensor full_like(const Tensor& t, double value) { return full(t.sizes(), value, t.dtype(), t.device()); }
Tensor empty_like(const Tensor& t) { return empty(t.sizes(), t.dtype(), t.device()); }

Tensor arange(double start, double end, double step, DType dtype, Device device) {
  LOOM_CHECK(step != 0, "arange: step must be nonzero");
  LOOM_CHECK(std::isfinite(start) && std::isfinite(end), "arange: start ", start, " and end ", end, " must be finite");
  LOOM_CHECK((end - start) * step >= 0, "arange: end ", end, " is not reachable from start ", start, " with step ",
             step);
  const int64_t n = static_cast<int64_t>(std::ceil((end - start) / step));
  Tensor host = empty({n}, dtype, kCPU);
  LOOM_DISPATCH_ALL(dtype, "arange", [&] {
    scalar_t* p = static_cast<scalar_t*>(host.data_ptr());
    for (int64_t i = 0; i < n; ++i) p[i] = cast_from_double<scalar_t>(start + static_cast<double>(i) * step);
  });
  {
    Tensor out = to(host, device);
    if (optrace::active()) [[unlikely]]
      optrace::record("arange", std::vector<Tensor>{}, {out}, {{"start", start}, {"step", step}});
    return out;
  }
}

Tensor arange(int64_t end, DType dtype, Device device) {
  return arange(0.0, static_cast<double>(end), 1.0, dtype, device);
}

Tensor scalar_tensor(double value, DType dtype, Device device) {
  Tensor host = full({}, value, dtype, kCPU);
  {
    Tensor out = to(host, device);
    if (optrace::active()) [[unlikely]]
      optrace::record("full", std::vector<Tensor>{}, {out}, {{"value", value}});
    return out;
  }
}

void uniform_(const Tensor& t, double low, double high, Generator& gen) {
  if (generate_on_host("uniform_", t, [&](const Tensor& h) { uniform_(h, low, high, gen); })) return;
  LOOM_CHECK(is_floating(t.dtype()), "uniform_: expected a floating tensor, got ", dtype_name(t.dtype()));
  LOOM_CHECK(low <= high, "uniform_: low ", low, " must not exceed high ", high);
  const int64_t n = t.numel();
  const uint64_t start = gen.advance(static_cast<uint64_t>((n + 3) / 4));
  const uint64_t seed = gen.seed();
  Tensor out = scratch_for(t);
  LOOM_DISPATCH_FLOATING(t.dtype(), "uniform_", [&] {
    scalar_t* p = static_cast<scalar_t*>(out.data_ptr());
    if constexpr (std::is_same_v<scalar_t, double>) {
      fill_random(p, n, seed, start, true, [&](const auto& w0, const auto& w1, int l) {
        return low + (high - low) * uints_to_unit_double(w0[l], w1[l]);
      });
    } else {
      const float lo = static_cast<float>(low), span = static_cast<float>(high - low);
      fill_random(p, n, seed, start, false, [&](const auto& w0, const auto&, int l) {
        float u = lo + span * uint_to_unit_float(w0[l]);
        return scalar_t(u);
      });
    }
  });
  out.bump_version();
  write_back(t, out);
}

void normal_(const Tensor& t, double mean, double std, Generator& gen) {
  if (generate_on_host("normal_", t, [&](const Tensor& h) { normal_(h, mean, std, gen); })) return;
  LOOM_CHECK(is_floating(t.dtype()), "normal_: expected a floating tensor, got ", dtype_name(t.dtype()));
  LOOM_CHECK(std >= 0, "normal_: std must be non-negative, got ", std);
  const int64_t n = t.numel();
  const uint64_t start = gen.advance(static_cast<uint64_t>((n + 3) / 4));
  const uint64_t seed = gen.seed();
  Tensor out = scratch_for(t);
  // Box–Muller on lane pairs (0,1) and (2,3): the even lane takes r*cos, the odd r*sin.
  LOOM_DISPATCH_FLOATING(t.dtype(), "normal_", [&] {
    scalar_t* p = static_cast<scalar_t*>(out.data_ptr());
    if constexpr (std::is_same_v<scalar_t, double>) {
      fill_random(p, n, seed, start, true, [&](const auto& w0, const auto& w1, int l) {
        const int a = l & ~1;
        const double u1 = 1.0 - uints_to_unit_double(w0[a], w1[a]);  // (0, 1]
        const double u2 = uints_to_unit_double(w0[a + 1], w1[a + 1]);
        const double r = std::sqrt(-2.0 * std::log(u1));
        const double th = 2.0 * std::numbers::pi * u2;
        return mean + std * r * ((l & 1) ? std::sin(th) : std::cos(th));
      });
    } else {
      const float m = static_cast<float>(mean), s = static_cast<float>(std);
      fill_random(p, n, seed, start, false, [&](const auto& w0, const auto&, int l) {
        const int a = l & ~1;
        const float u1 = 1.0f - uint_to_unit_float(w0[a]);
        const float u2 = uint_to_unit_float(w0[a + 1]);
        const float r = std::sqrt(-2.0f * std::log(u1));
        const float th = 2.0f * std::numbers::pi_v<float> * u2;
        return scalar_t(m + s * r * ((l & 1) ? std::sin(th) : std::cos(th)));
      });
    }
  });
  out.bump_version();
  write_back(t, out);
}

Tensor rand(const Shape& sizes, Generator& gen, DType dtype, Device device) {
  Tensor t = empty(sizes, dtype, kCPU);
  uniform_(t, 0.0, 1.0, gen);
  return to(t, device);
}

Tensor randn(const Shape& sizes, Generator& gen, DType dtype, Device device) {
  Tensor t = empty(sizes, dtype, kCPU);
  normal_(t, 0.0, 1.0, gen);
  return to(t, device);
}

Tensor randint(int64_t low, int64_t high, const Shape& sizes, Generator& gen, DType dtype, Device device) {
  LOOM_CHECK(high > low, "randint: high ", high, " must exceed low ", low);
  Tensor t = empty(sizes, dtype, kCPU);
  const int64_t n = t.numel();
  const uint64_t start = gen.advance(static_cast<uint64_t>((n + 3) / 4));
  const uint64_t seed = gen.seed();
  const uint64_t range = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);
  const bool wide = range > (1ull << 32);
  LOOM_DISPATCH_ALL(dtype, "randint", [&] {
    scalar_t* p = static_cast<scalar_t*>(t.data_ptr());
    fill_random(p, n, seed, start, wide, [&](const auto& w0, const auto& w1, int l) {
      uint64_t r = wide ? ((static_cast<uint64_t>(w0[l]) << 32) | w1[l]) : w0[l];
      const int64_t v = low + static_cast<int64_t>(r % range);
      if constexpr (std::is_integral_v<scalar_t>) {
        return static_cast<scalar_t>(v);
      } else {
        return cast_from_double<scalar_t>(static_cast<double>(v));
      }
    });
  });
  return to(t, device);
}

}  // namespace loom::ops
