#include "checkpoint/export.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hf_import.h"
#include "checkpoint/json.h"
#include "checkpoint/safetensors.h"
#include "tensor/ops.h"

namespace loom::checkpoint {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

bool is_hf_conv1d_weight(const std::string& name) {
  return name.rfind("transformer.h.", 0) == 0 &&
         (ends_with(name, ".attn.c_attn.weight") || ends_with(name, ".attn.c_proj.weight") ||
          ends_with(name, ".mlp.c_fc.weight") || ends_with(name, ".mlp.c_proj.weight"));
}

ExportStats export_safetensors(const std::string& dir, const std::string& out, int64_t chunk_bytes) {
  LOOM_CHECK(chunk_bytes > 0, "export_safetensors: chunk_bytes must be positive, got ", chunk_bytes);
  const Metadata md = read_metadata(dir);
  struct Item {
    const TensorInfo* info;
    std::string hf_name;
    bool transpose;
    Shape hf_shape;
  };
  std::vector<Item> items;
  for (const auto& t : md.tensors) {
    if (t.name.rfind("model/", 0) != 0) continue;
    Item it{&t, t.name.substr(6), false, t.shape};
    if (is_hf_conv1d_weight(it.hf_name)) {
      LOOM_CHECK(t.shape.size() == 2, "export_safetensors: ", t.name, " should be 2-D, is ", shape_str(t.shape));
      it.transpose = true;
      it.hf_shape = {t.shape[1], t.shape[0]};
    }
    items.push_back(std::move(it));
  }
  Json header = Json::object();
  Json meta = Json::object();
  meta["format"] = Json("pt");
  meta["loom_checkpoint"] = Json(dir);
  meta["step"] = Json(std::to_string(md.step));
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  for (const auto& it : items) {
    Json e = Json::object();
    e["dtype"] = Json(safetensors_dtype(it.info->dtype));
    Json shape = Json::array();
    for (int64_t s : it.hf_shape) shape.push_back(Json(s));
    e["shape"] = shape;
    Json range = Json::array();
    range.push_back(Json(offset));
    offset += static_cast<uint64_t>(shape_numel(it.hf_shape)) * element_size(it.info->dtype);
    range.push_back(Json(offset));
    e["data_offsets"] = range;
    header[it.hf_name] = e;
  }
  std::string text = dump_json(header);
  while ((text.size() + 8) % 8 != 0) text.push_back(' ');

  ExportStats stats;
  const std::string tmp = out + ".tmp";
  std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
  if (!f) throw IoError("export_safetensors: cannot open " + tmp + " for writing: " + std::strerror(errno));
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));
  f.write(reinterpret_cast<const char*>(len), 8);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  auto write = [&](const Tensor& t, const std::string& name) {
    stats.max_chunk_bytes = std::max<int64_t>(stats.max_chunk_bytes, static_cast<int64_t>(t.nbytes()));
    f.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    if (!f) throw IoError("export_safetensors: writing tensor " + name + " to " + tmp + " failed (disk full?)");
    stats.bytes += static_cast<int64_t>(t.nbytes());
  };
  for (const auto& it : items) {
    const TensorInfo& t = *it.info;
    const int64_t es = static_cast<int64_t>(element_size(t.dtype));
    if (t.shape.empty() || shape_numel(t.shape) == 0) {
      if (shape_numel(t.shape) > 0) write(read_tensor(md, t.name), t.name);
    } else if (!it.transpose) {
      // Row-major slices along dim 0: consecutive in the file.
      const int64_t row = shape_numel(t.shape) / t.shape[0];
      const int64_t rows = std::max<int64_t>(1, chunk_bytes / (row * es));
      for (int64_t r = 0; r < t.shape[0]; r += rows)
        write(read_slice(md, t, 0, r, std::min(rows, t.shape[0] - r)), t.name);
    } else {
      // (out, in) -> (in, out): columns c0.. of ours are rows c0.. of Hugging Face's.
      const int64_t cols = std::max<int64_t>(1, chunk_bytes / (t.shape[0] * es));
      for (int64_t c = 0; c < t.shape[1]; c += cols) {
        Tensor slice = read_slice(md, t, 1, c, std::min(cols, t.shape[1] - c));  // (out, n)
        write(ops::contiguous(ops::transpose(slice, 0, 1)), t.name);             // (n, out)
      }
    }
    ++stats.tensors;
  }
  f.flush();
  if (!f) throw IoError("export_safetensors: writing " + tmp + " failed (disk full?)");
  f.close();
  int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, out, ec);
  if (ec) throw IoError("export_safetensors: cannot rename " + tmp + " to " + out + ": " + ec.message());
  return stats;
}

void import_safetensors(const std::string& path, nn::Module& module) {
  Target t;
  t.module = &module;
  load_hf_weights(path, t);
}

}  // namespace loom::checkpoint
