// Sharded, crash-safe checkpoints in HDF5. A checkpoint is a directory step_NNNNNNNN/ under a root: one HDF5 file per
// rank (rank_00000.h5, …) holding that rank's pieces of every tensor as 1-D datasets, and metadata.json giving every
// tensor's global shape, dtype and pieces (file, global box, flat range within the box, CRC32C per block of
// kChecksumBlock elements), plus step, data position, LR schedule, optimizer hyper-parameters, RNG states and the
// resolved config. It is written as step_NNNNNNNN.tmp/ and renamed into place once every rank file is synced and rank 0
// has written the metadata and the COMPLETE marker; the `latest` file is replaced (atomic rename) last. Loading onto
// any layout (world size, DDP/FSDP/TP) reads the overlapping ranges and checks every block it reads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/json.h"
#include "collectives/process_group.h"
#include "nn/lr_scheduler.h"
#include "nn/module.h"
#include "nn/optim.h"
#include "parallel/fully_shard.h"
#include "parallel/placement.h"
#include "tensor/random.h"

namespace loom::checkpoint {

/// Elements per checksum block: a load reads (and verifies) whole blocks, so a resharded load reads at most one block
/// more than it needs at each end of a range.
constexpr int64_t kChecksumBlock = 1 << 20;

/// Where this rank sits in the layout. Replicated data (DDP parameters, TP-replicated parameters) is written once: its
/// flat range is split across the ranks that hold copies, so they write in parallel.
struct Coords {
  int dp_rank = 0, dp_size = 1;  // data-parallel (DDP replicas, the FSDP group, or under HSDP all dp x fsdp ranks)
  int tp_rank = 0, tp_size = 1;  // tensor-parallel
  /// Hybrid sharding: this rank's replica of the FSDP group (its dp coordinate) and the number of replicas. Replicas
  /// hold identical FSDP pieces: each writes its share of every piece (as replicated tensors are written), every
  /// replica reads what its shard needs.
  int replica_rank = 0, replica_size = 1;
};

/// What a checkpoint is saved from and loaded into. Give module (a single-rank model, ddp.module(), or a TP model) or
/// fsdp (a FullyShard, whose model may be TP-converted), not both.
struct Target {
  nn::Module* module = nullptr;
  parallel::FullyShard* fsdp = nullptr;
  nn::Optimizer* optimizer = nullptr;      // optional: its per-parameter state is
                                           // saved sharded like the parameters
  nn::LRScheduler* scheduler = nullptr;    // optional
  std::map<std::string, Generator*> rngs;  // this rank's generators by name (restored per rank)
  Coords coords;
};

/// The training state besides tensors, given at save and returned by load.
struct TrainState {
  int64_t step = 0;
  /// Data-loader position, opaque to checkpoints (e.g. {"samples_seen": 40}); rank 0's is saved, so per-rank positions
  /// go there under keys "dp<r>/<key>" (see data_position_for).
  std::map<std::string, int64_t> data_position;
  /// The resolved config (any text, e.g. YAML).
  std::string config;
  /// Filled by load: the data-parallel size the checkpoint was saved with.
  int saved_dp_size = 0;
};

struct CheckpointOptions {
  /// Keep only the newest keep_last complete checkpoints (0: keep all); older ones are removed after the new one is
  /// complete.
  int keep_last = 0;
  /// Write in a background thread: save() snapshots this rank's share of the state (a copy on the tensors' device,
  /// kept and reused by the next save, so only the first save pays for allocating it) and returns; the thread streams
  /// the snapshot through a host staging buffer of staging_bytes, chunk by chunk, into the files. The next save
  /// waits for it. On a GPU the snapshot is device memory and host memory stays bounded by staging_bytes; on the CPU
  /// the snapshot itself is host memory (this rank's share).
  bool async = false;
  int64_t staging_bytes = 64 << 20;
  /// How long rank 0 waits for the other ranks' files when committing an async save.
  std::chrono::seconds commit_timeout{600};
  /// Test-only (leave empty): called by this rank's writer before each piece (HDF5 dataset) of its file, on the thread
  /// that writes it (the background thread of an async save), so a test can hold or slow a write in progress.
  std::function<void()> test_write_hook;
};

struct LoadOptions {
  /// A checkpoint directory to load; empty: the one `latest` names under the root.
  std::string dir;
  /// When the chosen checkpoint fails to load (incomplete, corrupted, missing file), try the previous complete one
  /// (newest first), logging why each was skipped. Off by default: an error is raised instead.
  bool fall_back_to_previous = false;
};

/// Saves and loads the checkpoints of one run under a root directory. Collective over `group`: every rank calls
/// save/load in the same order with the same Target structure.
class Checkpointer {
 public:
  Checkpointer(std::string root, std::shared_ptr<collectives::ProcessGroup> group, CheckpointOptions opts = {});
  /// Waits for an async save in flight (errors are logged, not thrown, from a destructor).
  ~Checkpointer();
  Checkpointer(const Checkpointer&) = delete;
  Checkpointer& operator=(const Checkpointer&) = delete;

