// Trains GPT-2 124M (or a Llama-3.2-1B-shaped model) for a few steps on one device and reports tokens/s and
// MFU, next to the same model and step in PyTorch (tests/bench/torch_gpt2_gpu.py: eager, and torch.compile where the
// installed PyTorch has it) on the same machine in the same run, with the ratios loom/eager and loom/compile.
//
// Usage: bench_gpt2_gpu [--model gpt2|llama1b] [--device cuda:0|cpu] [--precision bf16|f32|autocast]
//                       [--batch B] [--seq T] [--warmup N] [--steps M] [--peak FLOPS] [--torch eager,compile|none]
//                       [--python PATH] [--torch-script PATH] [--layers L --width C --heads H --kv-heads K --mlp F
//                       --vocab V
//                        --data-vocab V0]
//
// Models (--device cuda:N):
//   gpt2     GPT-2 124M: 12 layers, width 768, 12 heads, sequence 1024, tied head, vocab 50257 padded to 50304 (a
//            multiple of 128) as llm.c does: the padded rows are trained like the others but no target ever names
//            them (token ids are drawn from [0, 50257)). Batch 16.
//   llama1b  Llama-3.2-1B-shaped: 16 layers, width 2048, 32 heads, 8 key/value heads, SwiGLU MLP 8192, vocab 128256,
//            tied embeddings, RoPE theta 500000, sequence 2048. Batch 4.
// With --device cpu the same architectures at tiny sizes (2 layers, width 128, vocab 512 of which 500 drawn,
// sequence 128, batch 4, f32) so both sides can be exercised without a GPU.
//
// Precision (both sides do the same):
//   autocast  (GPU default when this build has autograd/autocast.h) f32 parameters, gradients and AdamW state; the
//             forward and the loss under loom::AutocastGuard(bf16) / torch.autocast("cuda", bf16): matmuls and
//             attention in bf16 with f32 accumulation, norms, softmax and the loss in f32 (the nanoGPT and llm.c
//             train_gpt2.py set-up). nn::AdamW sends contiguous CUDA f32 parameters to the fused multi-tensor kernel.
//   bf16      (GPU default otherwise) parameters, gradients, activations and AdamW state in bf16:
//             Module::to(DType::bf16) / model.to(torch.bfloat16). Note: nn::AdamW fuses only f32 parameters on CUDA,
//             so here loom's step runs AdamW as separate tensor ops while PyTorch's fused AdamW takes bf16.
//   f32       (CPU default) everything f32.
// The optimizer is nn::AdamW (lr 3e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on >= 2-D parameters, as
// nn::weight_decay_groups splits them) against torch.optim.AdamW(fused=True) with the same groups.
//
// Timing: N warm-up steps (the first also gives loss0, the loss before any update), then M steps between two
// device synchronisations (loom::cuda::synchronize, torch.cuda.synchronize); step_ms = elapsed / M,
// tokens_per_s = B*T / step_ms. No host synchronisation inside the timed steps. The data is one fixed random batch.
//
// MFU = tokens_per_s * flops_per_token / peak, where
//   flops_per_token = 6 * N + 12 * L * T * C                  (PaLM appendix B; nanoGPT and llm.c count the same)
//   N = parameters that enter a matmul: every parameter except the position embedding (GPT-2's wpe) and an untied
//       input embedding (a lookup costs no FLOPs); a tied embedding counts once, as the lm head matmul.
//   12 * L * T * C: attention's Q K^T and P V, forward and backward, over the full T x T square (causal masking is
//       not discounted), C = n_head * head_dim.
//   peak: dense bf16 tensor-core FLOP/s of the GPU, from its name (nvidia-smi): H100 SXM, H200, GH200 989e12; H100
//       NVL 835e12; H100 PCIe 756e12; A100 312e12; or --peak. On the CPU no peak is known: mfu=n/a without --peak.
//
// The PyTorch peer runs first, in its own process, so that each side finds the GPU empty (loom's caching allocator
// keeps its blocks until the process ends). It gets the environment the caller had: under a bundle's run.sh, which
// puts the CUDA libraries it found in front of LD_LIBRARY_PATH, the peer gets $LOOM_ORIG_LD_LIBRARY_PATH (saved by
// run.sh) back, so PyTorch loads its own cuBLAS/cuDNN/NCCL. TF32 is one setting for both sides: LOOM_ALLOW_TF32=1
// (read by loom's cuBLAS calls, tensor/cuda/matmul.cu) turns it on for loom and, through --allow-tf32, for PyTorch's
// matmuls and cuDNN; unset, neither uses it (f32 matmuls in full f32). It matters only to f32 matmuls.
#include <omp.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "nn/optim.h"
#include "tensor/cuda_runtime.h"  // declares loom::cuda only in builds with the CUDA backend
#if LOOM_WITH_CUDA
#define LOOM_WITH_CUDA_BUILD true
#else
#define LOOM_WITH_CUDA_BUILD false
#endif
#if __has_include("autograd/autocast.h")
#include "autograd/autocast.h"
#define LOOM_BENCH_HAVE_AUTOCAST 1
#else
#define LOOM_BENCH_HAVE_AUTOCAST 0
#endif

