// export_onnx: a pretrain checkpoint's GPT-2 or Llama as one ONNX file (onnx/export.h).
//   export_onnx CHECKPOINT OUT.onnx [--batch dynamic|N] [--seq dynamic|N]
// CHECKPOINT is a checkpoint directory (step_NNNNNNNN) or a root whose `latest` names one. The model is built from
// the config saved in the checkpoint, so this program lives in recipes/ (which owns the config) rather than in
// checkpoint/; `loomckpt export-onnx` runs it. Graph input "input_ids" (B, T) int64, output "logits" (B, T, V) f32.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>

#include "checkpoint/checkpoint.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "onnx/export.h"
#include "recipes/config.h"
#include "recipes/model.h"
#include "tensor/ops.h"

using namespace loom;
namespace fs = std::filesystem;

namespace {

/// "dynamic" -> 0, else a positive size.
int64_t parse_size(const std::string& v, const char* flag) {
  if (v == "dynamic") return 0;
  try {
    size_t used = 0;
    const long long n = std::stoll(v, &used);
    if (used == v.size() && n > 0) return n;
  } catch (const std::exception&) {
  }
  throw ConfigError(std::string(flag) + ": expected 'dynamic' or a positive size, got '" + v + "'");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Exports a pretrain checkpoint's model (GPT-2 or Llama) to ONNX (opset 17)"};
  std::string ckpt, out, batch = "1", seq = "";
  app.add_option("CHECKPOINT", ckpt, "checkpoint directory, or a root whose `latest` names one")->required();
  app.add_option("OUT", out, "the .onnx file to write (weights over 2 GB go to OUT.data beside it)")->required();
  app.add_option("--batch", batch, "'dynamic', or the fixed batch size (default 1)");
  app.add_option("--seq", seq, "'dynamic', or the fixed sequence length (default: the model's seq_len)");
  CLI11_PARSE(app, argc, argv);
  try {
    const recipes::LoadedModel loaded = recipes::load_checkpoint_model(ckpt);  // the saved config's model
    const recipes::ModelConfig& model_cfg = loaded.config;
    auto model = loaded.model;

    const int64_t B = parse_size(batch, "--batch"),
                  T = parse_size(seq.empty() ? std::to_string(model_cfg.seq_len) : seq, "--seq");
    // A dynamic axis is traced at its example size and one more, so the example leaves a position spare.
    const int64_t eb = B ? B : 2, et = T ? T : std::max<int64_t>(1, std::min<int64_t>(8, model_cfg.seq_len - 1));
    if (et > model_cfg.seq_len)
      throw ConfigError("--seq " + std::to_string(et) + " exceeds the model's seq_len " +
                        std::to_string(model_cfg.seq_len));
    onnx::ExportOptions opts;
    opts.input_names = {"input_ids"};
    opts.output_names = {"logits"};
    for (const char* name : {"input_ids", "logits"}) {
      if (!B) opts.dynamic_axes[name][0] = "batch";
      if (!T) opts.dynamic_axes[name][1] = "seq";
    }
    Generator gen(1);
    Tensor example = ops::randint(0, model_cfg.vocab_size, {eb, et}, gen);
    onnx::export_onnx(*model, {example}, out, opts);
    std::printf("exported %s (%s, %lld parameters) to %s: input_ids (%s, %s) -> logits (%s, %s, %lld)\n",
                loaded.description.c_str(), model_cfg.family.c_str(), static_cast<long long>(model->num_parameters()),
                out.c_str(), B ? std::to_string(B).c_str() : "batch", T ? std::to_string(T).c_str() : "seq",
                B ? std::to_string(B).c_str() : "batch", T ? std::to_string(T).c_str() : "seq",
                static_cast<long long>(model_cfg.vocab_size));
    return 0;
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "export_onnx: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "export_onnx: %s\n", e.what());
    return 1;
  }
}
