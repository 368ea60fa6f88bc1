// Layout-independent description of what one rank holds of each tensor, shared by save and load: a local tensor
// (TP-local shape, optional TpPlacement) of which the rank holds the flat range [flat_begin, flat_end), mapped onto
// pieces of global boxes (a box per TP segment, or the whole tensor) with a flat range inside each box. Two layouts
// meet through these boxes: a load copies the intersection of every wanted piece with every saved piece.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"

namespace loom::checkpoint::detail {

/// One tensor as this rank holds it.
struct LocalTensor {
  std::string name;    // checkpoint name: "model/<param>" or "optim/<state>/<param>"
  Shape global_shape;  // the unsplit tensor
  Shape local_shape;   // TP-local shape (== global_shape without TP)
  std::optional<parallel::TpPlacement> tp;
  // The range [flat_begin, flat_end) of the TP-local flattened tensor held in `data`.
  int64_t flat_begin = 0, flat_end = 0;
  Tensor data;  // contiguous, flat_end - flat_begin elements (a view of the live tensor)
  // Ranks holding identical copies of this range: each writes its share only.
  int replica_index = 0, replicas = 1;
};

/// A run of a local range mapped into a global box.
struct BoxPiece {
  std::vector<int64_t> box_offset, box_size;
  int64_t begin = 0, end = 0;  // flat range within the box
  int64_t local_offset = 0;    // element offset of `begin` within LocalTensor::data
};

/// The boxes covering elements [begin, end) (relative to t.flat_begin) of t. Throws Unsupported for a placement whose
/// segments split a dimension other than the first into several non-contiguous runs.
std::vector<BoxPiece> to_boxes(const LocalTensor& t, int64_t begin, int64_t end);

/// Every tensor of the target: parameters, persistent buffers and (with an optimizer) its per-parameter state under
/// "optim/<state>/<param>". Tied aliases are left out (the tensor is saved under its first name).
std::vector<LocalTensor> collect(const Target& t);

/// A copy of `count` elements from src_offset of a saved piece to dst_offset of a local tensor.
struct Run {
  int64_t src = 0, dst = 0, len = 0;
};
/// The runs that move the overlap of saved piece (sbox, [sb, se)) into wanted piece w (dst offsets relative to
/// w.local_offset's data start), sorted by src.
std::vector<Run> overlap_runs(const BoxPiece& w, const std::vector<int64_t>& sbox_off,
                              const std::vector<int64_t>& sbox_size, int64_t sb, int64_t se);

}  // namespace loom::checkpoint::detail
