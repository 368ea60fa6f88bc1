// export_onnx against ONNX Runtime: the exported GPT-2, Llama and a small
// classifier load in onnx.checker and ORT (tests/onnx/ort_check.py) and give
// loom's outputs at several batch sizes and sequence lengths from one file;
// greedy decoding in ORT follows loom's tokens; an op without a mapping is an
// error naming it and its module.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "nn/conv.h"
#include "nn/dropout.h"
#include "nn/gpt2.h"
#include "nn/linear.h"
#include "nn/llama.h"
#include "onnx/export.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;
using namespace loom;

namespace {

fs::path temp_dir(const std::string& name) {
  std::string leaf = "loom_onnx_";
  leaf += name;
  leaf += '_';
  leaf += std::to_string(::getpid());
  fs::path d = fs::temp_directory_path() / leaf;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_bin(const fs::path& p, const Tensor& t) {
  Tensor c = ops::contiguous(t);
  std::ofstream f(p, std::ios::binary);
  f.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * c.element_size()));
}

std::string shape_arg(const Tensor& t) {
  std::string s;
  for (int64_t d : t.sizes()) {
    if (!s.empty()) s += 'x';
    s += std::to_string(d);
  }
  return s;
}

/// Runs tests/onnx/ort_check.py on the manifest; returns its exit code, output in `log`.
int run_check(const fs::path& dir, std::string& log) {
  const std::string py = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python";
  if (!fs::exists(py)) {
    log = py + " is missing: run scripts/setup.sh (it makes .venv with onnxruntime)";
    return -1;
  }
  const std::string cmd = py + " " + LOOM_SOURCE_DIR + "/tests/onnx/ort_check.py " + dir.string() + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) log.append(buf, n);
  return WEXITSTATUS(pclose(p));
}

/// Writes one case of the manifest: the model's output for `input`.
void add_case(std::ofstream& manifest, const fs::path& dir, int k, const Tensor& input, const Tensor& expected,
              double rtol) {
  const std::string in = "in" + std::to_string(k) + ".bin", out = "out" + std::to_string(k) + ".bin";
  write_bin(dir / in, input);
  write_bin(dir / out, expected);
  manifest << "case " << in << " " << dtype_name(input.dtype()) << " " << shape_arg(input) << " " << out << " "
           << shape_arg(expected) << " " << rtol << "\n";
}

Tensor greedy(nn::CausalLM& model, Tensor ids, int steps) {
  for (int s = 0; s < steps; ++s) {
    Tensor logits = model(ids);  // (1, T, V)
    Tensor last = ops::select(logits, 1, ids.size(1) - 1);
    Tensor next = ops::reshape(ops::argmax(last, -1), {1, 1});
    ids = ops::cat({ids, next}, 1);
  }
  return ids;
}

void check_causal_lm(nn::CausalLM& model, const std::string& name, bool decode, bool external_data) {
  NoGradGuard no_grad;
  model.eval();
  fs::path dir = temp_dir(name);
  Generator gen(7);
  const int64_t V = model.vocab_size();
  onnx::ExportOptions opts;
  opts.input_names = {"input_ids"};
  opts.output_names = {"logits"};
  opts.dynamic_axes = {{"input_ids", {{0, "batch"}, {1, "seq"}}}, {"logits", {{0, "batch"}, {1, "seq"}}}};
  opts.external_data = external_data ? "always" : "never";  // "auto" switches at 2 GB
  onnx::export_onnx(model, {ops::randint(0, V, {2, 7}, gen)}, (dir / "model.onnx").string(), opts);
  EXPECT_EQ(fs::exists(dir / "model.onnx.data"), external_data);
  std::ofstream manifest(dir / "manifest.txt");
  manifest << "model model.onnx input_ids logits\n";
  int k = 0;
  for (int64_t B : {1, 3})
    for (int64_t T : {5, 12}) {
      Tensor ids = ops::randint(0, V, {B, T}, gen);
      add_case(manifest, dir, k++, ids, model(ids), 1e-4);
    }
  if (decode) {
    Tensor prompt = ops::randint(0, V, {1, 4}, gen);
    Tensor ids = greedy(model, prompt, 20);
    write_bin(dir / "prompt.bin", prompt);
    write_bin(dir / "greedy.bin", ids);
    manifest << "greedy prompt.bin 4 greedy.bin 24\n";
  }
  manifest.close();
  std::string log;
  const int rc = run_check(dir, log);
  EXPECT_EQ(rc, 0) << log;
  std::printf("%s", log.c_str());
  if (rc == 0) fs::remove_all(dir);
}

}  // namespace

