// Printing tensors the way PyTorch does (torch/_tensor_str.py): one formatter
// chooses integer, fixed (4 decimals) or scientific notation and one width for
// all elements; lines wrap at 80 columns; tensors over 1000 elements show the
// first and last 3 entries of each dim around "...". The dtype suffix is
// printed for dtypes other than float32 and int64, as `dtype=float64`.
#include <cmath>
#include <cstdio>
#include <sstream>

#include "tensor/ops.h"

namespace loom {
namespace {

constexpr int64_t kThreshold = 1000;
constexpr int64_t kEdgeItems = 3;
constexpr int64_t kLineWidth = 80;
constexpr int kPrecision = 4;

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

std::string nonfinite_str(double v) {
  if (std::isnan(v)) return "nan";
  return v > 0 ? "inf" : "-inf";
}

class Formatter {
 public:
  Formatter(const std::vector<double>& fvals, const std::vector<int64_t>& ivals, bool floating) : floating_(floating) {
    if (!floating_) {
      for (int64_t v : ivals) max_width_ = std::max<size_t>(max_width_, std::to_string(v).size());
      return;
    }
    std::vector<double> nz;
    for (double v : fvals)
      if (std::isfinite(v) && v != 0) nz.push_back(v);
    if (nz.empty()) return;
    double mn = std::fabs(nz[0]), mx = mn;
    for (double v : nz) {
      mn = std::min(mn, std::fabs(v));
      mx = std::max(mx, std::fabs(v));
      if (v != std::ceil(v)) int_mode_ = false;
    }
    if (int_mode_) {
      sci_mode_ = mx / mn > 1000.0 || mx > 1e8;
    } else {
      sci_mode_ = mx / mn > 1000.0 || mx > 1e8 || mn < 1e-4;
    }
    for (double v : nz) {
      size_t w;
      if (sci_mode_) {
        w = fmt("%.4e", v).size();
      } else if (int_mode_) {
        w = fmt("%.0f", v).size() + 1;
      } else {
        w = fmt("%.4f", v).size();
      }
      max_width_ = std::max(max_width_, w);
    }
  }

  size_t width() const { return max_width_; }

  std::string format_float(double v) const {
    std::string r;
    if (!std::isfinite(v)) {
      r = nonfinite_str(v);
    } else if (sci_mode_) {
      r = fmt("%.4e", v);
    } else if (int_mode_) {
      r = fmt("%.0f", v) + ".";
    } else {
      r = fmt("%.4f", v);
    }
    return pad(r);
  }
  std::string format_int(int64_t v) const { return pad(std::to_string(v)); }

