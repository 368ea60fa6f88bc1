// Tools, as one process: the loomckpt CLI lists and verifies a checkpoint; export writes one safetensors file with
// Hugging Face names and layouts, slice by slice, that a plain-PyTorch GPT-2 (Hugging Face's Conv1D convention) loads
// to reproduce loom's logits; import reads it back into a model bit for bit.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "autograd/autograd.h"
#include "checkpoint/export.h"
#include "checkpoint/safetensors.h"
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

TEST(CheckpointTool, ExportReproducesLogitsInPyTorchAndImportsBack) {
  if (ptest::world()->size() != 1) GTEST_SKIP() << "runs as one process";
  const std::string root = fresh_root("tool_export");
  TrainRun run(Layout::kDDP, false);
  for (int s = 0; s < 2; ++s) run.train_step(s);
  checkpoint::Checkpointer ck(root, ptest::world());
  checkpoint::TrainState st;
  st.step = 2;
  const std::string dir = ck.save(run.target(), st);

  const std::string bin = std::string(LOOM_BINARY_DIR) + "/checkpoint/loomckpt";
  int rc = 0;
  std::string out = run_capture(bin + " list " + root, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("model/transformer.h.2.mlp.c_fc.weight"), std::string::npos) << out;
  EXPECT_NE(out.find("step 2"), std::string::npos) << out;
  out = run_capture(bin + " verify " + dir, &rc);
  EXPECT_EQ(rc, 0) << out;

  // A small chunk size: every tensor is exported in several slices.
  const std::string exported = root + "/model.safetensors";
  auto stats = checkpoint::export_safetensors(dir, exported, 8192);
  EXPECT_LE(stats.max_chunk_bytes, 8192);
  EXPECT_EQ(stats.tensors, static_cast<int64_t>(run.model->named_parameters().size()));
  out = run_capture(bin + " export " + dir + " " + root + "/cli.safetensors", &rc);
  EXPECT_EQ(rc, 0) << out;
  auto a = checkpoint::load_safetensors(exported), b = checkpoint::load_safetensors(root + "/cli.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  EXPECT_EQ(a.at("transformer.h.0.attn.c_attn.weight").sizes(), (Shape{64, 192}));  // Conv1D (in, out)

  ptest::Batch batch = ptest::global_batch(7);
  Tensor logits;
  {
    autograd::NoGradGuard ng;
    logits = run.model->forward(batch.idx);
  }
  const auto cfg = ptest::tiny_gpt2_config();
  const std::string ref = root + "/ref.safetensors";
  checkpoint::save_safetensors(
      ref, {{"input_ids", batch.idx}, {"logits", logits}},
      {{"config", "{\"n_embd\": " + std::to_string(cfg.n_embd) + ", \"n_head\": " + std::to_string(cfg.n_head) +
                      ", \"n_layer\": " + std::to_string(cfg.n_layer) + "}"}});
  out = run_capture("/usr/bin/python3 " + std::string(LOOM_SOURCE_DIR) + "/tests/checkpoint/export_logits_check.py " +
                        exported + " " + ref,
                    &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("export_logits_check: OK"), std::string::npos) << out;

  TrainRun fresh(Layout::kDDP, true);
  checkpoint::import_safetensors(exported, *fresh.model);
  autograd::NoGradGuard ng;
  Tensor again = fresh.model->forward(batch.idx);
  const float* p = logits.data<float>();
  const float* q = again.data<float>();
  for (int64_t i = 0; i < logits.numel(); ++i) ASSERT_EQ(p[i], q[i]) << "logit " << i << " after import";
}

// Llama's Hugging Face layout is loom's (nn.Linear weights (out, in)): names only.
TEST(CheckpointTool, LlamaExportReproducesLogitsInPyTorch) {
  if (ptest::world()->size() != 1) GTEST_SKIP() << "runs as one process";
  const std::string root = fresh_root("tool_export_llama");
  TrainRun run(Layout::kDDP, false, ptest::world(), ptest::Family::kLlama);
  run.train_step(0);
  checkpoint::Checkpointer ck(root, ptest::world());
  const std::string dir = ck.save(run.target(), {});
  const std::string exported = root + "/model.safetensors";
  checkpoint::export_safetensors(dir, exported, 4096);
  ptest::Batch batch = ptest::global_batch(3);
  Tensor logits;
  {
    autograd::NoGradGuard ng;
    logits = run.model->forward(batch.idx);
  }
  const auto c = ptest::tiny_llama_config();
  const std::string cfg =
      "{\"family\": \"llama\", \"n_embd\": " + std::to_string(c.n_embd) + ", \"n_head\": " + std::to_string(c.n_head) +
      ", \"n_kv_head\": " + std::to_string(c.n_kv_head) + ", \"n_layer\": " + std::to_string(c.n_layer) + "}";
  const std::string ref = root + "/ref.safetensors";
  checkpoint::save_safetensors(ref, {{"input_ids", batch.idx}, {"logits", logits}}, {{"config", cfg}});
  int rc = 0;
  const std::string out = run_capture("/usr/bin/python3 " + std::string(LOOM_SOURCE_DIR) +
                                          "/tests/checkpoint/export_logits_check.py " + exported + " " + ref,
                                      &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("export_logits_check: OK"), std::string::npos) << out;
}

}  // namespace
}  // namespace loom::ctest
