// ONNX Runtime (CPU) next to loom's own forward on one batch of an exported GPT-2:
// tokens/s of each, for information (the export is meant to be faithful, not fast).
//   bench_onnx [n_layer n_embd n_head vocab batch seq iters]   (default 6 384 6 50257 4 128 5)
// Prints one line per figure; ORT runs in tests/bench/bench_onnx_ort.py (.venv's onnxruntime).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "nn/gpt2.h"
#include "onnx/export.h"
#include "tensor/ops.h"
#include "tensor/parallel.h"

using namespace loom;

int main(int argc, char** argv) {
  auto arg = [&](int i, int64_t d) { return argc > i ? std::atoll(argv[i]) : d; };
  nn::GPT2Config c;
  c.n_layer = arg(1, 6);
  c.n_embd = arg(2, 384);
  c.n_head = arg(3, 6);
  c.vocab_size = arg(4, 50257);
  const int64_t B = arg(5, 4), T = arg(6, 128), iters = arg(7, 5);
  c.n_positions = std::max<int64_t>(T + 1, 1024);
  Generator gen(1);
  nn::GPT2 model(c, gen);
  model.eval();
  autograd::NoGradGuard no_grad;
  Tensor ids = ops::randint(0, c.vocab_size, {B, T}, gen);

  const auto dir = std::filesystem::temp_directory_path() / ("loom_bench_onnx_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "gpt2.onnx").string();
  onnx::ExportOptions opts;
  opts.input_names = {"input_ids"};
  opts.output_names = {"logits"};
  opts.dynamic_axes = {{"input_ids", {{0, "batch"}, {1, "seq"}}}};
  onnx::export_onnx(model, {ops::randint(0, c.vocab_size, {2, 8}, gen)}, path, opts);

  model(ids);  // warm-up
  double best = 1e30;
  for (int64_t i = 0; i < iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    Tensor logits = model(ids);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("GPT-2 %lld layers, n_embd %lld, vocab %lld, batch %lld x %lld tokens, %d threads\n",
              static_cast<long long>(c.n_layer), static_cast<long long>(c.n_embd), static_cast<long long>(c.vocab_size),
              static_cast<long long>(B), static_cast<long long>(T), num_threads());
  std::printf("loom forward (CPU, best of %lld): %.0f tokens/s\n", static_cast<long long>(iters),
              static_cast<double>(B * T) / best);
  std::fflush(stdout);
  const std::string cmd = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python " + LOOM_SOURCE_DIR +
                          "/tests/bench/bench_onnx_ort.py " + path + " " + std::to_string(B) + " " + std::to_string(T) +
                          " " + std::to_string(iters) + " " + std::to_string(c.vocab_size) + " " +
                          std::to_string(num_threads());
  const int rc = std::system(cmd.c_str());
  std::filesystem::remove_all(dir);
  return rc == 0 ? 0 : 1;
}
