#include "checkpoint/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "checkpoint/crc32c.h"
#include "checkpoint/h5.h"
#include "checkpoint/layout.h"
#include "tensor/logging.h"
#include "tensor/ops.h"

namespace fs = std::filesystem;

namespace loom::checkpoint {

using detail::BoxPiece;
using detail::LocalTensor;

namespace {

constexpr const char* kComplete = "COMPLETE";
constexpr const char* kMetadata = "metadata.json";
constexpr const char* kLatest = "latest";

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}
std::string rank_file(int r, const char* ext) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rank_%05d.%s", r, ext);
  return buf;
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) throw IoError("checkpoint: cannot open " + path + " to sync it: " + std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw IoError("checkpoint: fsync of " + path + " failed: " + std::strerror(err));
}

// Writes text to path through a temporary file, synced and renamed into place, so readers see all or nothing.
void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    f.flush();
    if (!f) throw IoError("checkpoint: cannot write " + tmp + " (disk full?)");
  }
  fsync_path(tmp, false);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw IoError("checkpoint: cannot rename " + tmp + " to " + path + ": " + ec.message());
  fsync_path(fs::path(path).parent_path().string(), true);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw IoError("checkpoint: cannot read " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Json int_array(const std::vector<int64_t>& v) {
  Json a = Json::array();
  for (int64_t x : v) a.push_back(Json(x));
  return a;
}
std::vector<int64_t> to_ints(const Json& j) {
  std::vector<int64_t> v;
  for (const auto& e : j) v.push_back(e.get<int64_t>());
  return v;
}
// 64-bit values (RNG seeds, data positions) go as decimal strings: JSON numbers are doubles.
Json u64(uint64_t v) { return Json(std::to_string(v)); }
uint64_t parse_u64(const Json& j) { return std::stoull(j.get<std::string>()); }

DType parse_dtype(const std::string& s, const std::string& ctx) {
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16, DType::i32, DType::i64, DType::u8})
    if (s == dtype_name(d)) return d;
  throw IoError("checkpoint: unknown dtype '" + s + "' in " + ctx);
}

// Per-block CRC32C of a piece written in consecutive chunks.
struct CrcAccumulator {
  size_t esize;
  std::vector<uint32_t> crcs;
  int64_t pos = 0;  // elements seen
  void add(const char* p, int64_t n) {
    while (n > 0) {
      const int64_t in_block = pos % kChecksumBlock;
      const int64_t take = std::min(n, kChecksumBlock - in_block);
      if (in_block == 0) crcs.push_back(0);
      crcs.back() = crc32c(p, static_cast<size_t>(take) * esize, crcs.back());
      p += take * esize;
      pos += take;
      n -= take;
    }
  }
};

// Copies elements [off, off + n) of the 1-D tensor data to host memory dst.
void to_host(const Tensor& data, int64_t off, int64_t n, void* dst) {
  const size_t es = data.element_size();
  if (data.device().is_cpu()) {
    std::memcpy(dst, static_cast<const char*>(data.data_ptr()) + off * es, n * es);
  } else {
    Tensor part(data.storage(), {n}, {1}, data.storage_offset() + off, data.dtype());
    Tensor h = ops::to(part, kCPU);
    std::memcpy(dst, h.data_ptr(), n * es);
  }
}

// The optimizer's per-parameter step counts by checkpoint parameter name.
std::map<std::string, int64_t> optimizer_steps(const Target& t) {
  std::map<std::string, int64_t> out;
  if (!t.optimizer) return out;
  const std::vector<Tensor> fsdp_params = t.fsdp ? t.fsdp->parameters() : std::vector<Tensor>{};
  const nn::NamedTensors named = t.module ? t.module->named_parameters() : nn::NamedTensors{};
  int64_t i = 0;
  for (const auto& g : t.optimizer->param_groups()) {
    for (const auto& p : g.params) {
      const int64_t step = t.optimizer->state(i++).step;
      if (t.module) {
        for (const auto& [n, q] : named)
          if (q.is_same(p)) out[n] = step;
      } else {
        for (size_t j = 0; j < fsdp_params.size(); ++j)
          if (fsdp_params[j].is_same(p))
            for (const auto& s : t.fsdp->shard_pieces(j, p)) out[s.name] = step;
      }
    }
  }
  return out;
}

// What rank 0 records besides tensors.
Json train_state_json(const Target& t, const TrainState& s, int world) {
  Json j = Json::object();
  j["step"] = Json(s.step);
  Json dp = Json::object();
  for (const auto& [k, v] : s.data_position) dp[k] = Json(std::to_string(v));
  j["data_position"] = dp;
  j["config"] = Json(s.config);
  j["dp_size"] = Json(t.coords.dp_size);
  j["tp_size"] = Json(t.coords.tp_size);
  j["world_size"] = Json(world);
  if (t.coords.replica_size > 1) j["replicas"] = Json(t.coords.replica_size);
  j["layout"] =
      Json(t.fsdp ? std::string(t.coords.replica_size > 1 ? "hsdp" : "fsdp") + (t.coords.tp_size > 1 ? "+tp" : "")
           : t.coords.tp_size > 1 ? (t.coords.dp_size > 1 ? "ddp+tp" : "tp")
           : t.coords.dp_size > 1 ? "ddp"
                                  : "single");
  if (t.scheduler) j["scheduler_step"] = Json(t.scheduler->state_dict().step);
  if (t.optimizer) {
    Json o = Json::object();
    auto st = t.optimizer->state_dict();
    Json hyper = Json::object();
    for (const auto& [k, v] : st.hyper) hyper[k] = Json(v);
    o["hyper"] = hyper;
    Json groups = Json::array();
    for (const auto& g : t.optimizer->param_groups()) {
      Json gj = Json::object();
      gj["lr"] = Json(g.lr);
      gj["weight_decay"] = Json(g.weight_decay);
      groups.push_back(gj);
    }
    o["groups"] = groups;
    j["optimizer"] = o;
  }
  return j;
}

