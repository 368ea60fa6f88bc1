// Crash safety. CheckpointCrash runs as one process: it starts a 2-rank job (CheckpointCrashWorker, under mpirun) that
// completes a checkpoint at step 2, then starts one at step 4 with the test hook pausing rank 1 mid-file, and kills
// that rank with SIGKILL. The step-2 checkpoint must stay `latest`, complete and loadable; the partial one is never
// picked. A file-size limit (RLIMIT_FSIZE, the kernel's EFBIG standing in for a full disk) makes a save fail loudly
// with the previous checkpoint intact.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/checkpoint/mp/common.h"

namespace fs = std::filesystem;

namespace loom::ctest {
namespace {

const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

checkpoint::CheckpointOptions keep_last(int k) {
  checkpoint::CheckpointOptions o;
  o.keep_last = k;
  return o;
}

// The worker half: only runs when the orchestrating test started it (every rank sees the same variable).
TEST(CheckpointCrashWorker, SaveThenPauseRankOneMidSave) {
  const char* root_env = std::getenv("LOOM_CKPT_CRASH_ROOT");
  if (!root_env) GTEST_SKIP() << "started by CheckpointCrash.KilledRankLeavesPreviousCheckpointLatest";
  const std::string root = root_env;
  TrainRun run(Layout::kDDP, false);
  checkpoint::Checkpointer ck(root, ptest::world(), keep_last(2));
  for (int s = 0; s < 2; ++s) run.train_step(s);
  checkpoint::TrainState st;
  st.step = 2;
  st.data_position = {{"next_step", 2}};
  ck.save(run.target(), st);
  const double eval = run.eval_loss();
  if (ptest::world()->rank() == 0) std::ofstream(root + "/eval_step2.txt") << std::hexfloat << eval;
  for (int s = 2; s < 4; ++s) run.train_step(s);
  setenv("LOOM_CKPT_TEST_PAUSE_RANK", "1", 1);
  st.step = 4;
  ck.save(run.target(), st);  // rank 1 never returns: the test kills it
  FAIL() << "the save at step 4 should not complete";
}

TEST(CheckpointCrash, KilledRankLeavesPreviousCheckpointLatest) {
  if (ptest::world()->size() != 1) GTEST_SKIP() << "runs as one process (it starts its own 2-rank job)";
  const std::string root = fresh_root("crash");
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setpgid(0, 0);
    setenv("LOOM_CKPT_CRASH_ROOT", root.c_str(), 1);
    setenv("MASTER_PORT", env_or("LOOM_CKPT_CRASH_PORT", "29901"), 1);
    setenv("LOOM_TEST_BACKEND", "gloo", 1);
    execlp("mpirun", "mpirun", "--oversubscribe", "-np", "2", self.c_str(), "--gtest_filter=CheckpointCrashWorker.*",
           static_cast<char*>(nullptr));
    _exit(127);
  }
  const std::string pid_file = root + "/paused_rank_1.pid";
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  bool exited = false;
  while (!fs::exists(pid_file) && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120)) {
    if (waitpid(child, &status, WNOHANG) == child) {
      exited = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_FALSE(exited) << "the worker job ended before pausing (status " << status << ")";
  ASSERT_TRUE(fs::exists(pid_file)) << "rank 1 never reached the pause hook";
  pid_t rank1 = 0;
  std::ifstream(pid_file) >> rank1;
  ASSERT_GT(rank1, 0);
  ASSERT_EQ(kill(rank1, SIGKILL), 0);
  // mpirun aborts the job when a rank dies; make sure it is gone within a minute either way.
  for (int i = 0; i < 600 && !exited; ++i) {
    if (waitpid(child, &status, WNOHANG) == child) exited = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!exited) {
    kill(-child, SIGKILL);
    waitpid(child, &status, 0);
  }

  EXPECT_EQ(checkpoint::latest_checkpoint(root), root + "/step_00000002");
  EXPECT_FALSE(fs::exists(root + "/step_00000004")) << "a partial checkpoint was renamed into place";
  EXPECT_TRUE(fs::exists(root + "/step_00000004.tmp/rank_00001.h5")) << "the crash did not happen mid-save";
  EXPECT_FALSE(fs::exists(root + "/step_00000004.tmp/COMPLETE"));
  EXPECT_THROW(checkpoint::read_metadata(root + "/step_00000004.tmp"), IoError);
  ASSERT_EQ(checkpoint::complete_checkpoints(root).size(), 1u);

  // The previous checkpoint loads (here on one rank: the 2-rank DDP checkpoint resharded) and gives the loss the job
  // measured right after saving it.
  double saved_eval = 0;
  {
    std::ifstream f(root + "/eval_step2.txt");
    std::string text;
    f >> text;
    saved_eval = std::strtod(text.c_str(), nullptr);
  }
  TrainRun run(Layout::kDDP, true);
  checkpoint::Checkpointer ck(root, ptest::world(), keep_last(1));
  checkpoint::TrainState st = ck.load(run.target());
  EXPECT_EQ(st.step, 2);
  EXPECT_NEAR(run.eval_loss(), saved_eval, 1e-6 * std::abs(saved_eval));

  // The next save clears the partial directory and, with keep_last 1, the old checkpoint once the new one is whole.
  st.step = 6;
  ck.save(run.target(), st);
  EXPECT_FALSE(fs::exists(root + "/step_00000004.tmp"));
  EXPECT_FALSE(fs::exists(root + "/step_00000002"));
  EXPECT_EQ(checkpoint::latest_checkpoint(root), root + "/step_00000006");
}

TEST(CheckpointCrash, FullDiskFailsTheSaveAndKeepsThePreviousCheckpoint) {
  if (ptest::world()->size() != 1) GTEST_SKIP() << "runs as one process (it limits the process's file size)";
  const std::string root = fresh_root("full_disk");
  TrainRun run(Layout::kDDP, false);
  run.train_step(0);
  checkpoint::Checkpointer ck(root, ptest::world());
  checkpoint::TrainState st;
  st.step = 1;
  ck.save(run.target(), st);
  const double eval = run.eval_loss();
  run.train_step(1);
  struct rlimit old_limit {};
  getrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, SIG_IGN);  // writes past the limit fail with EFBIG instead of killing the process
  struct rlimit small = old_limit;
  small.rlim_cur = 64 << 10;  // far less than the model and its AdamW state
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  st.step = 2;
  bool threw = false;
  try {
    ck.save(run.target(), st);
  } catch (const IoError& e) {
    threw = true;
    EXPECT_NE(std::string(e.what()).find("rank_00000.h5"), std::string::npos) << e.what();
  }
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, SIG_DFL);
  EXPECT_TRUE(threw) << "a save that could not write its file did not fail";
  EXPECT_EQ(checkpoint::latest_checkpoint(root), root + "/step_00000001");
  TrainRun fresh(Layout::kDDP, true);
  checkpoint::Checkpointer ck2(root, ptest::world());
  EXPECT_EQ(ck2.load(fresh.target()).step, 1);
  EXPECT_EQ(fresh.eval_loss(), eval);
}

