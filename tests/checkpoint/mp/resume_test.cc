// Bit-exact resume on the same layout: 10 steps straight equal 5 steps, a save, fresh objects (new model with other
// weights, new wrapper, optimizer, schedule and generator), a load and 5 more steps — every loss bit for bit.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "tests/checkpoint/mp/common.h"

namespace loom::ctest {
namespace {

void resume_case(Layout layout, const std::string& name, ptest::Family family = ptest::Family::kGPT2,
                 const std::vector<std::string>& freeze = {}) {
  const std::string root = fresh_root(name);
  std::vector<double> straight;
  {
    TrainRun a(layout, false, ptest::world(), family, freeze);
    for (int s = 0; s < 10; ++s) straight.push_back(a.train_step(s));
  }
  {
    TrainRun b(layout, false, ptest::world(), family, freeze);
    for (int s = 0; s < 5; ++s) ASSERT_EQ(b.train_step(s), straight[s]) << "the two runs diverge before any save";
    checkpoint::Checkpointer ck(root, ptest::world());
    checkpoint::TrainState st;
    st.step = 5;
    st.data_position = {{"next_step", 5}, {"samples_seen", 5 * ptest::kBatch}};
    st.config = "model: tiny-gpt2\nlr: 0.01\n";
    ck.save(b.target(), st);
  }
  TrainRun c(layout, true, ptest::world(), family, freeze);
  const double before = c.eval_loss();
  checkpoint::Checkpointer ck(root, ptest::world());
  checkpoint::TrainState st = ck.load(c.target());
  EXPECT_EQ(st.step, 5);
  EXPECT_EQ(st.data_position.at("next_step"), 5);
  EXPECT_EQ(st.data_position.at("samples_seen"), 5 * ptest::kBatch);
  EXPECT_EQ(st.config, "model: tiny-gpt2\nlr: 0.01\n");
  EXPECT_EQ(st.saved_dp_size, layout == Layout::kTP ? 1 : ptest::world()->size());
  EXPECT_EQ(c.sched->current_step(), 5);
  EXPECT_NE(c.eval_loss(), before) << "the load changed nothing";
  for (int s = static_cast<int>(st.data_position.at("next_step")); s < 10; ++s)
    EXPECT_EQ(c.train_step(s), straight[s]) << "step " << s << " after resuming at step 5";

  // The files are plain HDF5: h5py alone reads every piece, checks its attributes and CRC32C and reassembles the
  // tensors (Debian's python3-h5py).
  if (ptest::world()->rank() == 0) {
    const std::string cmd = "/usr/bin/python3 " + std::string(LOOM_SOURCE_DIR) + "/tests/checkpoint/h5py_check.py " +
                            checkpoint::latest_checkpoint(root);
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  ptest::world()->barrier()->wait();
}

// Async save: the snapshot is taken at save(); training goes on (changing every parameter and moment) while the
// background thread streams the snapshot through a staging buffer far smaller than the state, chunk by chunk.
// A test hook holds this rank's writer before its first piece until five more training steps have run (or 60 s
// passed), then slows it by 2 s: the writer must see those steps done while its file is still being written, and
// save() must have blocked the training thread for a small part of the write. A synchronous save fails both: its
// writer waits out the 60 s having seen no step, and save() blocks for all of it.
TEST(CheckpointResume, FsdpAsyncSaveWhileTrainingResumesExactly) {
  using namespace std::chrono_literals;
  const std::string root = fresh_root("resume_fsdp_async");
  std::vector<double> straight;
  {
    TrainRun a(Layout::kFSDP, false);
    for (int s = 0; s < 10; ++s) straight.push_back(a.train_step(s));
  }
  {
    TrainRun b(Layout::kFSDP, false);
    for (int s = 0; s < 5; ++s) b.train_step(s);
    constexpr int kStepsDuringWrite = 5;
    std::mutex mu;
    std::condition_variable cv;
    int steps_done = 0;             // training steps after save() returned (training thread)
    int steps_seen_by_writer = -1;  // steps_done when the writer went on past its first piece
    checkpoint::CheckpointOptions o;
    o.async = true;
    o.staging_bytes = 4096;  // 1024 floats: most pieces pass through it in several chunks
    o.test_write_hook = [&] {
      std::unique_lock<std::mutex> lk(mu);
      if (steps_seen_by_writer >= 0) return;  // only the first piece waits
      cv.wait_for(lk, 60s, [&] { return steps_done >= kStepsDuringWrite; });
      steps_seen_by_writer = steps_done;
      lk.unlock();
      std::this_thread::sleep_for(2s);  // a slow disk: the write takes at least 2 s more
    };
    checkpoint::Checkpointer ck(root, ptest::world(), o);
    checkpoint::TrainState st;
    st.step = 5;
    st.data_position = {{"next_step", 5}};
    ptest::world()->barrier()->wait();  // enter save() together: its blocking time is not a wait for the slower rank
    ck.save(b.target(), st);
    for (int s = 5; s < 10; ++s) {
      EXPECT_EQ(b.train_step(s), straight[s]);
      EXPECT_EQ(checkpoint::latest_checkpoint(root), "") << "step " << s << ": the save completed before training";
      {
        std::lock_guard<std::mutex> lk(mu);
        ++steps_done;
      }
      cv.notify_all();
    }
    ck.wait();
    EXPECT_EQ(steps_seen_by_writer, kStepsDuringWrite)
        << "the training steps after save() did not run while the write was in progress (is the save synchronous?)";
    // The write took >= 2 s (the hook) plus five training steps; save() only snapshots the state (a small model).
    EXPECT_GE(ck.last_total_seconds(), 2.0);
    EXPECT_LT(ck.last_blocking_seconds(), 0.25 * ck.last_total_seconds())
        << "save() blocked training for " << ck.last_blocking_seconds() << " s of a " << ck.last_total_seconds()
        << " s write";
    ptest::world()->barrier()->wait();  // rank 0 committed before the others look
  }
  EXPECT_EQ(checkpoint::latest_checkpoint(root), root + "/step_00000005");
  TrainRun c(Layout::kFSDP, true);
  checkpoint::Checkpointer ck(root, ptest::world());
  checkpoint::TrainState st = ck.load(c.target());
  for (int s = 5; s < 10; ++s) EXPECT_EQ(c.train_step(s), straight[s]) << "step " << s << " after an async save";
}

TEST(CheckpointResume, DdpTenStepsEqualFiveSavedResumedFive) { resume_case(Layout::kDDP, "resume_ddp"); }
TEST(CheckpointResume, FsdpTenStepsEqualFiveSavedResumedFive) { resume_case(Layout::kFSDP, "resume_fsdp"); }
TEST(CheckpointResume, TpTenStepsEqualFiveSavedResumedFive) { resume_case(Layout::kTP, "resume_tp"); }
// Frozen embeddings (and the tied head), a wholly frozen first block and every attention c_attn frozen: the checkpoint
// holds the frozen parameters (the perturbed run gets them back only from it) and optimizer state for the trainable
// ones only; resuming continues bit for bit.
void frozen_resume_case(Layout layout, const std::string& name) {
  const std::vector<std::string> freeze = {"transformer.w?e.weight", "transformer.h.0.*",
                                           "transformer.h.*.attn.c_attn.*"};
  resume_case(layout, name, ptest::Family::kGPT2, freeze);
  if (ptest::world()->rank() == 0) {
    std::ifstream in(checkpoint::latest_checkpoint(std::string(LOOM_BINARY_DIR) + "/checkpoint_mp_tmp/" + name) +
                     "/metadata.json");
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string md = ss.str();
    ASSERT_FALSE(md.empty());
    auto has = [&](const std::string& tensor) { return md.find("\"" + tensor + "\"") != std::string::npos; };
    for (const char* frozen : {"transformer.wte.weight", "transformer.h.0.mlp.c_fc.weight",
                               "transformer.h.2.attn.c_attn.bias", "transformer.h.0.ln_1.weight"}) {
      EXPECT_TRUE(has(std::string("model/") + frozen)) << frozen << " is not in the checkpoint";
      EXPECT_FALSE(has(std::string("optim/exp_avg/") + frozen)) << frozen << " has optimizer state";
      EXPECT_FALSE(has(std::string("optim/exp_avg_sq/") + frozen)) << frozen << " has optimizer state";
    }
    for (const char* trainable :
         {"transformer.h.1.mlp.c_fc.weight", "transformer.h.2.attn.c_proj.bias", "transformer.ln_f.weight"}) {
      EXPECT_TRUE(has(std::string("model/") + trainable)) << trainable;
      EXPECT_TRUE(has(std::string("optim/exp_avg/") + trainable)) << trainable << " has no optimizer state";
    }
  }
  ptest::world()->barrier()->wait();
}

TEST(CheckpointResume, DdpWithFrozenParametersResumesExactly) { frozen_resume_case(Layout::kDDP, "resume_frozen_ddp"); }
TEST(CheckpointResume, FsdpWithFrozenParametersResumesExactly) {
  frozen_resume_case(Layout::kFSDP, "resume_frozen_fsdp");
}
TEST(CheckpointResume, TpWithFrozenParametersResumesExactly) { frozen_resume_case(Layout::kTP, "resume_frozen_tp"); }

TEST(CheckpointResume, LlamaFsdpTenStepsEqualFiveSavedResumedFive) {
  resume_case(Layout::kFSDP, "resume_llama_fsdp", ptest::Family::kLlama);
}

}  // namespace
}  // namespace loom::ctest
