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
#include "tensor/ops.h"

using namespace loom;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<nn::CausalLM> build_model(const recipes::ModelConfig& m) {
  Generator gen(0);  // every weight is overwritten from the checkpoint
  if (m.family == "gpt2") {
    nn::GPT2Config c;
    c.vocab_size = m.vocab_size;
    c.n_positions = m.seq_len;
    c.n_embd = m.n_embd;
    c.n_layer = m.n_layer;
    c.n_head = m.n_head;
    c.tie_word_embeddings = m.tie_embeddings;
    return std::make_shared<nn::GPT2>(c, gen);
  }
  nn::LlamaConfig c;
  c.vocab_size = m.vocab_size;
  c.max_seq_len = m.seq_len;
  c.n_embd = m.n_embd;
  c.n_layer = m.n_layer;
  c.n_head = m.n_head;
  c.n_kv_head = m.n_kv_head > 0 ? m.n_kv_head : m.n_head;
  if (m.intermediate_size > 0) c.intermediate_size = m.intermediate_size;
  c.rope_theta = m.rope_theta;
  c.tie_word_embeddings = m.tie_embeddings;
  return std::make_shared<nn::Llama>(c, gen);
}

/// Copies the checkpoint's model/* tensors into the model (a tied head reads its embedding).
void load_weights(const checkpoint::Metadata& md, nn::Module& model) {
  std::map<std::string, const checkpoint::TensorInfo*> have;
  for (const auto& t : md.tensors) have[t.name] = &t;
  autograd::NoGradGuard no_grad;
  for (const auto& [name, p] : model.named_parameters()) {
    auto it = have.find("model/" + name);
    if (it == have.end())
      throw IoError("export_onnx: checkpoint " + md.dir + " has no tensor model/" + name +
                    " (was it saved from another model config?)");
    Tensor t = checkpoint::read_tensor(md, it->first);
    if (t.sizes() != p.sizes())
      throw IoError("export_onnx: tensor model/" + name + " of checkpoint " + md.dir + " has shape " +
                    shape_str(t.sizes()) + ", the config's model has " + shape_str(p.sizes()));
    ops::copy_(p, t);
  }
}

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
    std::string dir = ckpt;
    if (!fs::exists(dir + "/metadata.json")) {
      const std::string latest = checkpoint::latest_checkpoint(ckpt);
      if (!latest.empty()) dir = latest;
    }
    checkpoint::Metadata md = checkpoint::read_metadata(dir);
    const checkpoint::Json* cfg_text = md.json.find("config");
    if (!cfg_text || cfg_text->as_string().empty())
      throw IoError("export_onnx: checkpoint " + dir + " carries no config (not saved by pretrain?)");
    const recipes::RecipeConfig cfg = recipes::parse_config(cfg_text->as_string(), dir + "/metadata.json:config");
    auto model = build_model(cfg.model);
    load_weights(md, *model);

    const int64_t B = parse_size(batch, "--batch"),
                  T = parse_size(seq.empty() ? std::to_string(cfg.model.seq_len) : seq, "--seq");
    // A dynamic axis is traced at its example size and one more, so the example leaves a position spare.
    const int64_t eb = B ? B : 2, et = T ? T : std::max<int64_t>(1, std::min<int64_t>(8, cfg.model.seq_len - 1));
    if (et > cfg.model.seq_len)
      throw ConfigError("--seq " + std::to_string(et) + " exceeds the model's seq_len " +
                        std::to_string(cfg.model.seq_len));
    onnx::ExportOptions opts;
    opts.input_names = {"input_ids"};
    opts.output_names = {"logits"};
    for (const char* name : {"input_ids", "logits"}) {
      if (!B) opts.dynamic_axes[name][0] = "batch";
      if (!T) opts.dynamic_axes[name][1] = "seq";
    }
    Generator gen(1);
    Tensor example = ops::randint(0, cfg.model.vocab_size, {eb, et}, gen);
    onnx::export_onnx(*model, {example}, out, opts);
    std::printf("exported %s (%s, %lld parameters, step %lld) to %s: input_ids (%s, %s) -> logits (%s, %s, %lld)\n",
                dir.c_str(), cfg.model.family.c_str(), static_cast<long long>(model->num_parameters()),
                static_cast<long long>(md.step), out.c_str(), B ? std::to_string(B).c_str() : "batch",
                T ? std::to_string(T).c_str() : "seq", B ? std::to_string(B).c_str() : "batch",
                T ? std::to_string(T).c_str() : "seq", static_cast<long long>(cfg.model.vocab_size));
    return 0;
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "export_onnx: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "export_onnx: %s\n", e.what());
    return 1;
  }
}
