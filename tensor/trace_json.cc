#include "tensor/trace_json.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <tuple>

#include "tensor/error.h"

namespace loom::trace {

using nlohmann::json;

namespace {

json event_json(const Event& e, int rank, int64_t offset_ns) {
  json j;
  j["name"] = e.name;
  j["cat"] = e.cat;
  j["ph"] = std::string(1, e.ph);
  j["pid"] = rank;
  j["tid"] = e.tid;
  j["ts"] = static_cast<double>(e.ts_ns + offset_ns) / 1000.0;
  if (e.ph == 'X') j["dur"] = static_cast<double>(e.dur_ns) / 1000.0;
  if (e.ph == 'i') j["s"] = "t";
  if (!e.args.empty()) {
    json a = json::object();
    for (const auto& arg : e.args) {
      if (arg.is_num) {
        a[arg.key] = arg.num;
      } else {
        a[arg.key] = arg.str;
      }
    }
    j["args"] = std::move(a);
  }
  return j;
}

json parse(const std::string& text, const std::string& what) {
  json doc = json::parse(text, nullptr, false);
  LOOM_CHECK_T(IoError, !doc.is_discarded(), what, " is not valid JSON");
  LOOM_CHECK_T(IoError, doc.is_object() && doc.contains("traceEvents") && doc["traceEvents"].is_array(), what,
               " is not a Chrome trace (no \"traceEvents\" array)");
  return doc;
}

// Sorted, merged intervals.
std::vector<std::pair<int64_t, int64_t>> merged_intervals(std::vector<std::pair<int64_t, int64_t>> v) {
  std::sort(v.begin(), v.end());
  std::vector<std::pair<int64_t, int64_t>> out;
  for (const auto& iv : v) {
    if (iv.second <= iv.first) continue;
    if (!out.empty() && iv.first <= out.back().second) {
      out.back().second = std::max(out.back().second, iv.second);
    } else {
      out.push_back(iv);
    }
  }
  return out;
}

int64_t union_ns(const std::vector<Event>& events, const std::string& cat, int64_t lo, int64_t hi, int rank = -1) {
  std::vector<std::pair<int64_t, int64_t>> v;
  for (const auto& e : events) {
    if (e.ph != 'X' || e.cat != cat || (rank >= 0 && e.rank != rank)) continue;
    v.emplace_back(std::max(e.ts_ns, lo), std::min(e.end_ns(), hi));
  }
  int64_t total = 0;
  for (const auto& iv : merged_intervals(std::move(v))) total += iv.second - iv.first;
  return total;
}

}  // namespace

std::string to_chrome_json(const std::vector<Event>& events, int rank,
                           const std::vector<std::pair<int, std::string>>& thread_names, int64_t offset_ns) {
  json ev = json::array();
  ev.push_back(
      {{"name", "process_name"}, {"ph", "M"}, {"pid", rank}, {"args", {{"name", "rank " + std::to_string(rank)}}}});
  ev.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", rank}, {"args", {{"sort_index", rank}}}});
  for (const auto& [tid, name] : thread_names)
    ev.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", rank}, {"tid", tid}, {"args", {{"name", name}}}});
  for (const auto& e : events) ev.push_back(event_json(e, rank, offset_ns));
  json doc;
  doc["traceEvents"] = std::move(ev);
  doc["displayTimeUnit"] = "ms";
  return doc.dump();
}

std::vector<Event> from_chrome_json(const std::string& text, const std::string& what) {
  json doc = parse(text, what);
  std::vector<Event> out;
  for (const auto& j : doc["traceEvents"]) {
    const std::string ph = j.value("ph", "");
    if (ph != "X" && ph != "i") continue;
    Event e;
    e.name = j.value("name", "");
    e.cat = j.value("cat", "");
    e.ph = ph[0];
    e.rank = j.value("pid", 0);
    e.tid = j.value("tid", 0);
    e.ts_ns = static_cast<int64_t>(j.value("ts", 0.0) * 1000.0 + 0.5);
    e.dur_ns = static_cast<int64_t>(j.value("dur", 0.0) * 1000.0 + 0.5);
    if (j.contains("args") && j["args"].is_object()) {
      for (const auto& [k, v] : j["args"].items()) {
        if (v.is_number_integer()) {
          e.args.push_back(num(k, v.get<int64_t>()));
        } else if (v.is_string()) {
          e.args.push_back(str(k, v.get<std::string>()));
        }
      }
    }
    out.push_back(std::move(e));
  }
  std::stable_sort(out.begin(), out.end(), [](const Event& a, const Event& b) {
    return a.ts_ns != b.ts_ns ? a.ts_ns < b.ts_ns : a.dur_ns > b.dur_ns;
  });
  return out;
}

std::string merge_chrome_json(const std::vector<std::string>& per_rank) {
  json ev = json::array();
  std::vector<Event> all;
  for (size_t r = 0; r < per_rank.size(); ++r) {
    const std::string what = "the trace of rank " + std::to_string(r);
    json doc = parse(per_rank[r], what);
    for (auto& j : doc["traceEvents"]) ev.push_back(std::move(j));
    auto events = from_chrome_json(per_rank[r], what);
    all.insert(all.end(), events.begin(), events.end());
  }
  StragglerReport s = find_straggler(all, static_cast<int>(per_rank.size()));
  json doc;
  doc["traceEvents"] = std::move(ev);
  doc["displayTimeUnit"] = "ms";
  doc["loom"] = {{"world_size", per_rank.size()},
                 {"straggler", s.straggler},
                 {"late_s", s.late_s},
                 {"blocked_s", s.blocked_s},
                 {"oldest_last_event_rank", s.oldest_last_event}};
  return doc.dump();
}

ExposedComm exposed_comm(const std::vector<Event>& events, int64_t begin_ns, int64_t end_ns) {
  ExposedComm x;
  x.comm_s = 1e-9 * static_cast<double>(union_ns(events, kComm, begin_ns, end_ns));
  x.blocked_s = 1e-9 * static_cast<double>(union_ns(events, kWait, begin_ns, end_ns));
  x.hidden_s = std::max(0.0, x.comm_s - x.blocked_s);
  x.hidden_frac = x.comm_s > 0 ? x.hidden_s / x.comm_s : 0.0;
  return x;
}

StragglerReport find_straggler(const std::vector<Event>& merged, int world) {
  StragglerReport s;
  const auto W = static_cast<size_t>(std::max(world, 0));
  s.late_s.assign(W, 0.0);
  s.blocked_s.assign(W, 0.0);
  s.last_event_ns.assign(W, INT64_MIN);
  // (group, seq) -> enqueue time per rank
  std::map<std::pair<std::string, int64_t>, std::vector<int64_t>> enq;
  for (const auto& e : merged) {
    if (e.rank < 0 || static_cast<size_t>(e.rank) >= W) continue;
    auto r = static_cast<size_t>(e.rank);
    s.last_event_ns[r] = std::max(s.last_event_ns[r], e.end_ns());
    if (e.cat != kEnqueue) continue;
    const int64_t seq = e.num_arg("seq");
    if (seq < 0) continue;
    auto& v = enq[{e.str_arg("group"), seq}];
    if (v.empty()) v.assign(W, INT64_MIN);
    v[r] = e.ts_ns;
  }
  bool any = false;
  for (const auto& [key, v] : enq) {
    if (std::find(v.begin(), v.end(), INT64_MIN) != v.end()) continue;  // not every rank recorded it
    const int64_t first = *std::min_element(v.begin(), v.end());
    for (size_t r = 0; r < W; ++r) s.late_s[r] += 1e-9 * static_cast<double>(v[r] - first);
    any = true;
  }
  for (size_t r = 0; r < W; ++r)
    s.blocked_s[r] = 1e-9 * static_cast<double>(union_ns(merged, kWait, INT64_MIN, INT64_MAX, static_cast<int>(r)));
  if (any) s.straggler = static_cast<int>(std::max_element(s.late_s.begin(), s.late_s.end()) - s.late_s.begin());
  int64_t oldest = INT64_MAX;
  for (size_t r = 0; r < W; ++r) {
    if (s.last_event_ns[r] != INT64_MIN && s.last_event_ns[r] < oldest) {
      oldest = s.last_event_ns[r];
      s.oldest_last_event = static_cast<int>(r);
    }
  }
  return s;
}

}  // namespace loom::trace
