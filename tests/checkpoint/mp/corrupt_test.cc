// Bad input: each corruption of a checkpoint gives a clear error naming the file and the tensor (or the keys and shapes
// that differ), on every rank; with fall_back_to_previous the load takes the previous complete checkpoint instead, and
// without it never does.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "checkpoint/h5.h"
#include "tests/checkpoint/mp/common.h"

namespace fs = std::filesystem;

namespace loom::ctest {
namespace {

struct Saved {
  std::string root, step1, step2;
  double eval1 = 0, eval2 = 0;  // loss on the fixed batch at each save
};

// Two checkpoints of a DDP run (steps 1 and 2) under a fresh root.
Saved save_two(const std::string& name) {
  Saved s;
  s.root = fresh_root(name);
  TrainRun run(Layout::kDDP, false);
  checkpoint::Checkpointer ck(s.root, ptest::world());
  checkpoint::TrainState st;
  run.train_step(0);
  st.step = 1;
  s.step1 = ck.save(run.target(), st);
  s.eval1 = run.eval_loss();
  run.train_step(1);
  st.step = 2;
  s.step2 = ck.save(run.target(), st);
  s.eval2 = run.eval_loss();
  return s;
}

// Runs fn on rank 0 only (file surgery), then a barrier.
template <typename F>
void on_rank0(F&& fn) {
  if (ptest::world()->rank() == 0) fn();
  ptest::world()->barrier()->wait();
}

// The error message of loading root into a fresh DDP run ("" when it loaded), and the loss after.
std::string load_error(const std::string& root, checkpoint::LoadOptions o = {}, double* eval = nullptr,
                       int64_t* step = nullptr) {
  TrainRun run(Layout::kDDP, true);
  checkpoint::Checkpointer ck(root, ptest::world());
  try {
    auto st = ck.load(run.target(), o);
    if (step) *step = st.step;
  } catch (const Error& e) {
    return e.what();
  }
  if (eval) *eval = run.eval_loss();
  return "";
}

checkpoint::LoadOptions fall_back() {
  checkpoint::LoadOptions o;
  o.fall_back_to_previous = true;
  return o;
}
checkpoint::LoadOptions explicit_dir(const std::string& dir) {
  checkpoint::LoadOptions o;
  o.dir = dir;
  return o;
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << "message: " << (msg)

TEST(CheckpointCorrupt, TruncatedRankFileNamesFileAndTensor) {
  Saved s = save_two("corrupt_truncated");
  const std::string f = s.step2 + "/rank_00001.h5";
  on_rank0([&] { fs::resize_file(f, fs::file_size(f) / 2); });
  const std::string err = load_error(s.root);
  EXPECT_HAS(err, "rank_00001.h5");
  EXPECT_HAS(err, "tensor model/");
}

TEST(CheckpointCorrupt, ChecksumMismatchNamesFileTensorAndBlock) {
  Saved s = save_two("corrupt_checksum");
  const std::string f = s.step2 + "/rank_00000.h5";
  const std::string dset = "/model/transformer.h.1.mlp.c_fc.weight/0";
  on_rank0([&] {
    const int64_t off = checkpoint::detail::dataset_file_offset(f, dset);
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(off + 100);
    const char junk[4] = {0x12, 0x34, 0x56, 0x78};
    io.write(junk, 4);
  });
  const std::string err = load_error(s.root);
  EXPECT_HAS(err, "checksum mismatch");
  EXPECT_HAS(err, "rank_00000.h5");
  EXPECT_HAS(err, "model/transformer.h.1.mlp.c_fc.weight");
  // Only when asked does the load fall back, to step 1.
  double eval = 0;
  int64_t step = 0;
  EXPECT_EQ(load_error(s.root, fall_back(), &eval, &step), "");
  EXPECT_EQ(step, 1);
  EXPECT_EQ(eval, s.eval1);
}

TEST(CheckpointCorrupt, MissingRankFileNamesFileAndTensor) {
  Saved s = save_two("corrupt_missing");
  on_rank0([&] { fs::remove(s.step2 + "/rank_00001.h5"); });
  const std::string err = load_error(s.root);
  EXPECT_HAS(err, "rank_00001.h5");
  EXPECT_HAS(err, "missing");
  EXPECT_HAS(err, "tensor model/");
}

TEST(CheckpointCorrupt, MetadataOfAnotherModelListsKeysAndShapes) {
  Saved s = save_two("corrupt_other_model");
  // A checkpoint of a Llama (other keys) and one of a wider GPT-2 (same keys, other shapes).
  const std::string other = fresh_root("corrupt_other_model_llama");
  {
    auto llama = ptest::tiny_model(ptest::Family::kLlama);
    checkpoint::Checkpointer ck(other, ptest::world());
    checkpoint::Target t;
    t.module = llama.get();
    t.coords = {ptest::world()->rank(), ptest::world()->size(), 0, 1};
    ck.save(t, {});
  }
  on_rank0([&] {
    fs::copy_file(other + "/step_00000000/metadata.json", s.step2 + "/metadata.json",
                  fs::copy_options::overwrite_existing);
  });
  std::string err = load_error(s.root);
  EXPECT_HAS(err, "another model");
  EXPECT_HAS(err, "missing from the checkpoint: transformer.h.0.attn.c_attn.bias, ");
  EXPECT_HAS(err, "(40 in all)");
  EXPECT_HAS(err, "not in the model: lm_head.weight, model.embed_tokens.weight, ");

  const std::string wide = fresh_root("corrupt_other_model_wide");
  {
    auto cfg = ptest::tiny_gpt2_config();
    cfg.n_embd = 32;
    Generator g(5);
    nn::GPT2 m(cfg, g);
    checkpoint::Checkpointer ck(wide, ptest::world());
    checkpoint::Target t;
    t.module = &m;
    t.coords = {ptest::world()->rank(), ptest::world()->size(), 0, 1};
    ck.save(t, {});
  }
  err = load_error(wide);
  EXPECT_HAS(err, "shapes differ: ");
  EXPECT_HAS(err, "transformer.h.0.attn.c_attn.weight (checkpoint [96, 32], model [192, 64])");
}

TEST(CheckpointCorrupt, DirectoryWithoutCompletionMarker) {
  Saved s = save_two("corrupt_incomplete");
  on_rank0([&] { fs::remove(s.step2 + "/COMPLETE"); });
  std::string err = load_error(s.root);
  EXPECT_HAS(err, "COMPLETE");
  EXPECT_HAS(err, "step_00000002");
  err = load_error(s.root, explicit_dir(s.step2));
  EXPECT_HAS(err, "COMPLETE");
  double eval = 0;
  int64_t step = 0;
  EXPECT_EQ(load_error(s.root, fall_back(), &eval, &step), "");
  EXPECT_EQ(step, 1);
  EXPECT_EQ(eval, s.eval1);
}

}  // namespace
}  // namespace loom::ctest