// Test hook: LOOM_CKPT_TEST_PAUSE_RANK=r makes rank r stop for good after its first dataset (its file half written),
// after writing its pid to <root>/paused_rank_r.pid, so a test can kill it mid-save deterministically.
void maybe_pause(const std::string& root, int rank) {
  const char* e = std::getenv("LOOM_CKPT_TEST_PAUSE_RANK");
  if (!e || std::atoi(e) != rank) return;
  write_file_atomic(root + "/paused_rank_" + std::to_string(rank) + ".pid", std::to_string(::getpid()));
  LOOM_WARN("checkpoint: LOOM_CKPT_TEST_PAUSE_RANK: rank ", rank, " pauses mid-save (test hook)");
  while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
}

struct RankWrite {
  std::string root, dir;  // dir: the temporary checkpoint directory
  int rank = 0;
  std::vector<LocalTensor> tensors;
  Json extra;                       // rng, optimizer steps
  std::function<void()> test_hook;  // CheckpointOptions::test_write_hook
};

// Writes this rank's HDF5 file and its index rank_r.json (both synced). staging: null to write straight from the
// tensors (host memory), else a buffer the data passes through chunk by chunk.
void write_rank(const RankWrite& w, std::vector<char>* staging) {
  detail::H5Writer writer(w.dir + "/" + rank_file(w.rank, "h5"));
  Json tensors = Json::object(), pieces = Json::object();
  bool paused_once = false;
  for (const auto& lt : w.tensors) {
    Json tj = Json::object();
    tj["shape"] = int_array(lt.global_shape);
    tj["dtype"] = Json(dtype_name(lt.data.dtype()));
    tensors[lt.name] = tj;
    const int64_t n = lt.flat_end - lt.flat_begin;
    const int64_t b = n * lt.replica_index / lt.replicas, e = n * (lt.replica_index + 1) / lt.replicas;
    Json plist = Json::array();
    int k = 0;
    const size_t es = lt.data.element_size();
    for (const BoxPiece& bp : detail::to_boxes(lt, b, e)) {
      const std::string dset = "/" + lt.name + "/" + std::to_string(k++);
      const int64_t count = bp.end - bp.begin;
      if (w.test_hook) w.test_hook();
      std::lock_guard<std::mutex> lock(detail::h5_mutex());
      writer.create(dset, lt.data.dtype(), count,
                    {{"box_offset", bp.box_offset},
                     {"box_size", bp.box_size},
                     {"flat_range", {bp.begin, bp.end}},
                     {"global_shape", lt.global_shape}});
      CrcAccumulator crc{es, {}, 0};
      if (!staging && lt.data.device().is_cpu()) {
        const char* src = static_cast<const char*>(lt.data.data_ptr()) + bp.local_offset * es;
        crc.add(src, count);
        writer.write(0, count, src);
      } else {
        std::vector<char> local_buf;
        std::vector<char>& buf = staging ? *staging : local_buf;
        if (buf.empty()) buf.resize(64 << 20);
        const int64_t chunk = std::max<int64_t>(1, static_cast<int64_t>(buf.size() / es));
        for (int64_t off = 0; off < count; off += chunk) {
          const int64_t c = std::min(chunk, count - off);
          to_host(lt.data, bp.local_offset + off, c, buf.data());
          crc.add(buf.data(), c);
          writer.write(off, c, buf.data());
        }
      }
      writer.set_crc(crc.crcs);
      Json pj = Json::object();
      pj["dataset"] = Json(dset);
      pj["box_offset"] = int_array(bp.box_offset);
      pj["box_size"] = int_array(bp.box_size);
      pj["flat_range"] = int_array({bp.begin, bp.end});
      Json cj = Json::array();
      for (uint32_t c : crc.crcs) cj.push_back(Json(c));
      pj["crc32c"] = cj;
      plist.push_back(pj);
      if (!paused_once) {
        paused_once = true;
        maybe_pause(w.root, w.rank);
      }
    }
    if (!plist.empty()) pieces[lt.name] = plist;
  }
  {
    std::lock_guard<std::mutex> lock(detail::h5_mutex());
    writer.close_and_sync();
  }
  Json idx = Json::object();
  idx["rank"] = Json(w.rank);
  idx["file"] = Json(rank_file(w.rank, "h5"));
  idx["tensors"] = tensors;
  idx["pieces"] = pieces;
  for (const auto& [k, v] : w.extra.items()) idx[k] = v;
  write_file_atomic(w.dir + "/" + rank_file(w.rank, "json"), dump_json(idx));
}