TEST(ExportOnnx, Gpt2LogitsAndGreedyDecodingMatchOnnxRuntimeAtTwoBatchAndSeqSizes) {
  nn::GPT2Config c;
  c.vocab_size = 97;
  c.n_positions = 64;
  c.n_embd = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.initializer_range = 1.0;  // wide weights, untied head: greedy decoding then wanders instead of repeating a token
  c.tie_word_embeddings = false;
  Generator gen(1);
  nn::GPT2 model(c, gen);
  check_causal_lm(model, "gpt2", /*decode=*/true, /*external_data=*/false);
}

TEST(ExportOnnx, LlamaWithExternalDataLogitsMatchOnnxRuntimeAtTwoBatchAndSeqSizes) {
  nn::LlamaConfig c;
  c.vocab_size = 97;
  c.max_seq_len = 64;
  c.n_embd = 32;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_kv_head = 2;  // grouped-query attention
  c.intermediate_size = 48;
  Generator gen(2);
  nn::Llama model(c, gen);
  check_causal_lm(model, "llama", /*decode=*/false, /*external_data=*/true);
}

namespace {
/// A layer whose forward uses ops::norm, which has no ONNX mapping.
class ScaleByNorm : public nn::Module {
 public:
  ScaleByNorm() : Module("ScaleByNorm") {}
  Tensor forward(const Tensor& x) { return ops::div(x, ops::norm(x)); }
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return forward(in); });
  }
};
class NormNet : public nn::Module {
 public:
  explicit NormNet(Generator& gen) : Module("NormNet") {
    fc = register_module("fc", std::make_shared<nn::Linear>(4, 3, nn::LinearOptions{}, gen));
    scale = register_module("scale", std::make_shared<ScaleByNorm>());
  }
  Tensor operator()(const Tensor& x) {
    return call(x, [this](const Tensor& in) { return (*scale)((*fc)(in)); });
  }
  std::shared_ptr<nn::Linear> fc;
  std::shared_ptr<ScaleByNorm> scale;
};
}  // namespace

TEST(ExportOnnx, OpWithoutMappingIsAnErrorNamingTheOpAndModulePath) {
  Generator gen(3);
  NormNet net(gen);
  fs::path dir = temp_dir("unmapped");
  try {
    onnx::export_onnx(net, {ops::randn({2, 4}, gen)}, (dir / "m.onnx").string());
    FAIL() << "export of an op without a mapping did not throw";
  } catch (const onnx::ExportError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'norm'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'scale'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("ScaleByNorm"), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(dir / "m.onnx"));
  fs::remove_all(dir);
}

namespace {
/// The ConvNet of the fit()/CNN issue: two conv blocks (the first with batch norm), then an MLP head with dropout.
std::shared_ptr<nn::Sequential> make_convnet(Generator& gen) {
  auto net = std::make_shared<nn::Sequential>();
  net->push_back(std::make_shared<nn::Conv2d>(1, 8, 3, nn::Conv2dOptions{{1, 1}, {1, 1}}, gen));
  net->push_back(std::make_shared<nn::BatchNorm2d>(8));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::MaxPool2d>(2));
  net->push_back(std::make_shared<nn::Conv2d>(8, 16, 3, nn::Conv2dOptions{}, gen));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::MaxPool2d>(2));
  net->push_back(std::make_shared<nn::Flatten>());
  net->push_back(std::make_shared<nn::Linear>(16 * 6 * 6, 32, nn::LinearOptions{}, gen));
  net->push_back(std::make_shared<nn::ReLU>());
  net->push_back(std::make_shared<nn::Dropout>(0.5, gen));
  net->push_back(std::make_shared<nn::Linear>(32, 10, nn::LinearOptions{}, gen));
  return net;
}
}  // namespace

