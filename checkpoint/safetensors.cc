#include "checkpoint/safetensors.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "checkpoint/json.h"
#include "tensor/ops.h"

namespace loom::checkpoint {

std::string safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "F32";
    case DType::f64:
      return "F64";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i32:
      return "I32";
    case DType::i64:
      return "I64";
    case DType::u8:
      return "U8";
  }
  return "?";
}

DType dtype_from_safetensors(const std::string& code, const std::string& context) {
  for (DType t : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64, DType::u8})
    if (safetensors_dtype(t) == code) return t;
  if (code == "BOOL") return DType::u8;
  LOOM_THROW(IoError, context, ": unsupported safetensors dtype '", code,
             "' (loom reads F32, F64, F16, BF16, I32, I64, U8, BOOL)");
}

const Tensor& SafetensorsFile::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  LOOM_THROW(InvalidArgument, path, ": no tensor named '", name, "' (the file holds ", tensors.size(), " tensors)");
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  std::vector<Tensor> host;
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [k, v] : metadata) meta[k] = Json(v);
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    LOOM_CHECK(seen.insert(name).second, "save_safetensors(", path, "): duplicate tensor name '", name, "'");
    Tensor h = ops::contiguous(ops::to(t, kCPU));
    Json entry = Json::object();
    entry["dtype"] = Json(safetensors_dtype(h.dtype()));
    Json shape = Json::array();
    for (int64_t s : h.sizes()) shape.push_back(Json(s));
    entry["shape"] = shape;
    Json range = Json::array();
    range.push_back(Json(offset));
    offset += h.nbytes();
    range.push_back(Json(offset));
    entry["data_offsets"] = range;
    header[name] = entry;
    host.push_back(h);
  }
  std::string text = dump_json(header);
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');  // align the data to 8 bytes

  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) LOOM_THROW(IoError, "save_safetensors: cannot open '", tmp, "' for writing: ", std::strerror(errno));
    uint64_t n = text.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const Tensor& h : host)
      out.write(static_cast<const char*>(h.data_ptr()), static_cast<std::streamsize>(h.nbytes()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      LOOM_THROW(IoError, "save_safetensors: writing '", tmp, "' failed (disk full?): ", std::strerror(errno));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    LOOM_THROW(IoError, "save_safetensors: cannot rename '", tmp, "' to '", path, "': ", std::strerror(errno));
  }
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) LOOM_THROW(IoError, "load_safetensors: cannot open '", path, "': ", std::strerror(errno));
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  unsigned char len[8];
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(len), 8))
    LOOM_THROW(IoError, path, ": truncated safetensors file (", file_size, " bytes, no header length)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(len[i]) << (8 * i);
  if (n > file_size - 8 || n > (100ull << 20))
    LOOM_THROW(IoError, path, ": header length ", n, " does not fit the file of ", file_size, " bytes");
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  Json header;
  try {
    header = parse_json(text);
  } catch (const Error& e) {
    LOOM_THROW(IoError, path, ": malformed safetensors header: ", e.what());
  }
  if (!header.is_object()) LOOM_THROW(IoError, path, ": safetensors header is not a JSON object");
  const uint64_t data_start = 8 + n;
  const uint64_t data_size = file_size - data_start;

  SafetensorsFile file;
  file.path = path;
  try {  // a value of the wrong type (nlohmann's type_error) names the file too
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        for (const auto& [k, v] : entry.items()) file.metadata[k] = v.get<std::string>();
        continue;
      }
      std::string ctx = path + ": tensor '" + name + "'";
      DType dtype = dtype_from_safetensors(json_at(entry, "dtype", ctx).get<std::string>(), ctx);
      Shape shape;
      for (const Json& s : json_at(entry, "shape", ctx)) shape.push_back(s.get<int64_t>());
      const auto& range = json_at(entry, "data_offsets", ctx);
      if (range.size() != 2) LOOM_THROW(IoError, ctx, ": data_offsets must hold two numbers");
      uint64_t begin = range[0].get<uint64_t>();
      uint64_t end = range[1].get<uint64_t>();
      uint64_t expect = static_cast<uint64_t>(shape_numel(shape)) * element_size(dtype);
      if (end < begin || end - begin != expect || end > data_size)
        LOOM_THROW(IoError, ctx, ": byte range [", begin, ", ", end, ") does not match shape ", shape_str(shape), " ",
                   dtype_name(dtype), " (", expect, " bytes) within ", data_size,
                   " data bytes; the file may be truncated");
      Tensor t = empty(shape, dtype, kCPU);
      in.seekg(static_cast<std::streamoff>(data_start + begin));
      if (expect && !in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(expect)))
        LOOM_THROW(IoError, ctx, ": read failed (truncated file?)");
      file.tensors.emplace_back(name, t);
    }
  } catch (const Json::exception& e) {
    LOOM_THROW(IoError, path, ": malformed safetensors header: ", e.what());
  }
  // The header is an unordered JSON object; keep the file's byte order, as writers lay tensors out in order.
  return file;
}

}  // namespace loom::checkpoint
