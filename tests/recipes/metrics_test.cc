// The pretraining recipe's metrics helpers: JSON lines, the console line, the GPU peak table, the metrics file's
// truncation on resume.
#include "recipes/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

namespace loom::recipes {
namespace {

TEST(Metrics, JsonLineHasEveryFieldAndTheSlowestRank) {
  StepMetrics m;
  m.step = 7;
  m.loss = 2.5;
  m.lr = 1e-3;
  m.grad_norm = 0.75;
  m.tokens_per_s = 1000;
  m.mfu = 0.25;
  m.mem_bytes = 1234;
  m.step_time_s = 0.5;
  m.rank_step_time_s = {0.4, 0.9, 0.5};
  m.eval_loss = 2.75;
  const std::string j = metrics_json(m);
  EXPECT_NE(j.find("\"step\":7,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"loss\":2.5,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"mem_bytes\":1234"), std::string::npos) << j;
  EXPECT_NE(j.find("\"step_time_max_s\":0.9"), std::string::npos) << j;
  EXPECT_NE(j.find("\"step_time_min_s\":0.4"), std::string::npos) << j;
  EXPECT_NE(j.find("\"slowest_rank\":1"), std::string::npos) << j;
  EXPECT_NE(j.find("\"step_time_by_rank\":[0.4,0.9,0.5]"), std::string::npos) << j;
  EXPECT_NE(j.find("\"eval_loss\":2.75}"), std::string::npos) << j;
  EXPECT_EQ(metrics_line_step(j), 7);
}

TEST(Metrics, PeakMemoryPerRankAndItsMaximum) {
  constexpr int64_t MiB = 1 << 20;
  StepMetrics m;
  m.step = 3;
  m.mem_bytes = 1 * MiB;
  m.peak_mem_bytes = 5 * MiB;
  m.rank_peak_mem_bytes = {5 * MiB, 7 * MiB, 6 * MiB};
  const std::string j = metrics_json(m);
  EXPECT_NE(j.find("\"mem_bytes\":1048576,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"peak_mem_bytes\":5242880,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"peak_mem_bytes_max\":7340032,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"peak_mem_rank\":1,"), std::string::npos) << j;
  EXPECT_NE(j.find("\"peak_mem_by_rank\":[5242880,7340032,6291456]"), std::string::npos) << j;
  const std::string s = console_line(m, 10, 1);
  EXPECT_NE(s.find("| mem 1.0 MiB peak 5.0 MiB (max 7.0 MiB r1) |"), std::string::npos) << s;
  // One rank: the maximum is its own peak, and the console shows no "max".
  StepMetrics one;
  one.peak_mem_bytes = 4 * MiB;
  one.rank_peak_mem_bytes = {4 * MiB};
  EXPECT_NE(metrics_json(one).find("\"peak_mem_bytes_max\":4194304,"), std::string::npos) << metrics_json(one);
  EXPECT_EQ(console_line(one, 10, 1).find("max"), std::string::npos) << console_line(one, 10, 1);
  // Peaks not gathered: the maximum falls back to rank 0's.
  StepMetrics none;
  none.peak_mem_bytes = 2 * MiB;
  EXPECT_NE(metrics_json(none).find("\"peak_mem_bytes_max\":2097152,\"peak_mem_rank\":0,"), std::string::npos)
      << metrics_json(none);
}

TEST(Metrics, NonFiniteNumbersBecomeNull) {
  StepMetrics m;
  m.loss = std::numeric_limits<double>::quiet_NaN();
  m.grad_norm = std::numeric_limits<double>::infinity();
  const std::string j = metrics_json(m);
  EXPECT_NE(j.find("\"loss\":null"), std::string::npos) << j;
  EXPECT_NE(j.find("\"grad_norm\":null"), std::string::npos) << j;
}

TEST(Metrics, ConsoleLineNamesTheStraggler) {
  StepMetrics m;
  m.step = 40;
  m.loss = 2.1;
  m.rank_step_time_s = {0.047, 0.049, 0.120};
  m.step_time_s = 0.121;
  m.mfu = 0.121;
  const std::string s = console_line(m, 300, 12);
  EXPECT_NE(s.find("step 40/300"), std::string::npos) << s;
  EXPECT_NE(s.find("slowest r2"), std::string::npos) << s;
  EXPECT_NE(s.find("MFU 12.1%"), std::string::npos) << s;
  EXPECT_NE(s.find("ETA 12s"), std::string::npos) << s;
}

TEST(Metrics, TracedStepShowsExposedCommunication) {
  StepMetrics m;
  m.step = 3;
  EXPECT_EQ(metrics_json(m).find("comm_"), std::string::npos);  // untraced steps carry none
  EXPECT_EQ(console_line(m, 10, 1).find("hidden"), std::string::npos);
  m.comm = trace::ExposedComm{0.02, 0.005, 0.015, 0.75};
  const std::string j = metrics_json(m);
  EXPECT_NE(j.find("\"comm_s\":0.02,\"comm_blocked_s\":0.005,\"comm_hidden_s\":0.015,\"comm_hidden_frac\":0.75"),
            std::string::npos)
      << j;
  EXPECT_NE(console_line(m, 10, 1).find("| comm 20 ms, blocked 5 ms, 75% hidden"), std::string::npos)
      << console_line(m, 10, 1);
}

TEST(Metrics, GpuPeakTable) {
  EXPECT_DOUBLE_EQ(*gpu_peak_flops("NVIDIA H100 80GB HBM3", "bf16"), 989e12);
  EXPECT_DOUBLE_EQ(*gpu_peak_flops("NVIDIA H100 PCIe", "bf16"), 756e12);
  EXPECT_DOUBLE_EQ(*gpu_peak_flops("NVIDIA A100-SXM4-80GB", "bf16"), 312e12);
  EXPECT_FALSE(gpu_peak_flops("Some GPU", "bf16").has_value());
  EXPECT_FALSE(gpu_peak_flops("H100", "f8").has_value());
}

TEST(Metrics, CpuPeakIsMeasuredAndPositive) {
  const double p = measure_cpu_peak_flops();
  EXPECT_GT(p, 1e8);  // any CPU of this century does 0.1 GFLOP/s through a BLAS
}

TEST(Metrics, Formatting) {
  EXPECT_EQ(format_duration(3725), "1h02m");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(0.4), "0.4s");
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(3 << 20), "3.0 MiB");
  EXPECT_EQ(format_count(21300), "21.3k");
  EXPECT_EQ(progress_bar(5, 10, 1.5, 3, 10).substr(0, 12), "[#####.....]");
}

TEST(Metrics, FileKeepsStepsUpToTheResumePoint) {
  const std::string path = std::filesystem::temp_directory_path() / "loom_metrics_test.jsonl";
  {
    MetricsFile f(path, std::nullopt);
    for (int s = 1; s <= 5; ++s) f.write("{\"step\":" + std::to_string(s) + ",\"loss\":1}");
  }
  {
    MetricsFile f(path, 3);  // resumed from the checkpoint of step 3: steps 4 and 5 will be logged again
    f.write("{\"step\":4,\"loss\":0.5}");
  }
  std::ifstream in(path);
  std::vector<int64_t> steps;
  std::string line;
  while (std::getline(in, line)) steps.push_back(*metrics_line_step(line));
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4}));
  {
    MetricsFile f(path, std::nullopt);  // a fresh run starts an empty file
  }
  std::ifstream again(path);
  EXPECT_FALSE(std::getline(again, line));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace loom::recipes
