// Datasets for supervised examples: an in-memory dataset (features + labels), its per-epoch order (seeded shuffle, the
// same on every rank, each global batch split across ranks without overlap) and batching, and readers for the MNIST
// IDX format (gzipped or not) and for CSV files. Ranks are plain numbers here: data/ knows nothing of process groups.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace loom::data {

/// One batch: features (B, ...) and labels (B).
struct Batch {
  Tensor x;  // (B, ...) f32
  Tensor y;  // (B) i64
};

/// Features and labels held in memory. Row i of `features` (dim 0) goes with labels[i].
class InMemoryDataset {
 public:
  InMemoryDataset() = default;
  /// features (N, ...) any dtype, labels (N) integer; both are made contiguous. Throws InvalidArgument when the
  /// first dimensions differ or labels is not 1-D.
  InMemoryDataset(Tensor features, Tensor labels);
  int64_t size() const { return features_.defined() ? features_.size(0) : 0; }
  const Tensor& features() const { return features_; }
  const Tensor& labels() const { return labels_; }
  /// Rows `indices` (each in [0, size())) stacked: x in the features' dtype, y i64. Throws naming a bad index.
  Batch gather(const std::vector<int64_t>& indices) const;
  /// Rows [begin, end) as a new dataset sharing storage.
  InMemoryDataset slice(int64_t begin, int64_t end) const;

 private:
  Tensor features_, labels_;
};

/// A permutation of [0, n) from (seed, epoch) alone: the same on every rank and every run (splitmix64 + Fisher-Yates,
/// no library distribution whose output could differ between standard libraries).
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed, int64_t epoch);

/// How one epoch is cut into global batches and each global batch into per-rank parts.
struct EpochPlan {
  int64_t global_batch = 32;  // rows per step over all ranks
  bool shuffle = true;
  uint64_t seed = 0;
  /// Drop a last global batch smaller than global_batch. Without it, a last batch with fewer rows than ranks is still
  /// dropped (every rank must take part in every step), so `num_batches` says how many steps the epoch has.
  bool drop_last = false;
  int rank = 0, world_size = 1;
};

/// One rank's part of one global batch.
struct Shard {
  std::vector<int64_t> indices;  // dataset rows this rank takes (may be empty only in evaluation plans)
  int64_t row_begin = 0;         // where they start within the global batch
  int64_t global_rows = 0;       // rows of the global batch over all ranks
};

/// The batches of one epoch for one rank: global batch b holds rows order[b*B, min((b+1)*B, n)) of the epoch's order
/// (shuffled_indices, or 0..n-1), and rank r takes the r-th of world_size contiguous, near-equal parts (the first
/// (rows % world) ranks one row more). Ranks' parts never overlap and together cover the batch. Throws InvalidArgument
/// on a non-positive batch, a rank outside [0, world_size) or a global batch smaller than world_size.
std::vector<Shard> epoch_shards(int64_t n, int64_t epoch, const EpochPlan& plan, bool for_training = true);

// ---------------------------------------------------------------- readers

/// Reads an IDX file (the MNIST format: magic 0x0000 <type> <ndims>, big-endian u32 sizes, then the data), gzipped
/// or not (detected from the content). Types u8, i8, i16, i32, f32, f64; returns a tensor of that shape (u8 -> u8,
/// i8/i16/i32 -> i32, f32, f64). Throws IoError naming the file and the byte offset of what is wrong (bad magic,
/// unknown type, truncated data, trailing bytes).
Tensor read_idx(const std::string& path);

/// Reads an MNIST-style pair: images (N, H, W) u8 and labels (N). Returns features (N, 1, H, W) f32 scaled to [0, 1]
/// (value / 255) and labels i64. Throws IoError when the counts differ or the images are not 3-D / labels 1-D, naming
/// both files.
InMemoryDataset read_mnist(const std::string& images_path, const std::string& labels_path);

struct CsvOptions {
  char delimiter = ',';
  /// Which column holds the label; negative counts from the end (-1: the last).
  int label_column = -1;
  /// -1: detect (a first row that does not parse as numbers is a header); 0: no header; 1: header.
  int header = -1;
};
/// Reads a numeric CSV (gzipped or not): every row the same number of columns, the label column an integer, the
/// others numbers. Returns features (N, columns - 1) f32 and labels (N) i64. Throws IoError naming the file, line and
/// column of the first bad field or a row of the wrong width.
InMemoryDataset read_csv(const std::string& path, const CsvOptions& opts = {});

/// Reads a whole file, gunzipping it when it starts with the gzip magic. Throws IoError naming the file.
std::string read_maybe_gzipped(const std::string& path);

}  // namespace loom::data
