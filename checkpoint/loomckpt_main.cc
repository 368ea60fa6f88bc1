// loomckpt: inspect and convert loom checkpoints without a training program.
//   loomckpt list   PATH               step, layout, every tensor's shape, dtype, pieces and bytes, size on disk
//   loomckpt verify PATH               reads every block of every tensor and checks its CRC32C
//   loomckpt export PATH OUT [--chunk-mb N]   model weights -> one safetensors file, Hugging Face names/layouts
//   loomckpt export-onnx PATH OUT.onnx [--batch dynamic|N] [--seq dynamic|N]   the model as ONNX: runs the
//                                      recipes/ program export_onnx (it builds the model from the saved config)
// PATH is a checkpoint directory (step_NNNNNNNN) or a root whose `latest` names one.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include "checkpoint/checkpoint.h"
#include "checkpoint/export.h"

namespace fs = std::filesystem;
using namespace loom;
using namespace loom::checkpoint;

namespace {

int usage() {
  std::cerr << "usage: loomckpt list PATH | verify PATH | export PATH OUT.safetensors [--chunk-mb N]\n"
               "       loomckpt export-onnx PATH OUT.onnx [--batch dynamic|N] [--seq dynamic|N]\n"
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
    const Json* j = md.json.find(k);
    return j ? static_cast<int64_t>(j->as_number()) : 0;
  };
  const Json* l = md.json.find("layout");
  return (l ? l->as_string() : std::string("?")) + " (world " + std::to_string(md.world_size) + ", dp " +
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

/// Runs export_onnx (built in recipes/, which owns the model config) found beside loomckpt or in ../recipes/.
static int export_onnx(int argc, char** argv) {
  const fs::path self = fs::read_symlink("/proc/self/exe").parent_path();
  for (const fs::path& p : {self / "export_onnx", self.parent_path() / "recipes" / "export_onnx"}) {
    if (!fs::exists(p)) continue;
    std::vector<char*> args{const_cast<char*>(p.c_str())};
    for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    ::execv(p.c_str(), args.data());
    std::fprintf(stderr, "loomckpt: cannot run %s: %s\n", p.c_str(), std::strerror(errno));
    return 1;
  }
  std::fprintf(stderr,
               "loomckpt: export-onnx needs the export_onnx program (recipes/) beside loomckpt or in "
               "../recipes/; build it with `cmake --build build --target export_onnx`\n");
  return 1;
}

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "export-onnx") return export_onnx(argc, argv);
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