TEST(ExportOnnx, ConvNetWithBatchNormAndDropoutMatchesOnnxRuntimeAtTwoBatchSizes) {
  Generator gen(4);
  auto net = make_convnet(gen);
  {  // running statistics that are not the initial zeros / ones
    NoGradGuard no_grad;
    net->train();
    for (int k = 0; k < 3; ++k) (*net)(ops::add(ops::mul(ops::randn({4, 1, 28, 28}, gen), 2.0), 0.5));
  }
  fs::path dir = temp_dir("convnet");
  onnx::ExportOptions opts;
  opts.input_names = {"images"};
  opts.output_names = {"logits"};
  opts.dynamic_axes = {{"images", {{0, "batch"}}}};
  onnx::export_onnx(*net, {ops::randn({2, 1, 28, 28}, gen)}, (dir / "model.onnx").string(), opts);
  EXPECT_TRUE(net->is_training()) << "export_onnx must restore the training flag";
  NoGradGuard no_grad;
  net->eval();
  std::ofstream manifest(dir / "manifest.txt");
  manifest << "model model.onnx images logits\n";
  int k = 0;
  for (int64_t B : {1, 5}) {
    Tensor x = ops::add(ops::mul(ops::randn({B, 1, 28, 28}, gen), 2.0), 0.5);
    add_case(manifest, dir, k++, x, (*net)(x), 1e-5);
  }
  manifest << "ops Conv BatchNormalization Relu MaxPool Flatten Gemm -Dropout\n";
  manifest.close();
  std::string log;
  const int rc = run_check(dir, log);
  EXPECT_EQ(rc, 0) << log;
  std::printf("%s", log.c_str());
  if (rc == 0) fs::remove_all(dir);
}

TEST(OpTrace, RecordsOpsWithValueIdsShapesAttributesAndModuleOnlyWhileActive) {
  Generator gen(5);
  nn::Linear fc(4, 3, nn::LinearOptions{}, gen);
  Tensor x = ops::randn({2, 4}, gen);
  Tensor y;
  std::vector<optrace::OpRecord> ops_seen;
  std::vector<optrace::ValueInfo> values;
  {
    NoGradGuard no_grad;  // as export_onnx traces: with grad on, autograd hands back new tensor handles
    optrace::OpTrace trace;
    const int64_t xid = trace.value_of(x);
    y = ops::mul(fc(x), 2.0);
    ops_seen = trace.ops();
    values = trace.values();
    // Ops run inside other ops (mul's dtype cast) are recorded too; the exporter drops those no output uses.
    auto lin_it = std::find_if(ops_seen.begin(), ops_seen.end(), [](const auto& r) { return r.op == "linear"; });
    ASSERT_NE(lin_it, ops_seen.end());
    const auto& lin = *lin_it;
    EXPECT_EQ(lin.inputs.at(0), xid);
    ASSERT_EQ(lin.modules.size(), 1u);
    EXPECT_EQ(lin.modules[0], static_cast<const void*>(&fc));
    const auto& mul = ops_seen.back();
    EXPECT_EQ(mul.op, "mul_scalar");
    // mul's input is linear's output (possibly re-numbered by mul's inner no-op cast, which returns it as is).
    EXPECT_TRUE(trace.tensor(mul.inputs.at(0)).is_same(trace.tensor(lin.outputs.at(0))));
    EXPECT_EQ(std::get<double>(mul.attr("value")), 2.0);
    EXPECT_TRUE(mul.modules.empty());
    EXPECT_EQ(values.at(mul.outputs.at(0)).sizes, Shape({2, 3}));
    EXPECT_EQ(trace.find(y), mul.outputs.at(0));
  }
  EXPECT_FALSE(optrace::active());
  ops::add(x, x);  // no trace: nothing recorded, no crash
}