using namespace loom;

namespace {

/// The model and batch both sides build.
struct Setup {
  std::string family = "gpt2";  // gpt2 | llama
  int64_t layers = 12, width = 768, heads = 12, kv_heads = 12, mlp = 3072;
  int64_t vocab = 50304;       // rows of the embedding and columns of the logits
  int64_t data_vocab = 50257;  // token ids are drawn from [0, data_vocab)
  bool tied = true;
  double rope_theta = 10000.0;
  int64_t seq = 1024, batch = 16;
  std::string description;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "bench_gpt2_gpu: %s (see the usage at the top of tests/bench/bench_gpt2_gpu.cc)\n", msg.c_str());
  std::exit(2);
}

int64_t to_int(const std::string& key, const std::string& v) {
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x <= 0) usage_error("--" + key + " wants a positive integer, got '" + v + "'");
  return x;
}

/// Dense bf16 tensor-core peak FLOP/s of a GPU from its name (which: the table row), 0 when unknown.
double peak_from_name(const std::string& name, std::string& which) {
  struct Row {
    const char* a;
    const char* b;  // both must occur in the name ("" matches)
    const char* which;
    double peak;
  };
  static const Row rows[] = {{"H100", "PCIe", "H100 PCIe", 756e12}, {"H100", "NVL", "H100 NVL", 835e12},
                             {"GH200", "", "GH200", 989e12},        {"H200", "", "H200", 989e12},
                             {"H100", "", "H100 SXM", 989e12},      {"A100", "", "A100", 312e12}};
  for (const Row& r : rows) {
    if (name.find(r.a) != std::string::npos && name.find(r.b) != std::string::npos) {
      which = r.which;
      return r.peak;
    }
  }
  return 0.0;
}

/// The name nvidia-smi gives GPU `index`, empty when it cannot be asked.
std::string gpu_name(int index) {
  const std::string cmd =
      "nvidia-smi --query-gpu=name --format=csv,noheader -i " + std::to_string(index) + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char line[256] = {0};
  std::string out;
  if (std::fgets(line, sizeof line, p)) out = line;
  pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ')) out.pop_back();
  return out;
}

/// The first of $LOOM_PYTHON, python3, /usr/bin/python3 that imports torch; empty when none does.
std::string find_python(const std::string& given) {
  std::vector<std::string> cands;
  if (!given.empty()) return given;
  if (const char* e = std::getenv("LOOM_PYTHON"); e && *e) cands.push_back(e);
  cands.push_back("python3");
  cands.push_back("/usr/bin/python3");
  for (const auto& c : cands) {
    const std::string cmd = c + " -c 'import torch' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) == 0) return c;
  }
  return "";
}

/// The PyTorch peer script: `given`, else $LOOM_TORCH_BENCH, else the bundle's ($LOOM_BUNDLE), else the one in the
/// source tree this was built from, else tests/bench/ under the working directory (a copy of the repository on a GPU
/// node); empty when none exists.
std::string find_script(const std::string& given) {
  if (!given.empty()) return given;
  std::vector<std::string> cands = {std::string(LOOM_SOURCE_DIR) + "/tests/bench/torch_gpt2_gpu.py",
                                    "tests/bench/torch_gpt2_gpu.py"};
  if (const char* b = std::getenv("LOOM_BUNDLE"); b && *b)  // set by a bundle's run.sh (scripts/bundle.sh)
    cands.insert(cands.begin(), std::string(b) + "/tests/bench/torch_gpt2_gpu.py");
  if (const char* e = std::getenv("LOOM_TORCH_BENCH"); e && *e) cands.insert(cands.begin(), e);
  for (const auto& c : cands)
    if (FILE* f = std::fopen(c.c_str(), "r")) {
      std::fclose(f);
      return c;
    }
  return "";
}