// Rank 0: merges the ranks' indexes into metadata.json, marks the directory complete, renames it into place and points
// `latest` at it, then applies keep_last. Waits up to timeout for the other ranks' indexes (async saves).
void commit(const std::string& root, const std::string& tmp, const std::string& final_name, int world,
            const Json& train_state, const CheckpointOptions& opts, std::chrono::seconds timeout) {
  const auto t0 = Clock::now();
  Json tensors = Json::object(), ranks = Json::array(), steps = Json::object();
  for (int r = 0; r < world; ++r) {
    const std::string idx_path = tmp + "/" + rank_file(r, "json"), failed = tmp + "/" + rank_file(r, "failed");
    while (!fs::exists(idx_path)) {
      if (fs::exists(failed))
        throw IoError("checkpoint: rank " + std::to_string(r) + " failed to write its file: " + read_file(failed));
      if (Clock::now() - t0 > timeout)
        throw IoError("checkpoint: rank " + std::to_string(r) + " did not finish writing " + tmp + " within " +
                      std::to_string(timeout.count()) + " s");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Json idx = parse_json(read_file(idx_path));
    const std::string file = json_at(idx, "file", idx_path).get<std::string>();
    for (const auto& [name, tj] : json_at(idx, "tensors", idx_path).items()) {
      const Json* have = json_find(tensors, name);
      if (!have) {
        Json t = Json::object();
        t["shape"] = tj.at("shape");
        t["dtype"] = tj.at("dtype");
        t["pieces"] = Json::array();
        tensors[name] = t;
      } else if (have->at("shape").dump() != tj.at("shape").dump() ||
                 have->at("dtype").dump() != tj.at("dtype").dump()) {
        throw IoError("checkpoint: ranks disagree on tensor " + name + ": " + dump_json(*have) + " vs rank " +
                      std::to_string(r) + " " + dump_json(tj));
      }
    }
    for (const auto& [name, plist] : json_at(idx, "pieces", idx_path).items()) {
      Json t = *json_find(tensors, name);
      Json ps = t.at("pieces");
      for (const auto& p : plist) {
        Json q = p;
        q["file"] = Json(file);
        ps.push_back(q);
      }
      t["pieces"] = ps;
      tensors[name] = t;
    }
    Json rj = Json::object();
    rj["file"] = Json(file);
    if (const Json* rng = json_find(idx, "rng")) rj["rng"] = *rng;
    ranks.push_back(rj);
    if (const Json* st = json_find(idx, "optimizer_steps"))
      for (const auto& [k, v] : st->items()) steps[k] = v;
  }
  Json md = Json::object();
  md["format"] = Json("loom.checkpoint");
  md["version"] = Json(1);
  md["checksum"] = Json("crc32c");
  md["checksum_block_elements"] = Json(kChecksumBlock);
  for (const auto& [k, v] : train_state.items()) md[k] = v;
  md["optimizer_steps"] = steps;
  md["ranks"] = ranks;
  md["tensors"] = tensors;
  write_file_atomic(tmp + "/" + kMetadata, dump_json(md));
  write_file_atomic(tmp + "/" + kComplete, "complete\n");
  const std::string final_dir = root + "/" + final_name;
  std::error_code ec;
  if (fs::exists(final_dir)) fs::remove_all(final_dir, ec);  // saving the same step again replaces it
  fs::rename(tmp, final_dir, ec);
  if (ec) throw IoError("checkpoint: cannot rename " + tmp + " to " + final_dir + ": " + ec.message());
  fsync_path(root, true);
  write_file_atomic(root + "/" + kLatest, final_name + "\n");
  if (opts.keep_last > 0) {
    auto all = complete_checkpoints(root);
    for (size_t i = 0; i + opts.keep_last < all.size(); ++i) {
      fs::remove_all(all[i], ec);
      if (ec) LOOM_WARN("checkpoint: keep_last could not remove ", all[i], ": ", ec.message());
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------

std::vector<std::string> complete_checkpoints(const std::string& root) {
  std::vector<std::pair<std::string, std::string>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step_", 0) == 0 && n.find('.') == std::string::npos &&
        fs::exists(e.path() / kComplete))
      found.emplace_back(n, e.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

std::map<std::string, int64_t> data_position_for(const TrainState& s, int dp_size, int dp_rank) {
  LOOM_CHECK(dp_size > 0 && dp_rank >= 0 && dp_rank < dp_size, "data_position_for: rank ", dp_rank,
             " is not in a data-parallel group of ", dp_size);
  std::map<std::string, int64_t> out;
  std::vector<std::string> per_rank;
  const std::string mine = "dp" + std::to_string(dp_rank) + "/";
  for (const auto& [k, v] : s.data_position) {
    if (k.size() > 2 && k.compare(0, 2, "dp") == 0 && k.find('/') != std::string::npos &&
        std::all_of(k.begin() + 2, k.begin() + static_cast<std::ptrdiff_t>(k.find('/')), ::isdigit)) {
      per_rank.push_back(k);
      if (k.rfind(mine, 0) == 0) out[k.substr(mine.size())] = v;
    } else {
      out[k] = v;
    }
  }
  if (!per_rank.empty() && s.saved_dp_size != dp_size) {
    std::string keys;
    for (size_t i = 0; i < per_rank.size() && i < 8; ++i) keys += (i ? ", " : "") + per_rank[i];
    throw InvalidArgument(loom::detail::str_cat(
        "checkpoint: the data position has per-rank keys (", keys, per_rank.size() > 8 ? ", …" : "", ") saved with ",
        s.saved_dp_size, " data-parallel ranks; this run has ", dp_size,
        ": each rank's shard position cannot be mapped onto another number of ranks without skipping or repeating "
        "samples. Save a global position (e.g. samples_seen of one sample stream) to change the data-parallel size."));
  }
  return out;
}

std::string latest_checkpoint(const std::string& root) {
  const std::string p = root + "/" + kLatest;
  if (!fs::exists(p)) return "";
  std::string name = read_file(p);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  return root + "/" + name;
}

void Checkpointer::agree(const std::string& err, const std::string& what) {
  Tensor failed = ops::full({1}, err.empty() ? 0.0 : static_cast<double>(group_->rank() + 1), DType::f64);
  group_->allreduce(failed, {collectives::ReduceOp::kMax})->wait();
  const int bad = static_cast<int>(failed.item<double>());
  if (bad == 0) return;
  if (!err.empty()) throw IoError(err);
  throw IoError("checkpoint: " + what + " failed on rank " + std::to_string(bad - 1) + " (see its log)");
}

struct Checkpointer::Async {
  std::thread thread;
  std::exception_ptr error;
  std::vector<char> staging;
  std::vector<Tensor> snapshot;  // reused by the next save of the same tensors
  Clock::time_point start;
  double total_s = 0;
};

Checkpointer::Checkpointer(std::string root, std::shared_ptr<collectives::ProcessGroup> group, CheckpointOptions opts)
    : root_(std::move(root)), group_(std::move(group)), opts_(opts), async_(std::make_unique<Async>()) {
  LOOM_CHECK(group_ != nullptr,
             "Checkpointer: a process group is required (a "
             "one-rank group for single-process runs)");
  LOOM_CHECK(opts_.keep_last >= 0, "Checkpointer: keep_last must be >= 0, got ", opts_.keep_last);
  LOOM_CHECK(opts_.staging_bytes >= 4096, "Checkpointer: staging_bytes must be at least 4096, got ",
             opts_.staging_bytes);
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec) throw IoError("Checkpointer: cannot create checkpoint root " + root_ + ": " + ec.message());
}

Checkpointer::~Checkpointer() {
  try {
    wait();
  } catch (const std::exception& e) {
    LOOM_ERROR("checkpoint: the async save in flight failed: ", e.what());
  }
}

void Checkpointer::wait() {
  if (async_->thread.joinable()) async_->thread.join();
  if (async_->error) {
    auto e = async_->error;
    async_->error = nullptr;
    std::rethrow_exception(e);
  }
}

double Checkpointer::last_total_seconds() const { return opts_.async ? async_->total_s : last_total_s_; }

std::string Checkpointer::save(const Target& t, const TrainState& s) {
  const auto t0 = Clock::now();
  const int rank = group_->rank(), world = group_->size();
  const std::string final_name = step_name(s.step);
  const std::string tmp = root_ + "/" + final_name + ".tmp";
  std::string err;
  try {
    wait();
  } catch (const std::exception& e) {
    err = std::string("checkpoint: the previous async save failed: ") + e.what();
  }
  if (rank == 0 && err.empty()) {
    // Leftovers of saves that crashed are never complete: remove them.
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(root_, ec)) {
      const std::string n = e.path().filename().string();
      if (e.is_directory() && n.rfind("step_", 0) == 0 && n.size() > 4 && n.substr(n.size() - 4) == ".tmp")
        fs::remove_all(e.path(), ec);
    }
    fs::create_directories(tmp, ec);
    if (ec) err = "checkpoint: cannot create " + tmp + ": " + ec.message();
  }
  agree(err, "starting checkpoint " + final_name);  // also: the directory exists for every rank

  RankWrite w;
  w.root = root_;
  w.dir = tmp;
  w.rank = rank;
  w.tensors = detail::collect(t);
  w.test_hook = opts_.test_write_hook;
  // Keep only this rank's share of replicated tensors: the rest is written by the other replicas, and an async snapshot
  // then copies only what this rank writes.
  for (auto& lt : w.tensors) {
    if (lt.replicas == 1) continue;
    const int64_t n = lt.flat_end - lt.flat_begin;
    const int64_t b = n * lt.replica_index / lt.replicas, e = n * (lt.replica_index + 1) / lt.replicas;
    lt.data = Tensor(lt.data.storage(), {e - b}, {1}, lt.data.storage_offset() + b, lt.data.dtype());
    lt.flat_end = lt.flat_begin + e;
    lt.flat_begin += b;
    lt.replica_index = 0;
    lt.replicas = 1;
  }
  Json rng = Json::object();
  for (const auto& [name, g] : t.rngs) {
    Json a = Json::array();
    a.push_back(u64(g->seed()));
    a.push_back(u64(g->offset()));
    rng[name] = a;
  }
  w.extra = Json::object();
  w.extra["rng"] = rng;
  Json steps = Json::object();
  for (const auto& [k, v] : optimizer_steps(t)) steps[k] = Json(v);
  w.extra["optimizer_steps"] = steps;
  const Json ts = train_state_json(t, s, world);

  if (opts_.async) {
    // Snapshot on the tensors' device; the thread streams it through the bounded staging buffer. The snapshot buffers
    // are kept and reused by the next save of the same tensors: a copy into memory already mapped runs at memory
    // bandwidth, a fresh allocation pays a page fault per 4 KB as well.
    {
      autograd::NoGradGuard ng;
      auto& snap = async_->snapshot;
      const bool reuse =
          snap.size() == w.tensors.size() &&
          std::equal(snap.begin(), snap.end(), w.tensors.begin(), [](const Tensor& a, const LocalTensor& b) {
            return a.numel() == b.data.numel() && a.dtype() == b.data.dtype() && a.device() == b.data.device() &&
                   b.data.device().is_cpu();
          });
      if (!reuse) snap.clear();
      for (size_t i = 0; i < w.tensors.size(); ++i) {
        auto& lt = w.tensors[i];
        if (reuse) {
          std::memcpy(snap[i].data_ptr(), lt.data.data_ptr(), lt.data.nbytes());
        } else {
          snap.push_back(ops::clone(lt.data));
        }
        lt.data = snap[i];
      }
    }
    if (async_->staging.size() != static_cast<size_t>(opts_.staging_bytes)) async_->staging.resize(opts_.staging_bytes);
    async_->start = t0;
    auto opts = opts_;
    auto root = root_;
    async_->thread = std::thread([this, w = std::move(w), ts, tmp, final_name, world, opts, root, rank]() {
      try {
        try {
          write_rank(w, &async_->staging);
        } catch (const std::exception& e) {
          std::ofstream(tmp + "/" + rank_file(rank, "failed")) << e.what();
          throw;
        }
        if (rank == 0) commit(root, tmp, final_name, world, ts, opts, opts.commit_timeout);
        async_->total_s = seconds_since(async_->start);
        if (rank == 0)
          LOOM_INFO("checkpoint: saved ", root, "/", final_name, " in the background in ", async_->total_s, " s");
        else
          LOOM_DEBUG("checkpoint: wrote this rank's file of ", final_name, " in ", async_->total_s, " s");
      } catch (...) {
        async_->error = std::current_exception();
      }
    });
    last_blocking_s_ = seconds_since(t0);
    LOOM_INFO("checkpoint: async save of ", final_name, " blocked training for ", last_blocking_s_, " s");
    return root_ + "/" + final_name;
  }

  try {
    write_rank(w, nullptr);
  } catch (const std::exception& e) {
    err = std::string(e.what()) + " (the previous checkpoint is intact)";
  }
  agree(err, "writing checkpoint " + final_name + " (the previous checkpoint is intact)");
  if (rank == 0) {
    try {
      commit(root_, tmp, final_name, world, ts, opts_, opts_.commit_timeout);
    } catch (const std::exception& e) {
      err = e.what();
    }
  }
  agree(err, "committing checkpoint " + final_name);
  last_blocking_s_ = last_total_s_ = seconds_since(t0);
  LOOM_INFO("checkpoint: saved ", root_, "/", final_name, " in ", last_total_s_, " s");
  return root_ + "/" + final_name;
}

// ---------------------------------------------------------------------------------------------------------------

Metadata read_metadata(const std::string& dir) {
  if (!fs::is_directory(dir)) throw IoError("checkpoint: " + dir + " is not a directory");
  if (!fs::exists(dir + "/" + kComplete))
    throw IoError("checkpoint: " + dir + " has no " + kComplete +
                  " marker: the save that wrote it did not finish (a crash "
                  "mid-save?); load another checkpoint");
  Metadata md;
  md.dir = dir;
  const std::string path = dir + "/" + kMetadata;
  try {
    md.json = parse_json(read_file(path));
  } catch (const InvalidArgument& e) {
    throw IoError("checkpoint: " + path + " is not valid JSON: " + e.what());
  }
  try {  // a value of the wrong type (nlohmann's type_error) names the file too
    md.step = json_at(md.json, "step", path).get<int64_t>();
    md.world_size = json_at(md.json, "world_size", path).get<int>();
    for (const auto& [name, tj] : json_at(md.json, "tensors", path).items()) {
      TensorInfo ti;
      ti.name = name;
      ti.shape = to_ints(json_at(tj, "shape", name));
      ti.dtype = parse_dtype(json_at(tj, "dtype", name).get<std::string>(), path + " tensor " + name);
      for (const auto& pj : json_at(tj, "pieces", name)) {
        PieceInfo p;
        p.file = json_at(pj, "file", name).get<std::string>();
        p.dataset = json_at(pj, "dataset", name).get<std::string>();
        p.box_offset = to_ints(json_at(pj, "box_offset", name));
        p.box_size = to_ints(json_at(pj, "box_size", name));
        auto fr = to_ints(json_at(pj, "flat_range", name));
        LOOM_CHECK_T(IoError, fr.size() == 2 && fr[0] <= fr[1], "checkpoint: bad flat_range of ", name, " in ", path);
        p.flat_begin = fr[0];
        p.flat_end = fr[1];
        for (const auto& c : json_at(pj, "crc32c", name)) p.crc.push_back(c.get<uint32_t>());
        const int64_t blocks = (p.flat_end - p.flat_begin + kChecksumBlock - 1) / kChecksumBlock;
        LOOM_CHECK_T(IoError, static_cast<int64_t>(p.crc.size()) == blocks, "checkpoint: tensor ", name, " piece ",
                     p.dataset, " of ", p.file, " lists ", p.crc.size(), " checksums for ", blocks, " blocks in ",
                     path);
        ti.pieces.push_back(std::move(p));
      }
      md.tensors.push_back(std::move(ti));
    }
  } catch (const Json::exception& e) {
    throw IoError("checkpoint: " + path + " is malformed: " + e.what());
  }
  std::sort(md.tensors.begin(), md.tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return md;
}

namespace {

// Opens each rank file once per load.
class Readers {
 public:
  explicit Readers(std::string dir) : dir_(std::move(dir)) {}
  /// The reader of `file`; tensor names what needed it, for errors.
  detail::H5Reader& get(const std::string& file, const std::string& tensor) {
    auto it = readers_.find(file);
    if (it == readers_.end()) {
      try {
        it = readers_.emplace(file, std::make_unique<detail::H5Reader>(dir_ + "/" + file)).first;
      } catch (const IoError& e) {
        throw IoError(std::string(e.what()) + " (reading tensor " + tensor + ")");
      }
    }
    return *it->second;
  }

 private:
  std::string dir_;
  std::map<std::string, std::unique_ptr<detail::H5Reader>> readers_;
};

// Reads the blocks of saved piece p that runs touch, checks each block's CRC32C, and copies the runs to dst.
void copy_runs(Readers& readers, const TensorInfo& ti, const PieceInfo& p, const std::vector<detail::Run>& runs,
               char* dst, std::vector<char>& buf) {
  const size_t es = element_size(ti.dtype);
  const int64_t n = p.flat_end - p.flat_begin;
  std::set<int64_t> blocks;
  for (const auto& r : runs)
    for (int64_t b = r.src / kChecksumBlock; b <= (r.src + r.len - 1) / kChecksumBlock; ++b) blocks.insert(b);
  std::lock_guard<std::mutex> lock(detail::h5_mutex());
  auto& reader = readers.get(p.file, ti.name);
  for (int64_t b : blocks) {
    const int64_t lo = b * kChecksumBlock, hi = std::min(n, lo + kChecksumBlock);
    buf.resize(static_cast<size_t>(hi - lo) * es);
    reader.read(p.dataset, ti.dtype, n, lo, hi - lo, buf.data(), ti.name);
    const uint32_t got = crc32c(buf.data(), buf.size());
    if (got != p.crc[b])
      throw IoError(loom::detail::str_cat("checkpoint: checksum mismatch in tensor ", ti.name, ", dataset ", p.dataset,
                                          " of ", reader.path(), ", elements [", lo, ", ", hi, "): CRC32C ", got,
                                          ", the metadata says ", p.crc[b], " (the file is corrupted)"));
    for (const auto& r : runs) {
      const int64_t a = std::max(r.src, lo), z = std::min(r.src + r.len, hi);
      if (a >= z) continue;
      std::memcpy(dst + (r.dst + a - r.src) * es, buf.data() + (a - lo) * es, (z - a) * es);
    }
  }
}

void load_tensor(Readers& readers, const Metadata& md, const TensorInfo& ti, const LocalTensor& lt,
                 std::vector<char>& buf) {
  if (ti.shape != lt.global_shape)
    throw InvalidArgument("checkpoint: tensor " + ti.name + " has shape " + shape_str(ti.shape) + " in " + md.dir +
                          ", the model " + shape_str(lt.global_shape));
  if (ti.dtype != lt.data.dtype())
    throw InvalidArgument(loom::detail::str_cat("checkpoint: tensor ", ti.name, " is ", dtype_name(ti.dtype), " in ",
                                                md.dir, ", the model's is ", dtype_name(lt.data.dtype())));
  // A tensor on a GPU is filled through a host copy of the same (contiguous) layout, moved over once complete.
  const bool on_host = lt.data.device().is_cpu();
  Tensor host = on_host ? lt.data : empty(lt.data.sizes(), lt.data.dtype(), kCPU);
  char* base = static_cast<char*>(host.data_ptr());
  const size_t es = lt.data.element_size();
  for (const BoxPiece& w : detail::to_boxes(lt, 0, lt.flat_end - lt.flat_begin)) {
    int64_t covered = 0;
    for (const auto& p : ti.pieces) {
      auto runs = detail::overlap_runs(w, p.box_offset, p.box_size, p.flat_begin, p.flat_end);
      if (runs.empty()) continue;
      for (const auto& r : runs) covered += r.len;
      copy_runs(readers, ti, p, runs, base + w.local_offset * es, buf);
    }
    if (covered != w.end - w.begin)
      throw IoError(loom::detail::str_cat(
          "checkpoint: tensor ", ti.name, " in ", md.dir, ": the saved pieces cover ", covered, " of the ",
          w.end - w.begin, " elements this rank needs (box offset ", shape_str(w.box_offset), " size ",
          shape_str(w.box_size), ", range [", w.begin, ", ", w.end, ")); the checkpoint is incomplete"));
  }
  if (!on_host) ops::copy_(lt.data, ops::to(host, lt.data.device()));
}

// The names (and, where known here, global shapes) of the model tensors the target expects.
std::map<std::string, Shape> expected_model(const Target& t, const std::vector<LocalTensor>& locals) {
  std::map<std::string, Shape> out;
  const nn::Module& m = t.module ? *t.module : t.fsdp->module();
  for (const auto& [n, p] : m.named_parameters()) out["model/" + n] = {};
  for (const auto& lt : locals)
    if (lt.name.rfind("model/", 0) == 0) out[lt.name] = lt.global_shape;
  return out;
}

void check_same_model(const Metadata& md, const std::map<std::string, Shape>& want) {
  std::map<std::string, const TensorInfo*> have;
  for (const auto& ti : md.tensors)
    if (ti.name.rfind("model/", 0) == 0) have[ti.name] = &ti;
  std::vector<std::string> missing, unexpected, shapes;
  for (const auto& [n, s] : want) {
    auto it = have.find(n);
    if (it == have.end())
      missing.push_back(n.substr(6));
    else if (!s.empty() && it->second->shape != s)
      shapes.push_back(n.substr(6) + " (checkpoint " + shape_str(it->second->shape) + ", model " + shape_str(s) + ")");
  }
  for (const auto& [n, ti] : have)
    if (!want.count(n)) unexpected.push_back(n.substr(6));
  if (missing.empty() && unexpected.empty() && shapes.empty()) return;
  auto list = [](const std::vector<std::string>& v) {
    std::string s;
    for (size_t i = 0; i < v.size() && i < 20; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 20) s += ", … (" + std::to_string(v.size()) + " in all)";
    return s;
  };
  std::string msg = "checkpoint: " + md.dir + " holds another model (metadata from another model?):";
  if (!missing.empty()) msg += " missing from the checkpoint: " + list(missing) + ";";
  if (!unexpected.empty()) msg += " not in the model: " + list(unexpected) + ";";
  if (!shapes.empty()) msg += " shapes differ: " + list(shapes) + ";";
  throw InvalidArgument(msg);
}

// Gives the optimizer zero state tensors (named as in the checkpoint) and the saved steps and hyper-parameters, so the
// state can be read in place.
void prepare_optimizer(const Target& t, const Metadata& md) {
  std::set<std::string> state_names;
  for (const auto& ti : md.tensors)
    if (ti.name.rfind("optim/", 0) == 0) state_names.insert(ti.name.substr(6, ti.name.find('/', 6) - 6));
  if (state_names.empty())
    throw InvalidArgument("checkpoint: " + md.dir +
                          " holds no optimizer state; load without an optimizer in the Target");
  const Json& oj = json_at(md.json, "optimizer", md.dir + "/metadata.json");
  std::map<std::string, int64_t> saved_steps;
  int64_t max_step = 0;
  for (const auto& [k, v] : md.json.at("optimizer_steps").items()) {
    saved_steps[k] = v.get<int64_t>();
    max_step = std::max(max_step, saved_steps[k]);
  }
  nn::OptimizerState st = t.optimizer->state_dict();
  for (const auto& [k, v] : oj.at("hyper").items()) st.hyper[k] = v.get<double>();
  const auto& groups = oj.at("groups");
  if (groups.size() == st.param_groups.size()) {
    for (size_t g = 0; g < groups.size(); ++g) {
      st.param_groups[g].lr = groups[g].at("lr").get<double>();
      st.param_groups[g].weight_decay = groups[g].at("weight_decay").get<double>();
    }
  } else {
    LOOM_WARN("checkpoint: the optimizer has ", st.param_groups.size(), " parameter groups, the checkpoint ",
              groups.size(), "; keeping the optimizer's learning rates and weight decays");
  }
  // Each parameter's saved step, found by its names.
  const std::vector<Tensor> fsdp_params = t.fsdp ? t.fsdp->parameters() : std::vector<Tensor>{};
  const nn::NamedTensors named = t.module ? t.module->named_parameters() : nn::NamedTensors{};
  int64_t i = 0;
  st.state.clear();
  for (const auto& g : t.optimizer->param_groups()) {
    for (const auto& p : g.params) {
      if (!p.requires_grad()) {  // frozen: never stepped, so no state was saved (PyTorch's optimizers skip it too)
        ++i;
        continue;
      }
      int64_t step = -1;
      if (t.module) {
        for (const auto& [n, q] : named)
          if (q.is_same(p) && saved_steps.count(n)) step = saved_steps[n];
      } else {
        for (size_t j = 0; j < fsdp_params.size(); ++j)
          if (fsdp_params[j].is_same(p))
            for (const auto& s : t.fsdp->shard_pieces(j, p))
              if (saved_steps.count(s.name)) step = saved_steps[s.name];
      }
      nn::ParamState ps;
      ps.step = step >= 0 ? step : max_step;
      for (const auto& s : state_names) ps.tensors[s] = ops::zeros(p.sizes(), p.dtype(), p.device());
      st.state[i++] = std::move(ps);
    }
  }
  t.optimizer->load_state_dict(st);
}

TrainState load_from(const Metadata& md, const Target& target, int rank) {
  // A model-only checkpoint (saved without an optimizer, as `loomckpt import` writes one) gives the weights and the
  // step; the optimizer, the LR schedule and the generators start fresh.
  Target t = target;
  if (!json_find(md.json, "optimizer") && t.optimizer) {
    t.optimizer = nullptr;
    t.scheduler = nullptr;
    t.rngs.clear();
  }
  {
    std::vector<LocalTensor> model_only;
    Target no_opt = t;
    no_opt.optimizer = nullptr;
    model_only = detail::collect(no_opt);
    check_same_model(md, expected_model(t, model_only));
  }
  if (t.optimizer) prepare_optimizer(t, md);
  std::map<std::string, const TensorInfo*> by_name;
  for (const auto& ti : md.tensors) by_name[ti.name] = &ti;
  Readers readers(md.dir);
  std::vector<char> buf;
  {
    autograd::NoGradGuard ng;
    for (const auto& lt : detail::collect(t)) {
      auto it = by_name.find(lt.name);
      if (it == by_name.end())
        throw InvalidArgument("checkpoint: " + md.dir + " has no tensor " + lt.name +
                              " (saved with another optimizer?)");
      load_tensor(readers, md, *it->second, lt, buf);
      lt.data.bump_version();
    }
  }
  const std::string ctx = md.dir + "/metadata.json";
  TrainState s;
  s.step = md.step;
  for (const auto& [k, v] : json_at(md.json, "data_position", ctx).items())
    s.data_position[k] = std::stoll(v.get<std::string>());
  s.config = json_at(md.json, "config", ctx).get<std::string>();
  s.saved_dp_size = json_at(md.json, "dp_size", ctx).get<int>();
  if (t.scheduler) {
    const Json* ss = json_find(md.json, "scheduler_step");
    if (!ss) throw InvalidArgument("checkpoint: " + md.dir + " holds no LR scheduler state");
    t.scheduler->load_state_dict({ss->get<int64_t>()});
  }
  if (!t.rngs.empty()) {
    const auto& ranks = json_at(md.json, "ranks", ctx);
    if (rank >= static_cast<int>(ranks.size())) {
      LOOM_WARN("checkpoint: ", md.dir, " was saved by ", ranks.size(), " ranks; rank ", rank,
                " keeps its generators' states");
    } else {
      const Json& rng = json_at(ranks[rank], "rng", ctx);
      for (const auto& [name, g] : t.rngs) {
        const Json* st = json_find(rng, name);
        if (!st) throw InvalidArgument("checkpoint: " + md.dir + " holds no state of generator '" + name + "'");
        g->set_state(parse_u64(st->at(0)), parse_u64(st->at(1)));
      }
    }
  }
  return s;
}

}  // namespace

TrainState Checkpointer::load(const Target& t, const LoadOptions& opts) {
  wait();
  std::vector<std::string> candidates;
  if (!opts.dir.empty()) {
    candidates.push_back(opts.dir);
  } else {
    const std::string latest = latest_checkpoint(root_);
    if (!latest.empty()) candidates.push_back(latest);
  }
  if (opts.fall_back_to_previous) {
    auto all = complete_checkpoints(root_);
    for (auto it = all.rbegin(); it != all.rend(); ++it)
      if (std::find(candidates.begin(), candidates.end(), *it) == candidates.end() &&
          (candidates.empty() || *it < candidates.front()))
        candidates.push_back(*it);
  }
  if (candidates.empty()) throw IoError("checkpoint: no checkpoint under " + root_ + " (no `latest` file)");
  std::string reasons;
  for (const auto& dir : candidates) {
    std::string err;
    TrainState s;
    try {
      s = load_from(read_metadata(dir), t, group_->rank());
    } catch (const std::exception& e) {
      err = e.what();
    }
    // Every rank reads other pieces: the load succeeded only if it did everywhere.
    try {
      agree(err, "loading " + dir);
      return s;
    } catch (const IoError& e) {
      err = e.what();
    }
    if (!opts.fall_back_to_previous) throw IoError(err);
    LOOM_WARN("checkpoint: skipping ", dir, ": ", err);
    reasons += "\n  " + err;
  }
  throw IoError("checkpoint: no checkpoint under " + root_ + " could be loaded:" + reasons);
}

// ---------------------------------------------------------------------------------------------------------------

void verify_tensor(const Metadata& md, const TensorInfo& t) {
  Readers readers(md.dir);
  std::vector<char> buf;
  const size_t es = element_size(t.dtype);
  for (const auto& p : t.pieces) {
    const int64_t n = p.flat_end - p.flat_begin;
    std::lock_guard<std::mutex> lock(detail::h5_mutex());
    auto& reader = readers.get(p.file, t.name);
    for (int64_t b = 0; b * kChecksumBlock < n; ++b) {
      const int64_t lo = b * kChecksumBlock, hi = std::min(n, lo + kChecksumBlock);
      buf.resize((hi - lo) * es);
      reader.read(p.dataset, t.dtype, n, lo, hi - lo, buf.data(), t.name);
      const uint32_t got = crc32c(buf.data(), buf.size());
      if (got != p.crc[b])
        throw IoError(loom::detail::str_cat("checkpoint: checksum mismatch in tensor ", t.name, ", dataset ", p.dataset,
                                            " of ", reader.path(), ", elements [", lo, ", ", hi, ")"));
    }
  }
}

Tensor read_slice(const Metadata& md, const TensorInfo& t, int dim, int64_t start, int64_t length) {
  LOOM_CHECK(
      dim >= 0 && dim < static_cast<int>(t.shape.size()) && start >= 0 && length > 0 && start + length <= t.shape[dim],
      "read_slice: [", start, ", ", start + length, ") along dim ", dim, " is outside tensor ", t.name, " of shape ",
      shape_str(t.shape));
  Shape local = t.shape;
  local[dim] = length;
  Tensor out = ops::zeros(local, t.dtype);
  LocalTensor lt;
  lt.name = t.name;
  lt.global_shape = t.shape;
  lt.local_shape = local;
  lt.tp = parallel::TpPlacement{dim, t.shape, {{0, start, length}}};
  lt.flat_end = out.numel();
  lt.data = out;
  Readers readers(md.dir);
  std::vector<char> buf;
  load_tensor(readers, md, t, lt, buf);
  return out;
}

Tensor read_tensor(const Metadata& md, const std::string& name) {
  auto it = std::find_if(md.tensors.begin(), md.tensors.end(), [&](const auto& t) { return t.name == name; });
  if (it == md.tensors.end()) throw InvalidArgument("checkpoint: " + md.dir + " has no tensor " + name);
  Tensor out = ops::zeros(it->shape, it->dtype);
  LocalTensor lt;
  lt.name = name;
  lt.global_shape = lt.local_shape = it->shape;
  lt.flat_end = out.numel();
  lt.data = out;
  Readers readers(md.dir);
  std::vector<char> buf;
  load_tensor(readers, md, *it, lt, buf);
  return out;
}

}  // namespace loom::checkpoint
