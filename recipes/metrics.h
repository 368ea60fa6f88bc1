// What the pretraining recipe shows and records per step: the device's peak FLOP/s for MFU (a table for GPUs, a
// short sgemm timing on the CPU), one JSON line per step for the metrics file, the console line, the progress bar and
// human-readable durations and sizes.
#pragma once

#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "tensor/trace_json.h"

namespace loom::recipes {

/// Dense peak FLOP/s of a GPU model for a compute precision ("bf16" or "f32"), from the vendors' data sheets
/// (tensor-core dense, no sparsity; f32 means TF32 tensor cores where the GPU has them):
///   H100 SXM / H200: bf16 989 TFLOP/s, tf32 494;  H100 PCIe: bf16 756, tf32 378;  A100: bf16 312, tf32 156;
///   L40S: bf16 362, tf32 183;  A10G: bf16 70 (approx.), tf32 35;  V100: fp16 125, f32 15.7.
/// `name` is matched case-insensitively by substring ("NVIDIA H100 80GB HBM3" -> H100 SXM). Returns nullopt for an
/// unknown GPU or precision.
std::optional<double> gpu_peak_flops(const std::string& name, const std::string& precision);

/// Measures this process's f32 matrix-multiply throughput on the CPU (FLOP/s): a few 384x384 sgemms through loom's
/// BLAS with the current thread count, best of several runs, about 0.1 s. Used as the CPU's "peak" for MFU, so an MFU
/// near 100% means the run is as fast as the BLAS on this core count.
double measure_cpu_peak_flops();

/// One optimizer step as logged.
struct StepMetrics {
  int64_t step = 0;            // steps completed (1-based: the first step logged is 1)
  double loss = 0;             // mean training loss of the step over micro-batches and data-parallel ranks
  double lr = 0;               // learning rate the step used
  double grad_norm = 0;        // total gradient norm before clipping
  double tokens_per_s = 0;     // global tokens of the step / wall time of the step
  double mfu = 0;              // model FLOPs utilisation in [0, 1]; 0 when the peak is unknown
  int64_t mem_bytes = 0;       // tensor memory in use on rank 0 after the step (the compute device's)
  int64_t peak_mem_bytes = 0;  // rank 0's largest tensor memory in use at any point of the step
  std::vector<int64_t> rank_peak_mem_bytes;  // every rank's peak of the step (empty: only rank 0's is known)
  double step_time_s = 0;                    // rank 0's wall time of the step
  std::vector<double> rank_step_time_s;      // every rank's own step time (DDP: without waiting on the all-reduce)
  std::optional<double> eval_loss;           // when the step ran an evaluation
  // rank 0's exposed communication, when the step was traced (logging.trace_steps)
  std::optional<trace::ExposedComm> comm;
};

/// The step as one line of JSON (no trailing newline): step, loss, lr, grad_norm, tokens_per_s, mfu, mem_bytes,
/// peak_mem_bytes, peak_mem_bytes_max and peak_mem_rank (the largest peak over ranks and its rank; rank 0's peak when
/// no per-rank peaks are known), peak_mem_by_rank (omitted beyond 64 ranks), step_time_s, step_time_max_s,
/// step_time_min_s, slowest_rank, step_time_by_rank (omitted beyond 64 ranks) and eval_loss when present, comm_s,
/// comm_blocked_s, comm_hidden_s and comm_hidden_frac when the step was traced. Non-finite numbers are written as null
/// (JSON has no NaN).
std::string metrics_json(const StepMetrics& m);

/// The console line: "step 40/300 | loss 2.1034 | lr 2.9e-03 | grad norm 0.512 | 21.3k tok/s | MFU 12.1% |
/// mem 18.2 MiB peak 61.0 MiB (max 61.3 MiB r1) | step 48 ms (ranks 47-49 ms, slowest r1) | ETA 12s" (mem: in use
/// after the step; peak: rank 0's peak during the step; max: the largest peak over the ranks, shown with 2+ ranks); a
/// traced step adds "| comm 12 ms, blocked 3 ms, 75% hidden".
std::string console_line(const StepMetrics& m, int64_t total_steps, double eta_s);

/// A one-line progress bar for a terminal (no newline): "[#####.....]  40/300  13% | loss 2.10 | ETA 12s".
std::string progress_bar(int64_t step, int64_t total_steps, double loss, double eta_s, int width = 30);

/// "1h02m", "3m05s", "12s", "0.4s".
std::string format_duration(double seconds);
/// "512 B", "18.2 MiB", "3.10 GiB".
std::string format_bytes(int64_t bytes);
/// "950", "21.3k", "1.25M".
std::string format_count(double v);

/// The JSONL metrics file of a run. Opening for a fresh run truncates it; opening to resume at step s keeps the lines
/// of steps <= s and drops the later ones (logged after the checkpoint the run resumes from, so they will be logged
/// again). Throws IoError naming the path when it cannot be written.
class MetricsFile {
 public:
  MetricsFile(const std::string& path, std::optional<int64_t> resume_step);
  /// Appends one line and flushes (a crash loses at most the line being written).
  void write(const std::string& json_line);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

/// The value of the "step" key of a metrics line, or nullopt when it has none.
std::optional<int64_t> metrics_line_step(const std::string& line);

}  // namespace loom::recipes