  /// Saves t and s as step_<s.step>. Returns the final directory. Sync: returns when the checkpoint is complete and
  /// `latest` names it. Async: returns after the snapshot; wait() (or the next save) completes it. Throws IoError
  /// (every rank) when any rank could not write its file — the previous checkpoint stays intact.
  std::string save(const Target& t, const TrainState& s);
  /// Waits for the async save in flight; throws its error. No-op when none.
  void wait();
  /// Seconds the last save() blocked the caller.
  double last_blocking_seconds() const { return last_blocking_s_; }
  /// Seconds the last save took from start to complete (for async: until its commit).
  double last_total_seconds() const;

  /// Loads into t (parameters, buffers, optimizer state, scheduler, RNGs) and returns the train state. Throws
  /// IoError/InvalidArgument naming the file and tensor (see LoadOptions for fall-back).
  TrainState load(const Target& t, const LoadOptions& opts = {});

  const std::string& root() const { return root_; }

 private:
  struct Async;
  /// Collective: throws IoError on every rank when err is non-empty on any (its own message there, "<what> failed on
  /// rank r" elsewhere), so no rank goes on alone into the next collective.
  void agree(const std::string& err, const std::string& what);
  std::string root_;
  std::shared_ptr<collectives::ProcessGroup> group_;
  CheckpointOptions opts_;
  std::unique_ptr<Async> async_;
  double last_blocking_s_ = 0;
  double last_total_s_ = 0;
};

/// This rank's data-loader position when resuming with dp_size data-parallel ranks. A saved position holds global keys
/// (a position in one sample stream that any number of ranks split the same way, e.g. "samples_seen") and/or per-rank
/// keys "dp<r>/<key>" (rank r reading its own shard). Global keys carry over to any dp size; per-rank keys only to the
/// dp size they were saved with: otherwise samples would be skipped or repeated, and this throws InvalidArgument naming
/// the keys and both sizes. Returns the global keys plus this rank's own keys (prefix removed).
std::map<std::string, int64_t> data_position_for(const TrainState& s, int dp_size, int dp_rank);

/// The directory `latest` names under root, or "" when there is none.
std::string latest_checkpoint(const std::string& root);
/// Complete checkpoints under root (those with the COMPLETE marker), oldest first.
std::vector<std::string> complete_checkpoints(const std::string& root);

/// One piece of a tensor as recorded in the metadata.
struct PieceInfo {
  std::string file;                           // rank file name within the checkpoint directory
  std::string dataset;                        // HDF5 dataset path
  std::vector<int64_t> box_offset, box_size;  // the global box the piece lies in
  // The row-major element range [flat_begin, flat_end) within the box.
  int64_t flat_begin = 0, flat_end = 0;
  std::vector<uint32_t> crc;  // CRC32C per kChecksumBlock elements of the piece
};
struct TensorInfo {
  std::string name;
  Shape shape;
  DType dtype = DType::f32;
  std::vector<PieceInfo> pieces;
};
/// A checkpoint's metadata, read without loom's models (for tools).
struct Metadata {
  std::string dir;
  Json json;                        // the whole metadata.json
  std::vector<TensorInfo> tensors;  // in name order
  int64_t step = 0;
  int world_size = 0;
};
/// Reads dir/metadata.json. Throws IoError naming the directory when it lacks the COMPLETE marker or the metadata is
/// malformed.
Metadata read_metadata(const std::string& dir);
/// Reads the whole tensor `name` (global shape) on the cpu, verifying every block. Throws naming file and tensor.
Tensor read_tensor(const Metadata& md, const std::string& name);
/// Reads elements [start, start + length) along dimension dim of tensor t (all of the other dimensions), verifying
/// every block read; a streaming reader (export) takes a tensor slice by slice this way.
Tensor read_slice(const Metadata& md, const TensorInfo& t, int dim, int64_t start, int64_t length);
/// Reads every piece of t block by block and checks its CRC32C (memory: one block). Throws IoError naming the file,
/// dataset and tensor on a mismatch or a read failure.
void verify_tensor(const Metadata& md, const TensorInfo& t);

}  // namespace loom::checkpoint
