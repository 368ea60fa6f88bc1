// loomckpt: inspect and convert loom checkpoints without a training program.
//   loomckpt list   PATH               step, layout, every tensor's shape, dtype, pieces and bytes, size on disk
//   loomckpt verify PATH               reads every block of every tensor and checks its CRC32C
//   loomckpt export PATH OUT [--chunk-mb N]   model weights -> one safetensors file, Hugging Face names/layouts
//   loomckpt import HF OUT [--config recipe.yaml]   Hugging Face GPT-2 / Llama weights -> a step-0 checkpoint
//   loomckpt export-onnx PATH OUT.onnx [--batch dynamic|N] [--seq dynamic|N]   the model as ONNX: runs the
//                                      recipes/ program export_onnx (it builds the model from the saved config)
// PATH is a checkpoint directory (step_NNNNNNNN) or a root whose `latest` names one. Each subcommand is one add_*
// function below registered in main(): a new one is a function and a line.
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include <unistd.h>

#include "checkpoint/checkpoint.h"
#include "checkpoint/export.h"
#include "checkpoint/hf_import.h"
#include "collectives/store.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "recipes/config.h"
#include "recipes/model.h"

namespace fs = std::filesystem;
using namespace loom;
using namespace loom::checkpoint;

namespace {

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

int import_hf(const std::string& src, const std::string& out, const std::string& recipe) {
  const HfWeights w = HfWeights::open(src);
  Generator gen(0);
  std::shared_ptr<nn::CausalLM> model;
  TrainState st;  // step 0, no data position
  if (!recipe.empty()) {
    const recipes::RecipeConfig cfg = recipes::load_config(recipe);
    model = recipes::build_model(cfg.model, gen);  // as pretrain builds it
    st.config = cfg.to_yaml();                     // pretrain resuming with this recipe sees its own config
  } else {
    if (w.config_path().empty())
      throw ConfigError("loomckpt import: " + src +
                        " has no config.json beside it: give the model's shapes with --config recipe.yaml");
    model = build_hf_model(w.config_path(), gen);
  }
  Target t;
  t.module = model.get();
  const HfLoadStats s = load_hf_weights(src, t);
  auto group = std::make_shared<collectives::ProcessGroup>(std::make_shared<collectives::HashStore>(), 0, 1, "gloo");
  Checkpointer ck(out, group);
  const std::string dir = ck.save(t, st);
  std::printf(
      "imported %lld tensors (%lld bytes read%s) from %s into %s (step 0, model only: pretrain resumes from it "
      "with a fresh optimizer)\n",
      static_cast<long long>(s.tensors), static_cast<long long>(s.bytes_read),
      s.config_checked ? ", config.json matches" : "", src.c_str(), dir.c_str());
  return 0;
}

// The subcommands: each adds itself to the app and sets `run` when chosen.
using Runner = std::function<int()>;

void add_list(CLI::App& app, Runner& run) {
  auto* c = app.add_subcommand("list", "step, layout, every tensor's shape, dtype, pieces and bytes, size on disk");
  auto path = std::make_shared<std::string>();
  c->add_option("PATH", *path, "a checkpoint directory, or a checkpoint root (its `latest` is used)")->required();
  c->callback([&run, path] { run = [path] { return list(resolve(*path)); }; });
}

void add_verify(CLI::App& app, Runner& run) {
  auto* c = app.add_subcommand("verify", "read every block of every tensor and check its CRC32C");
  auto path = std::make_shared<std::string>();
  c->add_option("PATH", *path, "a checkpoint directory, or a checkpoint root (its `latest` is used)")->required();
  c->callback([&run, path] { run = [path] { return verify(resolve(*path)); }; });
}

void add_export(CLI::App& app, Runner& run) {
  auto* c = app.add_subcommand("export", "model weights -> one safetensors file with Hugging Face names and layouts");
  struct Opts {
    std::string path, out;
    int64_t chunk_mb = 64;
  };
  auto o = std::make_shared<Opts>();
  c->add_option("PATH", o->path, "a checkpoint directory, or a checkpoint root (its `latest` is used)")->required();
  c->add_option("OUT", o->out, "the safetensors file to write")->required();
  c->add_option("--chunk-mb,--chunk_mb", o->chunk_mb, "read at most this many MiB of a tensor at a time")
      ->check(CLI::PositiveNumber);
  c->callback([&run, o] {
    run = [o] {
      const std::string dir = resolve(o->path);
      ExportStats s = export_safetensors(dir, o->out, o->chunk_mb << 20);
      std::printf("exported %lld tensors (%lld bytes) from %s to %s; largest slice in memory %lld bytes\n",
                  static_cast<long long>(s.tensors), static_cast<long long>(s.bytes), dir.c_str(), o->out.c_str(),
                  static_cast<long long>(s.max_chunk_bytes));
      return 0;
    };
  });
}

void add_import(CLI::App& app, Runner& run) {
  auto* c = app.add_subcommand(
      "import", "Hugging Face GPT-2 / Llama safetensors (file, index or model directory) -> a step-0 checkpoint");
  struct Opts {
    std::string src, out, config;
  };
  auto o = std::make_shared<Opts>();
  c->add_option("HF", o->src, "model directory (config.json + model.safetensors or its index), index or file")
      ->required();
  c->add_option("OUT", o->out, "checkpoint root to write (step_00000000 and `latest` in it)")->required();
  c->add_option("--config", o->config,
                "recipe YAML whose model section must match config.json (also stored as the checkpoint's config)");
  c->callback([&run, o] { run = [o] { return import_hf(o->src, o->out, o->config); }; });
}

/// Runs export_onnx (built in recipes/, which owns the model config) found beside loomckpt or in ../recipes/, with
/// args (everything after `export-onnx`). Returns only on failure.
int export_onnx(const std::vector<std::string>& args) {
  const fs::path self = fs::read_symlink("/proc/self/exe").parent_path();
  for (const fs::path& p : {self / "export_onnx", self.parent_path() / "recipes" / "export_onnx"}) {
    if (!fs::exists(p)) continue;
    std::vector<char*> argv{const_cast<char*>(p.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(p.c_str(), argv.data());
    std::fprintf(stderr, "loomckpt: cannot run %s: %s\n", p.c_str(), std::strerror(errno));
    return 1;
  }
  std::fprintf(stderr,
               "loomckpt: export-onnx needs the export_onnx program (recipes/) beside loomckpt or in "
               "../recipes/; build it with `cmake --build build --target export_onnx`\n");
  return 1;
}

void add_export_onnx(CLI::App& app, Runner& run) {
  auto* c = app.add_subcommand("export-onnx",
                               "the model as ONNX: PATH OUT.onnx [--batch dynamic|N] [--seq dynamic|N] (runs the "
                               "recipes/ program export_onnx, which builds the model from the saved config)");
  c->prefix_command();  // every argument, --help included, goes to export_onnx
  c->set_help_flag();
  c->callback([&run, c] { run = [args = c->remaining()] { return export_onnx(args); }; });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "loomckpt: inspect and convert loom checkpoints without a training program.\n"
      "PATH: a checkpoint directory, or a checkpoint root (its `latest` is used)",
      "loomckpt"};
  app.require_subcommand(1);
  Runner run;
  for (auto add : {add_list, add_verify, add_export, add_import, add_export_onnx}) add(app, run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;  // a usage error
  }
  try {
    return run ? run() : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loomckpt: %s\n", e.what());
    return 1;
  }
}
