// loomckpt: inspect and convert loom checkpoints without a training program.
//   loomckpt list   PATH               step, layout, every tensor's shape, dtype, pieces and bytes, size on disk
//   loomckpt verify PATH               reads every block of every tensor and checks its CRC32C
//   loomckpt export PATH OUT [--chunk-mb N]   model weights -> one safetensors file, Hugging Face names/layouts
// PATH is a checkpoint directory (step_NNNNNNNN) or a root whose `latest` names one.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "checkpoint/checkpoint.h"
#include "checkpoint/export.h"

namespace fs = std::filesystem;
using namespace loom;
using namespace loom::checkpoint;

namespace {

int usage() {
  std::cerr << "usage: loomckpt list PATH | verify PATH | export PATH OUT.safetensors [--chunk-mb N]\n"
               "PATH: a checkpoint directory, or a checkpoint root (its `latest` is used)\n";
  return 2;
}

std::string resolve(const std::string& path) {
  if (fs::exists(path + "/metadata.json") || fs::exists(path + "/COMPLETE")) return path;
  const std::string latest = latest_checkpoint(path);
  if (!latest.empty()) return latest;
  return path;  // read_metadata reports what is wrong with it
}

std::string layout_of(const Metadata& md) {
  auto num = [&](const char* k) {
    const Json* j = json_find(md.json, k);
    return j ? j->get<int64_t>() : 0;
  };
  const Json* l = json_find(md.json, "layout");
  return (l ? l->get<std::string>() : std::string("?")) + " (world " + std::to_string(md.world_size) + ", dp " +
         std::to_string(num("dp_size")) + ", tp " + std::to_string(num("tp_size")) + ")";
}

int list(const std::string& dir) {
  Metadata md = read_metadata(dir);
  int64_t disk = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) disk += static_cast<int64_t>(e.file_size());
  std::printf("checkpoint %s\nstep %lld\nlayout %s\nchecksum crc32c per %lld elements\n", dir.c_str(),
              static_cast<long long>(md.step), layout_of(md).c_str(), static_cast<long long>(kChecksumBlock));
  int64_t total = 0;
  std::printf("%-64s %-18s %-5s %6s %12s\n", "tensor", "shape", "dtype", "pieces", "bytes");
  for (const auto& t : md.tensors) {
    const int64_t bytes = shape_numel(t.shape) * static_cast<int64_t>(element_size(t.dtype));
    total += bytes;
    std::printf("%-64s %-18s %-5s %6zu %12lld\n", t.name.c_str(), shape_str(t.shape).c_str(), dtype_name(t.dtype),
                t.pieces.size(), static_cast<long long>(bytes));
  }
  std::printf("%zu tensors, %lld bytes of tensor data, %lld bytes on disk\n", md.tensors.size(),
              static_cast<long long>(total), static_cast<long long>(disk));
  return 0;
}

int verify(const std::string& dir) {
  Metadata md = read_metadata(dir);
  int bad = 0;
  for (const auto& t : md.tensors) {
    try {
      verify_tensor(md, t);
    } catch (const Error& e) {
      std::printf("FAIL %s\n", e.what());
      ++bad;
    }
  }
  std::printf("%s: %zu tensors, %d failed verification\n", dir.c_str(), md.tensors.size(), bad);
  return bad ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  const std::string cmd = argv[1];
  try {
    const std::string dir = resolve(argv[2]);
    if (cmd == "list") return list(dir);
    if (cmd == "verify") return verify(dir);
    if (cmd == "export") {
      if (argc < 4) return usage();
      int64_t chunk_mb = 64;
      for (int i = 4; i + 1 < argc; i += 2)
        if (std::string(argv[i]) == "--chunk-mb") chunk_mb = std::atoll(argv[i + 1]);
      ExportStats s = export_safetensors(dir, argv[3], chunk_mb << 20);
      std::printf("exported %lld tensors (%lld bytes) from %s to %s; largest slice in memory %lld bytes\n",
                  static_cast<long long>(s.tensors), static_cast<long long>(s.bytes), dir.c_str(), argv[3],
                  static_cast<long long>(s.max_chunk_bytes));
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loomckpt: %s\n", e.what());
    return 1;
  }
  return usage();
}
