// Helpers shared by the nn tests: tiny model configs, closed-form parameter
// counts, and running /usr/bin/python3 (Debian's PyTorch) for reference values.
#pragma once

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "nn/gpt2.h"
#include "nn/llama.h"

namespace loom::nn::testing {

inline GPT2Config tiny_gpt2(int64_t vocab = 16, int64_t layers = 2) {
  GPT2Config c;
  c.vocab_size = vocab;
  c.n_positions = 16;
  c.n_embd = 32;
  c.n_layer = layers;
  c.n_head = 4;
  return c;
}

inline LlamaConfig tiny_llama(int64_t layers = 2) {
  LlamaConfig c;
  c.vocab_size = 16;
  c.max_seq_len = 16;
  c.n_embd = 32;
  c.n_layer = layers;
  c.n_head = 4;
  c.n_kv_head = 2;
  c.intermediate_size = 48;
  return c;
}

/// Runs `/usr/bin/python3 -c script` and returns the whitespace-separated numbers it prints.
/// An empty result means python or torch is missing (tests then skip).
inline std::vector<double> run_python(const std::string& script) {
  std::string cmd = "/usr/bin/python3 - 2>/dev/null <<'PYEOF'\n" + script + "\nPYEOF\n";
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return {};
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  if (pclose(f) != 0) return {};
  std::istringstream is(out);
  std::vector<double> vals;
  double v;
  while (is >> v) vals.push_back(v);
  return vals;
}

inline std::string py_list(const std::vector<float>& v) {
  std::ostringstream os;
  os.precision(9);
  os << "[";
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}

}  // namespace loom::nn::testing
