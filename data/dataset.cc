#include "data/dataset.h"

#include <algorithm>

#include "tensor/error.h"
#include "tensor/ops.h"

namespace loom::data {

InMemoryDataset::InMemoryDataset(Tensor features, Tensor labels) {
  LOOM_CHECK(features.defined() && labels.defined(), "InMemoryDataset: features and labels must be defined");
  LOOM_CHECK(features.dim() >= 1 && labels.dim() == 1,
             "InMemoryDataset: features must be (N, ...) and labels (N); got ", shape_str(features.sizes()), " and ",
             shape_str(labels.sizes()));
  LOOM_CHECK(features.size(0) == labels.size(0), "InMemoryDataset: ", features.size(0), " feature rows but ",
             labels.size(0), " labels");
  LOOM_CHECK(!is_floating(labels.dtype()), "InMemoryDataset: labels must be integers, got ",
             dtype_name(labels.dtype()));
  features_ = ops::contiguous(features);
  labels_ = ops::contiguous(labels.dtype() == DType::i64 ? labels : ops::to(labels, DType::i64));
}

Batch InMemoryDataset::gather(const std::vector<int64_t>& indices) const {
  const int64_t n = size();
  for (int64_t i : indices) LOOM_CHECK(i >= 0 && i < n, "InMemoryDataset::gather: index ", i, " outside [0, ", n, ")");
  Tensor idx = from_vector(indices, {static_cast<int64_t>(indices.size())});
  return {ops::index_select(features_, 0, idx), ops::index_select(labels_, 0, idx)};
}

InMemoryDataset InMemoryDataset::slice(int64_t begin, int64_t end) const {
  LOOM_CHECK(0 <= begin && begin <= end && end <= size(), "InMemoryDataset::slice: [", begin, ", ", end,
             ") outside [0, ", size(), "]");
  return InMemoryDataset(ops::narrow(features_, 0, begin, end - begin), ops::narrow(labels_, 0, begin, end - begin));
}

namespace {
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  uint64_t state = seed * 0x2545f4914f6cdd1dull + static_cast<uint64_t>(epoch) + 1;
  for (int64_t i = n - 1; i > 0; --i) {
    // Unbiased draw in [0, i] by rejection.
    const uint64_t range = static_cast<uint64_t>(i) + 1;
    const uint64_t limit = UINT64_MAX - UINT64_MAX % range;
    uint64_t r;
    do r = splitmix64(state);
    while (r >= limit);
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(r % range)]);
  }
  return order;
}

std::vector<Shard> epoch_shards(int64_t n, int64_t epoch, const EpochPlan& plan, bool for_training) {
  const int64_t B = plan.global_batch;
  const int W = plan.world_size;
  LOOM_CHECK(B > 0, "epoch_shards: global_batch must be positive, got ", B);
  LOOM_CHECK(W > 0 && plan.rank >= 0 && plan.rank < W, "epoch_shards: rank ", plan.rank, " outside [0, world_size ", W,
             ")");
  LOOM_CHECK(B >= W, "epoch_shards: global batch ", B, " is smaller than the ", W,
             " ranks it is split across; use a global batch of at least ", W);
  std::vector<int64_t> order;
  if (plan.shuffle) {
    order = shuffled_indices(n, plan.seed, epoch);
  } else {
    order.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[static_cast<size_t>(i)] = i;
  }
  std::vector<Shard> out;
  for (int64_t start = 0; start < n; start += B) {
    const int64_t rows = std::min(B, n - start);
    if (for_training && (rows < W || (plan.drop_last && rows < B))) break;
    const int64_t base = rows / W, extra = rows % W;
    const int64_t r = plan.rank;
    Shard s;
    s.row_begin = r * base + std::min<int64_t>(r, extra);
    const int64_t count = base + (r < extra ? 1 : 0);
    s.global_rows = rows;
    s.indices.assign(order.begin() + start + s.row_begin, order.begin() + start + s.row_begin + count);
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace loom::data
