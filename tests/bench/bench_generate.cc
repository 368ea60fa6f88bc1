// Generation speed on the CPU with and without the KV cache: a GPT-2 of 6 layers x 384 (GPT-2's vocabulary and 1024
// positions, random weights) continues a prompt that fills the context up to 64, 256 or 1024 tokens, greedily. Decode
// rate: tokens per second over the steps after the first (with the cache, one token's forward over the cached
// prefix; without, a forward over the whole sequence each step). The first token (prefill) is reported apart.
// Both runs must produce the same tokens (the bench aborts otherwise).
//
// Usage: bench_generate [new_tokens=8] [contexts=64,256,1024] [n_layer=6] [n_embd=384]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "nn/generation.h"
#include "nn/gpt2.h"

using namespace loom;

namespace {

struct Run {
  double first_s = 0;  // prompt forward + first token
  double decode_tps = 0;
  std::vector<int64_t> tokens;
};

Run timed(nn::CausalLM& model, const std::vector<int64_t>& prompt, int64_t n, bool cache) {
  nn::GenerateOptions o;
  o.max_new_tokens = n;
  o.sampling.temperature = 0;
  o.use_cache = cache;
  std::vector<std::chrono::steady_clock::time_point> at;
  const auto t0 = std::chrono::steady_clock::now();
  Run r;
  r.tokens = nn::generate(model, {prompt}, o, [&](const std::vector<int64_t>&, const std::vector<bool>&) {
    at.push_back(std::chrono::steady_clock::now());
  })[0];
  r.first_s = std::chrono::duration<double>(at.front() - t0).count();
  const double decode_s = std::chrono::duration<double>(at.back() - at.front()).count();
  r.decode_tps = decode_s > 0 ? static_cast<double>(at.size() - 1) / decode_s : 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : 8;
  std::vector<int64_t> contexts{64, 256, 1024};
  if (argc > 2) {
    contexts.clear();
    std::stringstream ss(argv[2]);
    for (std::string c; std::getline(ss, c, ',');) contexts.push_back(std::atoll(c.c_str()));
  }
  nn::GPT2Config c;
  c.n_layer = argc > 3 ? std::atoll(argv[3]) : 6;
  c.n_embd = argc > 4 ? std::atoll(argv[4]) : 384;
  c.n_head = c.n_embd / 64;
  Generator gen(1);
  nn::GPT2 model(c, gen);
  std::printf(
      "bench_generate: GPT-2 %lld layers x %lld, vocab %lld, %lld parameters; %lld new tokens per run, greedy, "
      "batch 1, CPU\n",
      static_cast<long long>(c.n_layer), static_cast<long long>(c.n_embd), static_cast<long long>(c.vocab_size),
      static_cast<long long>(model.num_parameters()), static_cast<long long>(n));
  for (int64_t ctx : contexts) {
    if (ctx - n < 1 || ctx > c.n_positions) {
      std::fprintf(stderr, "bench_generate: context %lld does not fit %lld new tokens in %lld positions\n",
                   static_cast<long long>(ctx), static_cast<long long>(n), static_cast<long long>(c.n_positions));
      return 2;
    }
    std::vector<int64_t> prompt;
    for (int64_t t = 0; t < ctx - n; ++t) prompt.push_back((t * 7919 + 13) % c.vocab_size);
    const Run with = timed(model, prompt, n, true);
    const Run without = timed(model, prompt, n, false);
    if (with.tokens != without.tokens) {
      std::fprintf(stderr, "bench_generate: context %lld: tokens with the cache differ from without\n",
                   static_cast<long long>(ctx));
      return 1;
    }
    std::printf("context %5lld | KV cache | %8.2f tokens/s decode | first token %.3f s\n", static_cast<long long>(ctx),
                with.decode_tps, with.first_s);
    std::printf("context %5lld | no cache | %8.2f tokens/s decode | first token %.3f s\n", static_cast<long long>(ctx),
                without.decode_tps, without.first_s);
    std::printf("context %5lld | speedup  | %8.1fx\n", static_cast<long long>(ctx),
                without.decode_tps > 0 ? with.decode_tps / without.decode_tps : 0.0);
    std::fflush(stdout);
  }
  return 0;
}