/// Whether loom's f32 matmuls use TF32: LOOM_ALLOW_TF32 starting with '1', as tensor/cuda/matmul.cu reads it.
bool loom_allows_tf32() {
  const char* v = std::getenv("LOOM_ALLOW_TF32");
  return v != nullptr && v[0] == '1';
}

/// While alive, LD_LIBRARY_PATH is the caller's from before a bundle's run.sh changed it
/// ($LOOM_ORIG_LD_LIBRARY_PATH; empty means unset), so children (the PyTorch peer) load their own libraries; the
/// loader of this process read the variable at start-up and is not affected. Without that variable, nothing changes.
class CallerLibraryPath {
 public:
  CallerLibraryPath() {
    const char* orig = std::getenv("LOOM_ORIG_LD_LIBRARY_PATH");
    if (orig == nullptr) return;
    active_ = true;
    if (const char* cur = std::getenv("LD_LIBRARY_PATH")) {
      had_ = true;
      saved_ = cur;
    }
    if (*orig)
      setenv("LD_LIBRARY_PATH", orig, 1);
    else
      unsetenv("LD_LIBRARY_PATH");
  }
  ~CallerLibraryPath() {
    if (!active_) return;
    if (had_)
      setenv("LD_LIBRARY_PATH", saved_.c_str(), 1);
    else
      unsetenv("LD_LIBRARY_PATH");
  }
  CallerLibraryPath(const CallerLibraryPath&) = delete;
  CallerLibraryPath& operator=(const CallerLibraryPath&) = delete;
  /// One line saying what the children get.
  std::string describe() const {
    const char* now = std::getenv("LD_LIBRARY_PATH");
    const std::string child = now ? "'" + std::string(now) + "'" : "unset";
    if (!active_) return "LD_LIBRARY_PATH " + child + " (inherited as it is; no LOOM_ORIG_LD_LIBRARY_PATH)";
    return "LD_LIBRARY_PATH " + child + " (the caller's, saved by run.sh; this process has " +
           (had_ ? "'" + saved_ + "'" : std::string("it unset")) + ")";
  }

 private:
  bool active_ = false, had_ = false;
  std::string saved_;
};

std::shared_ptr<nn::CausalLM> build(const Setup& s, Generator& gen, int64_t& matmul_params) {
  if (s.family == "gpt2") {
    nn::GPT2Config c;
    c.n_layer = s.layers;
    c.n_embd = s.width;
    c.n_head = s.heads;
    c.n_positions = s.seq;
    c.vocab_size = s.vocab;
    c.tie_word_embeddings = s.tied;
    auto m = std::make_shared<nn::GPT2>(c, gen);
    matmul_params =
        m->num_parameters() - m->transformer->wpe->weight.numel() - (s.tied ? 0 : m->transformer->wte->weight.numel());
    return m;
  }
  nn::LlamaConfig c;
  c.n_layer = s.layers;
  c.n_embd = s.width;
  c.n_head = s.heads;
  c.n_kv_head = s.kv_heads;
  c.intermediate_size = s.mlp;
  c.vocab_size = s.vocab;
  c.max_seq_len = s.seq;
  c.rope_theta = s.rope_theta;
  c.tie_word_embeddings = s.tied;
  auto m = std::make_shared<nn::Llama>(c, gen);
  matmul_params = m->num_parameters() - (s.tied ? 0 : m->model->embed_tokens->weight.numel());
  return m;
}

