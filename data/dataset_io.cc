// Readers for data/dataset.h: IDX (MNIST) and CSV, both through read_maybe_gzipped.
#include <zlib.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "data/dataset.h"
#include "tensor/error.h"
#include "tensor/ops.h"

namespace loom::data {

std::string read_maybe_gzipped(const std::string& path) {
  std::ifstream probe(path, std::ios::binary);
  if (!probe) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
  unsigned char magic[2] = {0, 0};
  probe.read(reinterpret_cast<char*>(magic), 2);
  const bool gz = probe.gcount() == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
  if (!gz) {
    probe.clear();
    probe.seekg(0);
    std::ostringstream os;
    os << probe.rdbuf();
    if (probe.bad()) throw IoError(path + ": read error");
    return os.str();
  }
  probe.close();
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw IoError(path + ": cannot open as gzip");
  std::string out;
  char buf[1 << 16];
  for (;;) {
    const int got = gzread(f, buf, sizeof buf);
    if (got < 0) {
      int code = 0;
      std::string msg = gzerror(f, &code);
      gzclose_r(f);
      throw IoError(path + ": gzip data is corrupt after " + std::to_string(out.size()) + " uncompressed bytes (" +
                    msg + ")");
    }
    if (got == 0) break;
    out.append(buf, static_cast<size_t>(got));
  }
  const int rc = gzclose_r(f);
  if (rc != Z_OK)
    throw IoError(path + ": gzip stream is truncated or corrupt after " + std::to_string(out.size()) +
                  " uncompressed bytes (zlib error " + std::to_string(rc) + ")");
  return out;
}

// ---------------------------------------------------------------- IDX

namespace {
uint32_t be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
}  // namespace

Tensor read_idx(const std::string& path) {
  const std::string bytes = read_maybe_gzipped(path);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  auto fail = [&](size_t offset, const std::string& what) -> IoError {
    return IoError(path + ": not a valid IDX file at byte offset " + std::to_string(offset) + ": " + what);
  };
  if (n < 4) throw fail(0, "the file has " + std::to_string(n) + " bytes, fewer than the 4-byte magic number");
  if (p[0] != 0 || p[1] != 0)
    throw fail(
        0, "the magic number must start with two zero bytes (got 0x" + [&] {
          char b[8];
          std::snprintf(b, sizeof b, "%02x%02x", p[0], p[1]);
          return std::string(b);
        }() + "); is this an IDX file such as train-images-idx3-ubyte?");
  const int type = p[2], ndims = p[3];
  int esize = 0;
  DType dtype = DType::u8;
  switch (type) {
    case 0x08:
      esize = 1, dtype = DType::u8;
      break;
    case 0x09:
      esize = 1, dtype = DType::i32;
      break;
    case 0x0B:
      esize = 2, dtype = DType::i32;
      break;
    case 0x0C:
      esize = 4, dtype = DType::i32;
      break;
    case 0x0D:
      esize = 4, dtype = DType::f32;
      break;
    case 0x0E:
      esize = 8, dtype = DType::f64;
      break;
    default: {
      char code[8];
      std::snprintf(code, sizeof code, "%02X", type);
      throw fail(2, std::string("unknown data type code 0x") + code + " (expected 08, 09, 0B, 0C, 0D or 0E)");
    }
  }
  if (ndims < 1) throw fail(3, "zero dimensions");
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  if (n < header)
    throw fail(n, "the header needs " + std::to_string(header) + " bytes for " + std::to_string(ndims) +
                      " dimension sizes but the file ends after " + std::to_string(n));
  Shape shape;
  int64_t count = 1;
  for (int d = 0; d < ndims; ++d) {
    const int64_t s = be32(p + 4 + 4 * d);
    shape.push_back(s);
    count *= s;
    if (count > (int64_t{1} << 40)) throw fail(4 + 4 * static_cast<size_t>(d), "sizes multiply to over 2^40");
  }
  const size_t need = header + static_cast<size_t>(count) * static_cast<size_t>(esize);
  if (n < need)
    throw fail(n, "truncated: shape " + shape_str(shape) + " needs " + std::to_string(need) +
                      " bytes but the file ends after " + std::to_string(n));
  if (n > need)
    throw fail(need, std::to_string(n - need) + " trailing bytes after the data of shape " + shape_str(shape));
  Tensor t = empty(shape, dtype);
  const unsigned char* d = p + header;
  for (int64_t i = 0; i < count; ++i, d += esize) {
    switch (type) {
      case 0x08:
        t.data<uint8_t>()[i] = d[0];
        break;
      case 0x09:
        t.data<int32_t>()[i] = static_cast<int8_t>(d[0]);
        break;
      case 0x0B:
        t.data<int32_t>()[i] = static_cast<int16_t>((d[0] << 8) | d[1]);
        break;
      case 0x0C:
        t.data<int32_t>()[i] = static_cast<int32_t>(be32(d));
        break;
      case 0x0D: {
        uint32_t u = be32(d);
        std::memcpy(&t.data<float>()[i], &u, 4);
        break;
      }
      case 0x0E: {
        uint64_t u = (uint64_t{be32(d)} << 32) | be32(d + 4);
        std::memcpy(&t.data<double>()[i], &u, 8);
        break;
      }
    }
  }
  return t;
}

InMemoryDataset read_mnist(const std::string& images_path, const std::string& labels_path) {
  Tensor images = read_idx(images_path);
  Tensor labels = read_idx(labels_path);
  if (images.dim() != 3 || images.dtype() != DType::u8)
    throw IoError(images_path + ": expected unsigned-byte images (N, H, W), got " + dtype_name(images.dtype()) + " " +
                  shape_str(images.sizes()));
  if (labels.dim() != 1) throw IoError(labels_path + ": expected labels (N), got shape " + shape_str(labels.sizes()));
  if (images.size(0) != labels.size(0))
    throw IoError(images_path + " holds " + std::to_string(images.size(0)) + " images but " + labels_path + " holds " +
                  std::to_string(labels.size(0)) + " labels; are they from the same split?");
  Tensor x = ops::mul(ops::to(images, DType::f32), 1.0 / 255.0);
  x = ops::reshape(x, {images.size(0), 1, images.size(1), images.size(2)});
  return InMemoryDataset(x, ops::to(labels, DType::i64));
}

// ---------------------------------------------------------------- CSV

namespace {
std::vector<std::string> split_fields(const std::string& line, char delim) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : line) {
    if (c == delim) {
      out.push_back(cur);
      cur.clear();
    } else if (c != '\r') {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}
bool parse_double(const std::string& s, double& v) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return false;
  const std::string t = s.substr(b, s.find_last_not_of(" \t") - b + 1);
  char* end = nullptr;
  errno = 0;
  v = std::strtod(t.c_str(), &end);
  return end == t.c_str() + t.size() && errno == 0 && std::isfinite(v);
}
}  // namespace

