// The timeline as Chrome trace event JSON (one file per rank, one merged file
// with a track per rank) and the figures computed from it: exposed
// communication per step and the straggler. Pure functions over event lists,
// so tests check them on synthetic timelines with known answers.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tensor/trace_events.h"

namespace loom::trace {

/// Chrome trace JSON ({"traceEvents": [...], "displayTimeUnit": "ms"}) of one
/// rank's events: pid = rank, tid = thread id, ts/dur in microseconds of
/// (ts_ns + offset_ns); thread names become "thread_name" metadata events.
/// offset_ns maps this process's steady clock onto the job's common clock.
std::string to_chrome_json(const std::vector<Event>& events, int rank,
                           const std::vector<std::pair<int, std::string>>& thread_names, int64_t offset_ns);

/// Parses Chrome trace JSON (a rank's or a merged file) back into events
/// (ts_ns, dur_ns from the microsecond fields; rank from pid). Metadata events
/// are skipped. Throws IoError naming `what` when the text is not such JSON.
std::vector<Event> from_chrome_json(const std::string& text, const std::string& what);

/// The per-rank documents concatenated into one (a track per rank), with a
/// "loom" object holding the straggler report. Throws IoError naming the rank
/// whose document does not parse.
std::string merge_chrome_json(const std::vector<std::string>& per_rank);

/// Exposed communication of one rank in a window.
struct ExposedComm {
  double comm_s = 0;       // union of collective execution spans (kComm) inside the window
  double blocked_s = 0;    // union of wait spans (kWait) inside the window: the caller blocked
  double hidden_s = 0;     // comm_s - blocked_s, at least 0: communication behind compute
  double hidden_frac = 0;  // hidden_s / comm_s; 0 when there was no communication
};
/// Computed from one rank's events, clipped to [begin_ns, end_ns).
ExposedComm exposed_comm(const std::vector<Event>& events, int64_t begin_ns, int64_t end_ns);

/// Who held the others up, from a merged timeline (all ranks on one clock).
struct StragglerReport {
  int straggler = -1;                  // the rank with the largest late_s; -1 when no collective matched
  std::vector<double> late_s;          // per rank: sum over collectives of (its enqueue - the earliest rank's)
  std::vector<double> blocked_s;       // per rank: union of its wait spans
  std::vector<int64_t> last_event_ns;  // per rank: end of its last event
  int oldest_last_event = -1;          // the rank whose last event is the oldest (a hang's likely culprit)
};
/// Collectives are matched across ranks by (group, seq) of their enqueue instants.
StragglerReport find_straggler(const std::vector<Event>& merged, int world);

}  // namespace loom::trace