/// Blocks until every kernel queued on `device` has finished (nothing to wait for on the CPU).
void synchronize(const Device& device) {
#if LOOM_WITH_CUDA
  if (device.is_cuda()) loom::cuda::synchronize(device.index);
#else
  (void)device;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "-h" || k == "--help") {
      std::printf("usage: see the comment at the top of tests/bench/bench_gpt2_gpu.cc\n");
      return 0;
    }
    if (k.rfind("--", 0) != 0) usage_error("unexpected argument '" + k + "'");
    k = k.substr(2);
    std::string v;
    if (auto eq = k.find('='); eq != std::string::npos) {
      v = k.substr(eq + 1);
      k = k.substr(0, eq);
    } else {
      if (i + 1 >= argc) usage_error("--" + k + " needs a value");
      v = argv[++i];
    }
    static const char* known[] = {"model", "device",   "precision", "batch",  "seq",        "warmup",
                                  "steps", "peak",     "torch",     "python", "layers",     "width",
                                  "heads", "kv-heads", "mlp",       "vocab",  "data-vocab", "torch-script"};
    bool ok = false;
    for (const char* kk : known) ok = ok || k == kk;
    if (!ok) usage_error("unknown option --" + k);
    a[k] = v;
  }
  auto get = [&](const char* k, const std::string& def) { return a.count(k) ? a[k] : def; };

  const Device device(get("device", "cuda:0"));
  const bool cpu = device.is_cpu();
  if (device.is_cuda() && device.index >= cuda_device_count()) {
    std::printf("loom failed: %s asked for, but this machine has %d CUDA device(s)%s\n", device.str().c_str(),
                cuda_device_count(), LOOM_WITH_CUDA_BUILD ? "" : " (and this build has no CUDA backend)");
    return 1;
  }
  const std::string model_name = get("model", "gpt2");
  Setup s;
  if (model_name == "gpt2") {
    s.description = cpu ? "GPT-2 architecture at tiny size (CPU)" : "GPT-2 124M, vocab 50257 padded to 50304 (llm.c)";
    if (cpu) {
      s.layers = 2, s.width = 128, s.heads = 4, s.kv_heads = 4, s.mlp = 512;
      s.vocab = 512, s.data_vocab = 500, s.seq = 128, s.batch = 4;
    }
  } else if (model_name == "llama1b") {
    s.family = "llama";
    s.description = cpu ? "Llama architecture at tiny size (CPU)" : "Llama-3.2-1B-shaped, tied embeddings";
    s.rope_theta = 500000.0;
    if (cpu) {
      s.layers = 2, s.width = 128, s.heads = 4, s.kv_heads = 2, s.mlp = 352;
      s.vocab = 512, s.data_vocab = 500, s.seq = 128, s.batch = 4;
    } else {
      s.layers = 16, s.width = 2048, s.heads = 32, s.kv_heads = 8, s.mlp = 8192;
      s.vocab = 128256, s.data_vocab = 128256, s.seq = 2048, s.batch = 4;
    }
  } else {
    usage_error("--model must be gpt2 or llama1b, got '" + model_name + "'");
  }
  for (const char* k : {"layers", "width", "heads", "kv-heads", "mlp", "vocab", "data-vocab"})
    if (a.count(k))
      s.description = (s.family == "gpt2" ? "GPT-2" : "Llama") + std::string(" architecture, sizes given");
  if (a.count("layers")) s.layers = to_int("layers", a["layers"]);
  if (a.count("width")) s.width = to_int("width", a["width"]);
  if (a.count("heads")) s.heads = to_int("heads", a["heads"]);
  s.kv_heads = s.family == "gpt2" ? s.heads : s.kv_heads;
  if (a.count("kv-heads")) s.kv_heads = to_int("kv-heads", a["kv-heads"]);
  if (s.family == "gpt2") s.mlp = 4 * s.width;
  if (a.count("mlp")) s.mlp = to_int("mlp", a["mlp"]);
  if (a.count("vocab")) s.vocab = s.data_vocab = to_int("vocab", a["vocab"]);
  if (a.count("data-vocab")) s.data_vocab = to_int("data-vocab", a["data-vocab"]);
  if (a.count("seq")) s.seq = to_int("seq", a["seq"]);
  if (a.count("batch")) s.batch = to_int("batch", a["batch"]);
  if (s.data_vocab > s.vocab) usage_error("--data-vocab must not exceed --vocab");
  if (s.family == "gpt2" && (s.kv_heads != s.heads || s.mlp != 4 * s.width))
    usage_error("gpt2 has n_kv_head = n_head and an MLP of 4 * width");
  const int64_t warmup = to_int("warmup", get("warmup", cpu ? "1" : "3"));
  const int64_t steps = to_int("steps", get("steps", cpu ? "3" : "10"));
  const std::string precision = get("precision", cpu ? "f32" : (LOOM_BENCH_HAVE_AUTOCAST ? "autocast" : "bf16"));
  if (precision != "bf16" && precision != "f32" && precision != "autocast")
    usage_error("--precision must be bf16, f32 or autocast, got '" + precision + "'");
#if !LOOM_BENCH_HAVE_AUTOCAST
  if (precision == "autocast") usage_error("--precision autocast: this build has no autograd/autocast.h");
