// The timeline of a window of training steps (logging.trace_steps): turns the
// recorder (tensor/trace_events.h) on for steps from..to, gives each traced
// step's exposed communication, and at the end writes one Chrome trace JSON
// file per rank and, on rank 0, the merged file with a track per rank, all on
// one clock. Every rank of the group constructs it and calls it in step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "collectives/process_group.h"
#include "nn/module.h"
#include "tensor/trace_json.h"

namespace loom::recipes {

class TraceWindow {
 public:
  /// Steps from..to (1-based, inclusive; from == 0: off) of a run whose files go to `dir` (created):
  /// dir/trace_rank<R>.json and dir/trace.json. Names the model's modules down to `module_depth` for their spans.
  /// Collective: aligns the ranks' clocks (wall clock through one all-reduce on `world`).
  TraceWindow(collectives::ProcessGroup& world, int64_t from, int64_t to, std::string dir, nn::Module* model,
              int module_depth = -1);
  /// Before step `step` (1-based) runs: recording starts at `from`.
  void begin_step(int64_t step);
  /// After step `step` ran: its exposed communication when it was traced. After step `to` recording stops and the
  /// files are written (collective: every rank calls it with the same step). Throws IoError naming the file.
  std::optional<trace::ExposedComm> end_step(int64_t step);
  /// Writes the files now if recording is on (a run that ends inside the window). Collective.
  void finish();
  /// The merged file (written on rank 0 after step `to`; empty before).
  const std::string& merged_path() const { return merged_path_; }
  /// What rank 0 found in the merged timeline: the straggler report (valid once merged_path() is set).
  const trace::StragglerReport& report() const { return report_; }

 private:
  void write();
  collectives::ProcessGroup& world_;
  int64_t from_, to_;
  std::string dir_;
  int64_t offset_ns_ = 0;  // steady clock -> the job's clock (wall clock minus the earliest rank's start)
  int64_t step_begin_ns_ = 0;
  bool on_ = false, done_ = false;
  std::string merged_path_;
  trace::StragglerReport report_;
};

}  // namespace loom::recipes
