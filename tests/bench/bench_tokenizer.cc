// Tokenizer throughput: loom's byte-level BPE against tiktoken and Hugging Face tokenizers, one thread each, on the
// same corpus in the same run (tests/bench/bench_tokenizer.py times the references). One line per figure.
//   bench_tokenizer [DATA_DIR] [REPEATS]
// DATA_DIR: made by tests/data/tokenizer_reference.py (test_data makes it as build/tokenizer_testdata); made here
// when missing.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace fs = std::filesystem;

/// CPU time of the calling thread, seconds (the machine may be shared: wall-clock MB/s understates a core's).
static double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char** argv) {
  const fs::path dir = argc > 1 ? fs::path(argv[1]) : fs::path(LOOM_BINARY_DIR) / "tokenizer_testdata";
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  const std::string python = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python";
  if (!fs::exists(dir / "corpus.bin")) {
    const std::string cmd = python + " " + LOOM_SOURCE_DIR + "/tests/data/tokenizer_reference.py --out " + dir.string();
    std::fprintf(stderr, "bench_tokenizer: making %s\n", dir.c_str());
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "bench_tokenizer: %s failed (run scripts/setup.sh for .venv)\n", cmd.c_str());
      return 1;
    }
  }
  std::ifstream f(dir / "corpus.bin", std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string data = ss.str();
  std::vector<std::string_view> docs;
  size_t pos = 4, total = 0;
  uint32_t n = 0;
  std::memcpy(&n, data.data(), 4);
  for (uint32_t i = 0; i < n; ++i) {
    uint32_t len;
    std::memcpy(&len, data.data() + pos, 4);
    docs.emplace_back(data.data() + pos + 4, len);
    pos += 4 + len;
    total += len;
  }
  std::printf(
      "bench_tokenizer: %zu documents, %.2f MB (code, docs, translations in ~45 languages, man pages, emoji, "
      "whitespace runs, invalid UTF-8); 1 thread each, best of %d\n",
      docs.size(), total / 1e6, repeats);
  const std::pair<const char*, const char*> configs[] = {{"gpt2 tiktoken-ranks", "gpt2/gpt2.tiktoken"},
                                                         {"llama3 tiktoken-ranks", "llama3/tokenizer.model"},
                                                         {"gpt2 tokenizer.json", "gpt2/tokenizer.json"},
                                                         {"llama3 tokenizer.json", "llama3/tokenizer.json"}};
  std::vector<int32_t> ids;
  for (const auto& [name, file] : configs) {
    const auto tok = loom::data::Tokenizer::from_file((dir / file).string());
    double best = 1e30, best_cpu = 1e30;
    size_t count = 0;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = thread_cpu_seconds();
      count = 0;
      for (std::string_view d : docs) {
        ids.clear();
        tok.encode_append(d, false, ids);
        count += ids.size();
      }
      best_cpu = std::min(best_cpu, thread_cpu_seconds() - c0);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("%s loom: %.2f MB/s per core (CPU time), %.2f MB/s wall (%zu tokens)\n", name, total / best_cpu / 1e6,
                total / best / 1e6, count);
    std::fflush(stdout);
  }
  const std::string cmd = python + " " + LOOM_SOURCE_DIR + "/tests/bench/bench_tokenizer.py " + dir.string() + " " +
                          std::to_string(repeats);
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return 1;
  char line[512];
  while (std::fgets(line, sizeof(line), p) != nullptr) {
    char config[128], impl[128];
    double mbps, mbps_cpu;
    size_t count;
    char w2[64];
    if (std::sscanf(line, "%63s %63s %127s %lf %lf %zu", config, w2, impl, &mbps_cpu, &mbps, &count) == 6) {
      std::printf("%s %s %s: %.2f MB/s per core (CPU time), %.2f MB/s wall (%zu tokens)\n", config, w2, impl, mbps_cpu,
                  mbps, count);
    } else {
      std::fputs(line, stdout);
    }
    std::fflush(stdout);
  }
  return pclose(p) == 0 ? 0 : 1;
}