#endif
  const std::string torch_modes = get("torch", "eager,compile");
  const int threads = omp_get_max_threads();

  // Peak FLOP/s.
  double peak = 0;
  std::string peak_src = "unknown";
  if (a.count("peak")) {
    peak = std::atof(a["peak"].c_str());
    if (!(peak > 0)) usage_error("--peak wants FLOP/s > 0, e.g. 989e12");
    peak_src = "--peak";
  } else if (device.is_cuda()) {
    const std::string name = gpu_name(device.index);
    std::string which;
    peak = peak_from_name(name, which);
    peak_src = name.empty() ? "nvidia-smi gave no GPU name" : name + (peak > 0 ? " = " + which : " (not in the table)");
  }

  // The model, its FLOPs per token, and the printed set-up.
  Generator gen(1337);
  int64_t matmul_params = 0;
  std::shared_ptr<nn::CausalLM> model = build(s, gen, matmul_params);
  const int64_t n_params = model->num_parameters();
  const double flops_per_token = 6.0 * static_cast<double>(matmul_params) +
                                 12.0 * static_cast<double>(s.layers) * static_cast<double>(s.seq * s.width);
  std::printf("model: %s (%s): %lld layers, width %lld, %lld heads, %lld kv heads, mlp %lld, vocab %lld (ids < %lld)\n",
              model_name.c_str(), s.description.c_str(), (long long)s.layers, (long long)s.width, (long long)s.heads,
              (long long)s.kv_heads, (long long)s.mlp, (long long)s.vocab, (long long)s.data_vocab);
  std::printf(
      "run: device %s, precision %s, batch %lld, seq %lld, %lld tokens/step, %lld warm-up + %lld timed steps%s\n",
      device.str().c_str(), precision.c_str(), (long long)s.batch, (long long)s.seq, (long long)(s.batch * s.seq),
      (long long)warmup, (long long)steps, cpu ? (", " + std::to_string(threads) + " threads").c_str() : "");
  std::printf("params=%lld matmul_params=%lld flops_per_token=%.6g\n", (long long)n_params, (long long)matmul_params,
              flops_per_token);
  std::printf(
      "mfu formula: tokens_per_s * (6*N + 12*L*T*C) / peak, N = matmul_params (all but wpe and an untied input "
      "embedding)\n");
  if (peak > 0)
    std::printf("peak=%.4g FLOP/s dense bf16 (%s)\n", peak, peak_src.c_str());
  else
    std::printf("peak unknown (%s): mfu=n/a; give --peak FLOPS\n", peak_src.c_str());
  const bool tf32 = loom_allows_tf32();
  std::printf("tf32=%s for both sides (LOOM_ALLOW_TF32%s; PyTorch gets --allow-tf32 %d; affects f32 matmuls only)\n",
              tf32 ? "on" : "off", std::getenv("LOOM_ALLOW_TF32") ? "" : " unset", tf32 ? 1 : 0);
  std::fflush(stdout);

  // The PyTorch peer first (see the header).
  double eager = 0, compiled = 0;
  int64_t torch_params = -1;
  if (torch_modes != "none") {
    const CallerLibraryPath child_env;  // for find_python's probe too
    std::printf("torch peer environment: %s\n", child_env.describe().c_str());
    const std::string py = find_python(get("python", ""));
    const std::string script = find_script(get("torch-script", ""));
    if (script.empty()) {
      std::printf("torch peer skipped: torch_gpt2_gpu.py not found (give --torch-script PATH)\n");
    } else if (py.empty()) {
      std::printf("torch peer skipped: no python (LOOM_PYTHON, python3, /usr/bin/python3) imports torch\n");
    } else {
      char cmd[2048];
      std::snprintf(cmd, sizeof cmd,
                    "%s %s --arch %s --layers %lld --width %lld --heads %lld "
                    "--kv-heads %lld --mlp %lld --vocab %lld --data-vocab %lld --tied %d --rope-theta %g --seq %lld "
                    "--batch %lld --warmup %lld --steps %lld --precision %s --device %s --peak %g --modes %s "
                    "--threads %d --allow-tf32 %d 2>&1",
                    py.c_str(), script.c_str(), s.family.c_str(), (long long)s.layers, (long long)s.width,
                    (long long)s.heads, (long long)s.kv_heads, (long long)s.mlp, (long long)s.vocab,
                    (long long)s.data_vocab, s.tied ? 1 : 0, s.rope_theta, (long long)s.seq, (long long)s.batch,
                    (long long)warmup, (long long)steps, precision.c_str(), device.str().c_str(), peak,
                    torch_modes.c_str(), threads, tf32 ? 1 : 0);
      FILE* p = popen(cmd, "r");
      char line[1024];
      while (p && std::fgets(line, sizeof line, p)) {
        std::fputs(line, stdout);
        std::fflush(stdout);
        double v = 0;
        long long n = 0;
        if (std::sscanf(line, "torch_eager tokens_per_s=%lf", &v) == 1) eager = v;
        if (std::sscanf(line, "torch_compile tokens_per_s=%lf", &v) == 1) compiled = v;
        if (std::sscanf(line, "torch params=%lld", &n) == 1) torch_params = n;
      }
      const int rc = p ? pclose(p) : -1;
      if (rc != 0) std::printf("torch peer exited with status %d\n", rc > 0 && WIFEXITED(rc) ? WEXITSTATUS(rc) : rc);
    }
  }

  // loom.
  double loss0 = 0, loss_last = 0, step_s = 0;
  try {
    model->to(device);
    if (precision == "bf16") model->to(DType::bf16);
    nn::AdamWOptions o;
    o.lr = 3e-4;
    o.beta1 = 0.9;
    o.beta2 = 0.95;
    o.eps = 1e-8;
    o.weight_decay = 0.1;
    auto groups = nn::weight_decay_groups(model->named_parameters(), o.lr, o.weight_decay);
    nn::AdamW opt(groups, o);
    Generator data_gen(7);
    const Tensor idx = ops::to(ops::randint(0, s.data_vocab, {s.batch, s.seq}, data_gen), device);
    const Tensor tgt = ops::to(ops::randint(0, s.data_vocab, {s.batch, s.seq}, data_gen), device);

    auto step = [&]() -> Tensor {
      opt.zero_grad();
      Tensor loss;
      {
#if LOOM_BENCH_HAVE_AUTOCAST
        AutocastGuard autocast(DType::bf16, precision == "autocast");
#endif
        loss = model->loss(idx, tgt);
      }
      loss.backward();
      opt.step();
      return loss;
    };

    for (int64_t i = 0; i < warmup; ++i) {
      Tensor loss = step();
      if (i == 0) loss0 = loss.item();
    }
    synchronize(device);
#if LOOM_WITH_CUDA
    const int64_t mallocs0 = device.is_cuda() ? loom::cuda::allocator_stats(device.index).num_backend_allocs : 0;
#endif
    const auto t0 = std::chrono::steady_clock::now();
    Tensor loss;
    for (int64_t i = 0; i < steps; ++i) loss = step();
    synchronize(device);
    step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / static_cast<double>(steps);
    loss_last = loss.item();
#if LOOM_WITH_CUDA
    if (device.is_cuda()) {
      const AllocatorStats st = loom::cuda::allocator_stats(device.index);
      std::printf("loom peak_allocated_gib=%.2f peak_reserved_gib=%.2f cudaMalloc_calls_in_timed_steps=%lld\n",
                  static_cast<double>(st.peak_allocated_bytes) / (1 << 30),
                  static_cast<double>(st.peak_reserved_bytes) / (1 << 30),
                  (long long)(st.num_backend_allocs - mallocs0));
    }
#endif
  } catch (const std::exception& e) {
    std::printf("loom failed: %s\n", e.what());
    return 1;
  }
  const double tps = static_cast<double>(s.batch * s.seq) / step_s;
  char mfu[32] = "n/a";
  if (peak > 0) std::snprintf(mfu, sizeof mfu, "%.4f", tps * flops_per_token / peak);
  std::printf("loom loss0=%.4f loss_last=%.4f (ln vocab = %.4f)\n", loss0, loss_last,
              std::log(static_cast<double>(s.vocab)));
  std::printf("loom tokens_per_s=%.1f step_ms=%.3f mfu=%s\n", tps, step_s * 1e3, mfu);

  if (torch_params >= 0)
    std::printf("params %s: loom %lld, torch %lld\n", torch_params == n_params ? "match" : "DIFFER",
                (long long)n_params, (long long)torch_params);
  if (eager > 0) std::printf("ratio loom/torch_eager tokens_per_s=%.3f\n", tps / eager);
  if (compiled > 0) std::printf("ratio loom/torch_compile tokens_per_s=%.3f\n", tps / compiled);
  if (torch_modes != "none" && eager <= 0 && compiled <= 0) std::printf("ratio unavailable: no PyTorch figure\n");
  return 0;
}