// An async save that cannot write fails at the next wait (or save), never silently, and leaves `latest` alone.
TEST(CheckpointCrash, FailedAsyncSaveIsReportedAtTheNextWait) {
  if (ptest::world()->size() != 1) GTEST_SKIP() << "runs as one process (it limits the process's file size)";
  const std::string root = fresh_root("full_disk_async");
  TrainRun run(Layout::kDDP, false);
  checkpoint::CheckpointOptions o;
  o.async = true;
  o.staging_bytes = 8192;
  checkpoint::Checkpointer ck(root, ptest::world(), o);
  checkpoint::TrainState st;
  st.step = 1;
  ck.save(run.target(), st);
  ck.wait();
  struct rlimit old_limit {};
  getrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old_limit;
  small.rlim_cur = 64 << 10;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  st.step = 2;
  ck.save(run.target(), st);  // returns after the snapshot; the thread fails
  EXPECT_THROW(ck.wait(), IoError);
  setrlimit(RLIMIT_FSIZE, &old_limit);
  signal(SIGXFSZ, SIG_DFL);
  EXPECT_EQ(checkpoint::latest_checkpoint(root), root + "/step_00000001");
  st.step = 3;
  ck.save(run.target(), st);  // the error was reported once; saving works again
  ck.wait();
  EXPECT_EQ(checkpoint::latest_checkpoint(root), root + "/step_00000003");
  EXPECT_FALSE(fs::exists(root + "/step_00000002.tmp")) << "the failed save's directory was not cleared";
}

TEST(CheckpointCrash, KeepLastRemovesOnlyOlderCompleteCheckpoints) {
  if (ptest::world()->size() != 1) GTEST_SKIP() << "runs as one process";
  const std::string root = fresh_root("keep_last");
  TrainRun run(Layout::kDDP, false);
  checkpoint::Checkpointer ck(root, ptest::world(), keep_last(2));
  for (int s = 1; s <= 4; ++s) {
    checkpoint::TrainState st;
    st.step = s;
    ck.save(run.target(), st);
  }
  auto all = checkpoint::complete_checkpoints(root);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0], root + "/step_00000003");
  EXPECT_EQ(all[1], root + "/step_00000004");
  EXPECT_EQ(checkpoint::latest_checkpoint(root), root + "/step_00000004");
}

}  // namespace
}  // namespace loom::ctest
