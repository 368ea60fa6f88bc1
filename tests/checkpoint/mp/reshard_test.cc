// Resharding: a checkpoint saved on one layout loads on another by reading the overlapping pieces (every block read is
// checksummed). CheckpointReshardSave4 (4 ranks, FSDP) writes <build>/checkpoint_mp_tmp/reshard4 with the loss on a
// fixed batch right before saving; CheckpointReshardLoad2 (2 ranks, run after it) loads it into FSDP on 2 ranks, then
// saves FSDP(2) and loads that into TP(2). The loss on the fixed batch after each load equals the loss before the save
// within 1e-6 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "tests/checkpoint/mp/common.h"

namespace loom::ctest {
namespace {

std::string hex(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%a", v);
  return buf;
}

std::string reshard_root() { return std::string(LOOM_BINARY_DIR) + "/checkpoint_mp_tmp/reshard4"; }

TEST(CheckpointReshardSave4, FsdpFourRanksSavesTrainedState) {
  ASSERT_EQ(ptest::world()->size(), 4) << "run on 4 ranks";
  const std::string root = fresh_root("reshard4");
  TrainRun run(Layout::kFSDP, false);
  for (int s = 0; s < 3; ++s) run.train_step(s);
  checkpoint::TrainState st;
  st.step = 3;
  st.data_position = {{"samples_seen", 3 * ptest::kBatch}};
  const double before = run.eval_loss();
  checkpoint::Checkpointer ck(root, ptest::world());
  ck.save(run.target(), st);
  run.train_step(3);
  // For the loading job: the loss right before saving and the loss two steps later.
  st.config = hex(before) + " " + hex(run.train_step(4));
  if (ptest::world()->rank() == 0) {
    FILE* f = std::fopen((root + "/losses.txt").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(st.config.c_str(), f);
    std::fclose(f);
  }
}

// FSDP(2) x TP(2) on the same 4 ranks -> FSDP(4): every TP box and FSDP range meets another layout's.
TEST(CheckpointReshardSave4, FsdpTpToFsdpFourKeepsTheLoss) {
  ASSERT_EQ(ptest::world()->size(), 4) << "run on 4 ranks";
  const std::string root = fresh_root("reshard_fsdptp");
  double before = 0;
  {
    TrainRun run(Layout::kFsdpTp, false);
    for (int s = 0; s < 3; ++s) run.train_step(s);
    before = run.eval_loss();
    checkpoint::Checkpointer ck(root, ptest::world());
    checkpoint::TrainState st;
    st.step = 3;
    st.config = hex(before);
    ck.save(run.target(), st);
  }
  TrainRun run(Layout::kFSDP, true);
  checkpoint::Checkpointer ck(root, ptest::world());
  ck.load(run.target());
  EXPECT_NEAR(run.eval_loss(), before, 1e-6 * std::abs(before));
}

// The FSDP(2) x TP(2) checkpoint of the 4-rank job -> DDP on 2 ranks (a different world size as well).
TEST(CheckpointReshardLoad2, FsdpTpFourToDdpTwoKeepsTheLoss) {
  ASSERT_EQ(ptest::world()->size(), 2) << "run on 2 ranks";
  const std::string root = std::string(LOOM_BINARY_DIR) + "/checkpoint_mp_tmp/reshard_fsdptp";
  ASSERT_FALSE(checkpoint::latest_checkpoint(root).empty()) << "run checkpoint_mp_reshard_save4_np4 first";
  TrainRun run(Layout::kDDP, true);
  checkpoint::Checkpointer ck(root, ptest::world());
  checkpoint::TrainState st = ck.load(run.target());
  const double want = std::strtod(st.config.c_str(), nullptr);
  EXPECT_NEAR(run.eval_loss(), want, 1e-6 * std::abs(want));
}

TEST(CheckpointReshardLoad2, FsdpFourToFsdpTwoKeepsTheLoss) {
  ASSERT_EQ(ptest::world()->size(), 2) << "run on 2 ranks";
  const std::string root = reshard_root();
  ASSERT_FALSE(checkpoint::latest_checkpoint(root).empty())
      << "no checkpoint under " << root << ": run checkpoint_mp_reshard_save4_np4 first";
  TrainRun run(Layout::kFSDP, true);
  checkpoint::Checkpointer ck(root, ptest::world());
  checkpoint::TrainState st = ck.load(run.target());
  EXPECT_EQ(st.saved_dp_size, 4);
  EXPECT_EQ(st.step, 3);
  double want = 0, want_next = 0;
  {
    FILE* f = std::fopen((root + "/losses.txt").c_str(), "r");
    ASSERT_NE(f, nullptr);
    char a[64] = {}, b[64] = {};
    ASSERT_EQ(std::fscanf(f, "%63s %63s", a, b), 2);
    std::fclose(f);
    want = std::strtod(a, nullptr);
    want_next = std::strtod(b, nullptr);
  }
  EXPECT_NEAR(run.eval_loss(), want, 1e-6 * std::abs(want));
  // The optimizer state came along: two steps later the loss is the 4-rank job's (up to the reduction order), which
  // zeroed AdamW moments would not give.
  run.train_step(3);
  EXPECT_NEAR(run.train_step(4), want_next, 1e-5 * std::abs(want_next));
}

TEST(CheckpointReshardLoad2, FsdpTwoToTensorParallelTwoKeepsTheLoss) {
  ASSERT_EQ(ptest::world()->size(), 2) << "run on 2 ranks";
  const std::string root = fresh_root("reshard_fsdp2_tp2");
  double before = 0, fsdp_next = 0;
  {
    TrainRun run(Layout::kFSDP, false);
    for (int s = 0; s < 3; ++s) run.train_step(s);
    before = run.eval_loss();
    checkpoint::Checkpointer ck(root, ptest::world());
    checkpoint::TrainState st;
    st.step = 3;
    ck.save(run.target(), st);
    run.train_step(3);
    fsdp_next = run.train_step(4);
  }
  TrainRun tp(Layout::kTP, true);
  checkpoint::Checkpointer ck(root, ptest::world());
  ck.load(tp.target());
  EXPECT_NEAR(tp.eval_loss(), before, 1e-6 * std::abs(before));
  // Two more steps: the second loss depends on the AdamW moments loaded into the TP layout's local shapes.
  tp.train_step(3);
  EXPECT_NEAR(tp.train_step(4), fsdp_next, 1e-4 * std::abs(fsdp_next));
}

}  // namespace
}  // namespace loom::ctest

namespace loom::ctest {
namespace {

// One layout saves after three steps, another loads: the loss on the fixed batch is the same within 1e-6.
void save_then_load(Layout from, Layout to, const std::string& name) {
  const std::string root = fresh_root(name);
  double before = 0;
  {
    TrainRun run(from, false);
    for (int s = 0; s < 3; ++s) run.train_step(s);
    before = run.eval_loss();
    checkpoint::Checkpointer ck(root, ptest::world());
    checkpoint::TrainState st;
    st.step = 3;
    ck.save(run.target(), st);
  }
  TrainRun run(to, true);
  checkpoint::Checkpointer ck(root, ptest::world());
  ck.load(run.target());
  EXPECT_NEAR(run.eval_loss(), before, 1e-6 * std::abs(before));
}

TEST(CheckpointReshardLoad2, DdpTwoToFsdpTwoKeepsTheLoss) { save_then_load(Layout::kDDP, Layout::kFSDP, "ddp_fsdp"); }
TEST(CheckpointReshardLoad2, TpTwoToDdpTwoKeepsTheLoss) { save_then_load(Layout::kTP, Layout::kDDP, "tp_ddp"); }

}  // namespace
}  // namespace loom::ctest