InMemoryDataset read_csv(const std::string& path, const CsvOptions& opts) {
  const std::string text = read_maybe_gzipped(path);
  std::vector<float> feats;
  std::vector<int64_t> labels;
  int64_t width = -1, label_col = -1;
  int64_t line_no = 0;
  size_t pos = 0;
  bool first = true;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines
    auto fields = split_fields(line, opts.delimiter);
    const int64_t w = static_cast<int64_t>(fields.size());
    if (width < 0) {
      width = w;
      if (width < 2)
        throw IoError(path + ":" + std::to_string(line_no) + ": a row has " + std::to_string(width) +
                      " column; a CSV dataset needs features and a label (delimiter '" +
                      std::string(1, opts.delimiter) + "')");
      label_col = opts.label_column < 0 ? width + opts.label_column : opts.label_column;
      if (label_col < 0 || label_col >= width)
        throw IoError(path + ": label column " + std::to_string(opts.label_column) + " outside the " +
                      std::to_string(width) + " columns");
    }
    if (first) {
      first = false;
      bool numeric = true;
      double v;
      for (const auto& f : fields) numeric = numeric && parse_double(f, v);
      if (opts.header == 1 || (opts.header < 0 && !numeric)) continue;
    }
    if (w != width)
      throw IoError(path + ":" + std::to_string(line_no) + ": " + std::to_string(w) + " columns, expected " +
                    std::to_string(width) + " like the first row");
    for (int64_t c = 0; c < w; ++c) {
      double v;
      if (!parse_double(fields[static_cast<size_t>(c)], v))
        throw IoError(path + ":" + std::to_string(line_no) + ": column " + std::to_string(c + 1) + " ('" +
                      fields[static_cast<size_t>(c)] + "') is not a number");
      if (c == label_col) {
        if (v != std::floor(v) || std::fabs(v) > 1e15)
          throw IoError(path + ":" + std::to_string(line_no) + ": the label in column " + std::to_string(c + 1) +
                        " ('" + fields[static_cast<size_t>(c)] + "') is not an integer");
        labels.push_back(static_cast<int64_t>(v));
      } else {
        feats.push_back(static_cast<float>(v));
      }
    }
  }
  if (labels.empty()) throw IoError(path + ": no data rows");
  const int64_t rows = static_cast<int64_t>(labels.size());
  return InMemoryDataset(from_vector(feats, {rows, width - 1}), from_vector(labels, {rows}));
}

}  // namespace loom::data