 private:
  std::string pad(const std::string& r) const {
    return r.size() < max_width_ ? std::string(max_width_ - r.size(), ' ') + r : r;
  }
  bool floating_;
  bool int_mode_ = true;
  bool sci_mode_ = false;
  size_t max_width_ = 1;
};

/// Host data of a tensor, as f64 (floating) or i64 (integers), contiguous.
struct HostData {
  Shape sizes;
  Shape strides;
  bool floating;
  std::vector<double> f;
  std::vector<int64_t> i;
};

/// Indices shown along a dim of size n (all, or first and last kEdgeItems).
std::vector<int64_t> shown(int64_t n, bool summarize) {
  std::vector<int64_t> out;
  if (summarize && n > 2 * kEdgeItems) {
    for (int64_t k = 0; k < kEdgeItems; ++k) out.push_back(k);
    for (int64_t k = n - kEdgeItems; k < n; ++k) out.push_back(k);
  } else {
    for (int64_t k = 0; k < n; ++k) out.push_back(k);
  }
  return out;
}

void collect(const HostData& h, int64_t d, int64_t off, bool summarize, std::vector<double>& f,
             std::vector<int64_t>& iv) {
  if (d == static_cast<int64_t>(h.sizes.size())) {
    if (h.floating) {
      f.push_back(h.f[off]);
    } else {
      iv.push_back(h.i[off]);
    }
    return;
  }
  for (int64_t k : shown(h.sizes[d], summarize)) collect(h, d + 1, off + k * h.strides[d], summarize, f, iv);
}

std::string elem(const HostData& h, const Formatter& fm, int64_t off) {
  return h.floating ? fm.format_float(h.f[off]) : fm.format_int(h.i[off]);
}

std::string tensor_str(const HostData& h, const Formatter& fm, int64_t d, int64_t off, int64_t indent, bool summarize) {
  const int64_t nd = static_cast<int64_t>(h.sizes.size());
  const int64_t remaining = nd - d;
  const int64_t n = h.sizes[d];
  const bool cut = summarize && n > 2 * kEdgeItems;
  if (remaining == 1) {
    const int64_t elem_size = static_cast<int64_t>(fm.width()) + 2;
    const int64_t per_line = std::max<int64_t>(1, (kLineWidth - indent) / elem_size);
    std::vector<std::string> data;
    for (int64_t k : shown(n, summarize)) {
      if (cut && k == n - kEdgeItems) data.push_back(" ...");
      data.push_back(elem(h, fm, off + k * h.strides[d]));
    }
    std::string out = "[";
    for (size_t k = 0; k < data.size(); ++k) {
      if (k > 0) out += (static_cast<int64_t>(k) % per_line == 0) ? ",\n" + std::string(indent + 1, ' ') : ", ";
      out += data[k];
    }
    return out + "]";
  }
  std::vector<std::string> slices;
  for (int64_t k : shown(n, summarize)) {
    if (cut && k == n - kEdgeItems) slices.push_back("...");
    slices.push_back(tensor_str(h, fm, d + 1, off + k * h.strides[d], indent + 1, summarize));
  }
  const std::string sep = "," + std::string(remaining - 1, '\n') + std::string(indent + 1, ' ');
  std::string out = "[";
  for (size_t k = 0; k < slices.size(); ++k) out += (k ? sep : "") + slices[k];
  return out + "]";
}

std::string add_suffixes(std::string s, const std::vector<std::string>& suffixes, int64_t indent) {
  // As PyTorch computes it: len(s) - s.rfind('\n') + 1 (rfind gives -1 when absent).
  const size_t nl = s.rfind('\n');
  int64_t last_line_len =
      static_cast<int64_t>(s.size()) - (nl == std::string::npos ? -1 : static_cast<int64_t>(nl)) + 1;
  for (const std::string& suf : suffixes) {
    const int64_t len = static_cast<int64_t>(suf.size());
    if (last_line_len + len + 2 > kLineWidth) {
      s += ",\n" + std::string(indent, ' ') + suf;
      last_line_len = indent + len;
    } else {
      s += ", " + suf;
      last_line_len += len + 2;
    }
  }
  return s + ")";
}

}  // namespace

std::string to_string(const Tensor& t) {
  if (!t.defined()) return "tensor(undefined)";
  const std::string prefix = "tensor(";
  const int64_t indent = static_cast<int64_t>(prefix.size());
  std::vector<std::string> suffixes;
  if (!t.device().is_cpu()) suffixes.push_back("device='" + t.device().str() + "'");
  std::string body;
  if (t.numel() == 0) {
    if (t.dim() != 1) {
      std::string size = "size=(";
      for (int64_t k = 0; k < t.dim(); ++k) size += (k ? ", " : "") + std::to_string(t.sizes()[k]);
      suffixes.push_back(size + ")");
    }
    if (t.dtype() != DType::f32) suffixes.push_back(std::string("dtype=") + dtype_name(t.dtype()));
    body = "[]";
  } else {
    if (t.dtype() != DType::f32 && t.dtype() != DType::i64)
      suffixes.push_back(std::string("dtype=") + dtype_name(t.dtype()));
    HostData h;
    h.floating = is_floating(t.dtype());
    Tensor host = ops::contiguous(ops::to(ops::to(t, kCPU), h.floating ? DType::f64 : DType::i64));
    h.sizes = host.sizes();
    h.strides = contiguous_strides(h.sizes);
    if (h.floating) {
      h.f = host.to_vector<double>();
    } else {
      h.i = host.to_vector<int64_t>();
    }
    const bool summarize = t.numel() > kThreshold;
    std::vector<double> fv;
    std::vector<int64_t> iv;
    if (summarize) {
      collect(h, 0, 0, true, fv, iv);
    }
    Formatter fm(summarize ? fv : h.f, summarize ? iv : h.i, h.floating);
    if (t.dim() == 0) {
      body = elem(h, fm, 0);
    } else {
      body = tensor_str(h, fm, 0, 0, indent, summarize);
    }
  }
  return add_suffixes(prefix + body, suffixes, indent);
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << to_string(t); }

}  // namespace loom
