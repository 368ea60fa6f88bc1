// Hugging Face weights into loom (checkpoint/hf_import.h), on files that tests/checkpoint/make_hf_model.py writes with
// the `safetensors` library the way transformers' save_pretrained does (config.json, shards + index, GPT-2's Conv1D
// (in, out) weights, the hub's bare GPT-2 names with mask buffers, bf16/f16/f32):
//   HfImport.*    (one process): logits equal a PyTorch forward on the same weights, for GPT-2 and Llama; a config.json
//                 that differs from the model is an error naming the file, the key and both values.
//   HfImportMp.*  (2 ranks): FSDP(2) and TP(2) loaded straight from a sharded file give the loss of the whole model on
//                 one rank, while each FSDP rank reads only about its half of the bytes (counted, and measured in
//                 /proc/self/io).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/autograd.h"
#include "checkpoint/hf_import.h"
#include "checkpoint/safetensors.h"
#include "parallel/tensor_parallel.h"
#include "tensor/ops.h"
#include "tests/checkpoint/mp/common.h"

namespace loom::ctest {
namespace {

std::string run_capture(const std::string& cmd, int* rc) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  while (p && fgets(buf, sizeof buf, p)) out += buf;
  *rc = p ? pclose(p) : -1;
  return out;
}

/// Runs make_hf_model.py (in the project's .venv) with args; fails the test when it fails.
void make_hf_model(const std::string& args) {
  const std::string py = std::string(LOOM_SOURCE_DIR) + "/.venv/bin/python";
  ASSERT_TRUE(std::filesystem::exists(py)) << py << " is missing: run scripts/setup.sh";
  int rc = 0;
  const std::string out = run_capture(py + " " + LOOM_SOURCE_DIR + "/tests/checkpoint/make_hf_model.py " + args, &rc);
  ASSERT_EQ(rc, 0) << out;
}

/// This process's bytes read through read-like system calls (/proc/self/io rchar).
int64_t rchar() {
  std::ifstream in("/proc/self/io");
  std::string key;
  int64_t v = 0;
  while (in >> key >> v)
    if (key == "rchar:") return v;
  return -1;
}

struct Case {
  const char* name;
  const char* args;  // for make_hf_model.py
};

TEST(HfImport, LogitsMatchPyTorch) {
  if (ptest::world()->size() != 1) GTEST_SKIP() << "runs as one process";
  const std::string root = fresh_root("hf_logits");
  const Case cases[] = {
      {"gpt2_sharded_bf16", "--family gpt2 --shards 3 --dtype bf16"},
      {"gpt2_hub_bare_f32", "--family gpt2 --bare"},
      {"gpt2_f16", "--family gpt2 --dtype f16 --shards 2"},
      {"llama_gqa_sharded_bf16", "--family llama --n-head 4 --n-kv-head 2 --shards 4 --dtype bf16"},
      {"llama_untied_f32", "--family llama --n-head 4 --n-kv-head 4 --untied"},
      {"llama_tied_under_head_name", "--family llama --n-head 4 --n-kv-head 2 --head-name --shards 2"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dir = root + "/" + c.name, ref_path = root + "/" + c.name + ".ref.safetensors";
    make_hf_model(dir + " " + c.args + " --ref " + ref_path);
    if (HasFatalFailure()) return;
    Generator gen(5);
    auto model = checkpoint::build_hf_model(dir + "/config.json", gen);
    checkpoint::Target t;
    t.module = model.get();
    const auto stats = checkpoint::load_hf_weights(dir, t);
    EXPECT_TRUE(stats.config_checked);
    auto ref = checkpoint::load_safetensors(ref_path);
    autograd::NoGradGuard ng;
    Tensor logits = model->forward(ref.at("input_ids"));
    const Tensor& want = ref.at("logits");
    ASSERT_EQ(logits.sizes(), want.sizes());
    const auto a = logits.to_vector<float>(), b = want.to_vector<float>();
    double worst = 0, scale = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
      scale = std::max(scale, std::abs(static_cast<double>(b[i])));
    }
    EXPECT_GT(scale, 0.1) << "the reference logits are all near zero: the test would prove nothing";
    EXPECT_LT(worst, 1e-4 * std::max(1.0, scale)) << "max |loom - PyTorch| over " << a.size() << " logits";
  }
}

TEST(HfImport, ConfigMismatchNamesTheKey) {
  if (ptest::world()->size() != 1) GTEST_SKIP() << "runs as one process";
  const std::string root = fresh_root("hf_config");
  make_hf_model(root + "/g --family gpt2 --n-layer 2");
  make_hf_model(root + "/l --family llama --n-head 4 --n-kv-head 2 --config-set rope_theta=500000.0");
  make_hf_model(root +
                "/s --family llama --n-head 4 --n-kv-head 2 --config-set 'rope_scaling={\"rope_type\":\"llama3\"}'");
  if (HasFatalFailure()) return;
  auto expect_error = [](const std::string& dir, const std::shared_ptr<nn::CausalLM>& m,
                         const std::vector<std::string>& parts) {
    checkpoint::Target t;
    t.module = m.get();
    try {
      checkpoint::load_hf_weights(dir, t);
      ADD_FAILURE() << dir << ": loaded into a model that differs from its config.json";
    } catch (const ConfigError& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  Generator gen(1);
  {
    nn::GPT2Config c;
    c.vocab_size = 64, c.n_positions = 16, c.n_embd = 64, c.n_head = 4, c.n_layer = 3;
    expect_error(root + "/g", std::make_shared<nn::GPT2>(c, gen),
                 {root + "/g/config.json", "n_layer is 2", "the model's n_layer is 3", "model.n_layer"});
    c.n_layer = 2;
    c.n_positions = 32;
    expect_error(root + "/g", std::make_shared<nn::GPT2>(c, gen), {"n_positions is 16", "32", "model.seq_len"});
  }
  {
    nn::LlamaConfig c;
    c.vocab_size = 64, c.max_seq_len = 16, c.n_embd = 64, c.n_head = 4, c.n_kv_head = 2, c.n_layer = 2;
    c.intermediate_size = 128;
    c.tie_word_embeddings = true;  // make_hf_model's default, as the file says
    expect_error(root + "/l", std::make_shared<nn::Llama>(c, gen),
                 {"rope_theta is 500000", "the model's rope_theta is 10000", "model.rope_theta"});
    expect_error(root + "/s", std::make_shared<nn::Llama>(c, gen), {"rope_scaling", "llama3"});
    c.n_kv_head = 4;
    expect_error(root + "/s", std::make_shared<nn::Llama>(c, gen), {"num_key_value_heads is 2", "n_kv_head is 4"});
    // A GPT-2 file into a Llama model: the model type.
    expect_error(root + "/g", std::make_shared<nn::Llama>(c, gen), {"model_type is \"gpt2\"", "model.family"});
  }
  // Without config.json the tensors' shapes still have to match: the message names the tensor and both shapes.
  std::filesystem::remove(root + "/g/config.json");
  nn::GPT2Config c;
  c.vocab_size = 64, c.n_positions = 16, c.n_embd = 64, c.n_head = 4, c.n_layer = 2;
  c.vocab_size = 96;
  auto m = std::make_shared<nn::GPT2>(c, gen);
  checkpoint::Target t;
  t.module = m.get();
  try {
    checkpoint::load_hf_weights(root + "/g", t);
    ADD_FAILURE() << "loaded a vocabulary of 64 into one of 96";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("transformer.wte.weight has shape [64, 64]"), std::string::npos) << e.what();
  }
}

// The loss of the model loaded on one rank (whole) and under a layout, on the same batch.
double loss_of(nn::CausalLM& m, const ptest::Batch& b) {
  autograd::NoGradGuard ng;
  return m.loss(b.idx, b.targets).item();
}

TEST(HfImportMp, FsdpAndTpLoadTheirPartsAndMatchOneRank) {
  auto world = ptest::world();
  ASSERT_EQ(world->size(), 2) << "runs on 2 ranks";
  // Sizes chosen so that FSDP's shard boundaries fall inside rows (GPT-2: wte + wpe hold an odd number of rows;
  // Llama: an odd MLP width), which TP cannot split: the TP cases use an even width.
  struct MpCase {
    const char* name;
    const char* args;
    bool fsdp, tp;
  };
  const MpCase cases[] = {
      {"gpt2", "--family gpt2 --n-embd 128 --n-head 4 --vocab 256 --seq 17", true, true},
      {"llama_odd", "--family llama --n-embd 128 --n-head 4 --n-kv-head 2 --inner 255 --vocab 256 --seq 16", true,
       false},
      {"llama", "--family llama --n-embd 128 --n-head 4 --n-kv-head 2 --inner 256 --vocab 256 --seq 16", true, true},
  };
  for (const auto& c : cases) {
    const char* family = c.name;
    SCOPED_TRACE(family);
    const std::string root = fresh_root(std::string("hf_mp_") + family);
    const std::string dir = root + "/hf";
    if (world->rank() == 0) make_hf_model(dir + " " + c.args + " --shards 3 --dtype bf16");
    world->barrier()->wait();
    ASSERT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
    const checkpoint::HfWeights w = checkpoint::HfWeights::open(dir);
    const int64_t total = w.total_bytes();
    ptest::Batch batch = ptest::global_batch(3, 4);
    {
      // global_batch draws tokens below ptest::kVocab (64) < 256: valid ids for this vocabulary.
      Generator g(1);
      auto whole = checkpoint::build_hf_model(dir + "/config.json", g);
      checkpoint::Target t;
      t.module = whole.get();
      const auto s = checkpoint::load_hf_weights(dir, t);
      EXPECT_EQ(s.bytes_read, total) << "one rank holding everything reads everything once";
      const double want = loss_of(*whole, batch);

      // FSDP over both ranks: each reads its shards only.
      if (!c.fsdp) continue;
      Generator g2(2);
      auto model = checkpoint::build_hf_model(dir + "/config.json", g2);
      parallel::FullyShard fsdp(model, world);
      checkpoint::Target ft;
      ft.fsdp = &fsdp;
      const int64_t io0 = rchar();
      const auto fs = checkpoint::load_hf_weights(dir, ft, world);
      const int64_t io = rchar() - io0;
      EXPECT_GT(fs.bytes_read, total / 4) << "rank " << world->rank() << " read too little to hold its shard";
      EXPECT_LT(fs.bytes_read, total * 6 / 10)
          << "rank " << world->rank() << " read " << fs.bytes_read << " of " << total << " bytes: more than its shard";
      EXPECT_LT(io, total * 6 / 10) << "rank " << world->rank() << ": /proc/self/io counted " << io << " bytes read";
      std::printf("[rank %d] %s FSDP(2): read %lld of %lld bytes of tensor data (rchar %lld)\n", world->rank(), family,
                  static_cast<long long>(fs.bytes_read), static_cast<long long>(total), static_cast<long long>(io));
      EXPECT_NEAR(loss_of(*model, batch), want, 1e-5 * std::abs(want)) << "FSDP(2) loss differs from one rank's";

      // TP over both ranks: each reads its split.
      if (!c.tp) continue;
      Generator g3(3);
      auto tp_model = checkpoint::build_hf_model(dir + "/config.json", g3);
      parallel::tensor_parallelize(*tp_model, world);
      checkpoint::Target tt;
      tt.module = tp_model.get();
      tt.coords.tp_rank = world->rank();
      tt.coords.tp_size = 2;
      const auto ts = checkpoint::load_hf_weights(dir, tt, world);
      EXPECT_LT(ts.bytes_read, total) << "a TP rank read the whole model";
      EXPECT_NEAR(loss_of(*tp_model, batch), want, 1e-5 * std::abs(want)) << "TP(2) loss differs from one rank's";
    }
    world->barrier()->wait();
  }
}

TEST(HfImportMp, AFailureOnOneRankFailsEveryRank) {
  auto world = ptest::world();
  ASSERT_EQ(world->size(), 2) << "runs on 2 ranks";
  const std::string root = fresh_root("hf_mp_fail");
  if (world->rank() == 0) make_hf_model(root + "/hf --family gpt2 --shards 2");
  world->barrier()->wait();
  Generator g(1);
  auto model = checkpoint::build_hf_model(root + "/hf/config.json", g);
  checkpoint::Target t;
  t.module = model.get();
  // Rank 1 is given a path that does not exist; rank 0 a good one: both must throw (none goes on alone).
  const std::string path = world->rank() == 0 ? root + "/hf" : root + "/missing";
  try {
    checkpoint::load_hf_weights(path, t, world);
    ADD_FAILURE() << "rank " << world->rank() << " went on although rank 1 failed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(world->rank() == 0 ? "failed on rank 1" : "missing"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace loom::ctest
