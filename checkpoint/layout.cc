#include "checkpoint/layout.h"

#include <algorithm>
#include <map>
#include <set>

#include "tensor/ops.h"

namespace loom::checkpoint::detail {

namespace {

int64_t prod(const Shape& s, size_t from) {
  int64_t p = 1;
  for (size_t i = from; i < s.size(); ++i) p *= s[i];
  return p;
}

// A 1-D view of the contiguous tensor t's elements [b, e).
Tensor flat_range(const Tensor& t, int64_t b, int64_t e) {
  LOOM_CHECK(t.is_contiguous(), "checkpoint: tensor of shape ", shape_str(t.sizes()),
             " is not contiguous; checkpoints read and write contiguous "
             "tensors in place");
  return Tensor(t.storage(), {e - b}, {1}, t.storage_offset() + b, t.dtype());
}

void add_replicated_or_tp(std::vector<LocalTensor>& out, const std::string& name, const Tensor& local,
                          const std::optional<parallel::TpPlacement>& tp, const Coords& c) {
  LocalTensor lt;
  lt.name = name;
  lt.local_shape = local.sizes();
  lt.global_shape = tp ? tp->global_shape : local.sizes();
  lt.tp = tp;
  lt.flat_begin = 0;
  lt.flat_end = local.numel();
  lt.data = flat_range(local, 0, local.numel());
  if (tp) {
    lt.replica_index = c.dp_rank;
    lt.replicas = c.dp_size;
  } else {
    lt.replica_index = c.dp_rank * c.tp_size + c.tp_rank;
    lt.replicas = c.dp_size * c.tp_size;
  }
  out.push_back(std::move(lt));
}

void add_sharded(std::vector<LocalTensor>& out, const std::string& prefix, const parallel::ShardedTensor& s,
                 const Coords& c) {
  LocalTensor lt;
  lt.name = prefix + s.name;
  lt.local_shape = s.shape;
  lt.global_shape = s.tp ? s.tp->global_shape : s.shape;
  lt.tp = s.tp;
  lt.flat_begin = s.flat_begin;
  lt.flat_end = s.flat_end;
  lt.data = s.local;
  LOOM_CHECK(s.local.is_contiguous() && s.local.numel() == s.flat_end - s.flat_begin, "checkpoint: FSDP piece of ",
             s.name, " holds ", s.local.numel(), " elements for the range [", s.flat_begin, ", ", s.flat_end, ")");
  // FSDP pieces of a TP-replicated parameter are the same on every tp rank, and under HSDP every piece is the same on
  // every replica of the FSDP group: each copy writes its share.
  lt.replica_index = (s.tp ? 0 : c.tp_rank) * c.replica_size + c.replica_rank;
  lt.replicas = (s.tp ? 1 : c.tp_size) * c.replica_size;
  out.push_back(std::move(lt));
}

// Persistent buffers of m by state_dict name (state_dict() leaves non-persistent ones out).
std::vector<std::pair<std::string, Tensor>> persistent_buffers(const nn::Module& m) {
  std::set<std::string> buffer_names;
  for (const auto& [n, b] : m.named_buffers()) buffer_names.insert(n);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [n, t] : m.state_dict())
    if (buffer_names.count(n)) out.emplace_back(n, t);
  return out;
}

}  // namespace

std::vector<BoxPiece> to_boxes(const LocalTensor& t, int64_t begin, int64_t end) {
  std::vector<BoxPiece> out;
  if (begin >= end) return out;
  const int64_t fb = t.flat_begin + begin,
                fe = t.flat_begin + end;  // in the TP-local flat tensor
  if (!t.tp) {
    Shape zero(t.global_shape.size(), 0);
    out.push_back({zero, t.global_shape, fb, fe, begin});
    return out;
  }
  const auto& p = *t.tp;
  const size_t d = static_cast<size_t>(p.dim);
  const int64_t inner = prod(t.local_shape, d + 1);
  const bool contiguous_segments = prod(t.local_shape, 0) == 0 || d == 0 || [&] {
    for (size_t i = 0; i < d; ++i)
      if (t.local_shape[i] != 1) return false;
    return true;
  }();
  if (!contiguous_segments) {
    LOOM_CHECK_T(::loom::Unsupported,
                 p.segments.size() == 1 && p.segments[0].local_start == 0 && p.segments[0].length == t.local_shape[d],
                 "checkpoint: tensor ", t.name, " is split along dim ", p.dim, " into ", p.segments.size(),
                 " segments; only one segment per rank is supported for a dim "
                 "other than 0");
    Shape off(t.global_shape.size(), 0);
    off[d] = p.segments[0].global_start;
    out.push_back({off, t.local_shape, fb, fe, begin});
    return out;
  }
  for (const auto& s : p.segments) {
    const int64_t sb = s.local_start * inner, se = (s.local_start + s.length) * inner;
    const int64_t lo = std::max(sb, fb), hi = std::min(se, fe);
    if (lo >= hi) continue;
    Shape off(t.global_shape.size(), 0), size = t.local_shape;
    off[d] = s.global_start;
    size[d] = s.length;
    out.push_back({off, size, lo - sb, hi - sb, lo - t.flat_begin});
  }
  return out;
}

std::vector<Run> overlap_runs(const BoxPiece& w, const std::vector<int64_t>& so, const std::vector<int64_t>& ss,
                              int64_t sb, int64_t se) {
  std::vector<Run> runs;
  const size_t nd = w.box_offset.size();
  if (nd == 0) {  // a scalar: one element
    if (w.begin < w.end && sb < se) runs.push_back({0, 0, 1});
    return runs;
  }
  // Same box: the flat ranges meet directly.
  if (so == w.box_offset && ss == w.box_size) {
    const int64_t lo = std::max(w.begin, sb), hi = std::min(w.end, se);
    if (lo < hi) runs.push_back({lo - sb, lo - w.begin, hi - lo});
    return runs;
  }
  std::vector<int64_t> lo(nd), hi(nd);
  for (size_t i = 0; i < nd; ++i) {
    lo[i] = std::max(w.box_offset[i], so[i]);
    hi[i] = std::min(w.box_offset[i] + w.box_size[i], so[i] + ss[i]);
    if (lo[i] >= hi[i]) return runs;
  }
  std::vector<int64_t> wstride(nd, 1), sstride(nd, 1);
  for (size_t i = nd - 1; i-- > 0;) {
    wstride[i] = wstride[i + 1] * w.box_size[i + 1];
    sstride[i] = sstride[i + 1] * ss[i + 1];
  }
  const int64_t len = hi[nd - 1] - lo[nd - 1];
  std::vector<int64_t> idx(lo.begin(), lo.end());
  while (true) {
    int64_t fw = 0, fs = 0;
    for (size_t i = 0; i < nd; ++i) {
      fw += (idx[i] - w.box_offset[i]) * wstride[i];
      fs += (idx[i] - so[i]) * sstride[i];
    }
    const int64_t t0 = std::max({int64_t{0}, w.begin - fw, sb - fs});
    const int64_t t1 = std::min({len, w.end - fw, se - fs});
    if (t0 < t1) runs.push_back({fs + t0 - sb, fw + t0 - w.begin, t1 - t0});
    // next row of the intersection (all dims but the last)
    size_t k = nd - 1;
    while (k > 0) {
      --k;
      if (++idx[k] < hi[k]) break;
      idx[k] = lo[k];
      if (k == 0) return runs;
    }
    if (nd == 1) return runs;
  }
}

std::vector<LocalTensor> collect(const Target& t) {
  LOOM_CHECK((t.module != nullptr) != (t.fsdp != nullptr),
             "checkpoint: a Target needs exactly one of module (single-rank, "
             "DDP or TP model) and fsdp");
  const Coords& c = t.coords;
  std::vector<LocalTensor> out;
  // Parameter tensor -> its checkpoint names (module path) / param index (FSDP path), for the optimizer.
  std::vector<std::pair<Tensor, std::string>> param_names;
  if (t.module) {
    for (const auto& [name, p] : t.module->named_parameters()) {
      add_replicated_or_tp(out, "model/" + name, p, parallel::tp_placement(p), c);
      param_names.emplace_back(p, name);
    }
    for (const auto& [name, b] : persistent_buffers(*t.module)) add_replicated_or_tp(out, "model/" + name, b, {}, c);
  } else {
    for (const auto& s : t.fsdp->sharded_state_dict()) add_sharded(out, "model/", s, c);
    for (const auto& [name, b] : persistent_buffers(t.fsdp->module()))
      add_replicated_or_tp(out, "model/" + name, b, {}, c);
  }
  if (!t.optimizer) return out;
  const std::vector<Tensor> fsdp_params = t.fsdp ? t.fsdp->parameters() : std::vector<Tensor>{};
  int64_t index = 0;
  for (const auto& group : t.optimizer->param_groups()) {
    for (const auto& p : group.params) {
      const int64_t i = index++;
      auto& st = t.optimizer->state(i);
      for (auto& [sname, tensor] : st.tensors) {
        if (t.module) {
          auto it =
              std::find_if(param_names.begin(), param_names.end(), [&](const auto& pn) { return pn.first.is_same(p); });
          LOOM_CHECK(it != param_names.end(), "checkpoint: optimizer parameter ", i,
                     " is not a parameter of the module being saved");
          LOOM_CHECK(tensor.sizes() == p.sizes(), "checkpoint: optimizer state ", sname, " of ", it->second,
                     " has shape ", shape_str(tensor.sizes()), ", the parameter ", shape_str(p.sizes()));
          add_replicated_or_tp(out, "optim/" + sname + "/" + it->second, tensor, parallel::tp_placement(p), c);
        } else {
          auto it = std::find_if(fsdp_params.begin(), fsdp_params.end(), [&](const Tensor& q) { return q.is_same(p); });
          LOOM_CHECK(it != fsdp_params.end(), "checkpoint: optimizer parameter ", i,
                     " is not one of FullyShard::parameters(); build the "
                     "optimizer over fsdp.param_groups()");
          for (const auto& s : t.fsdp->shard_pieces(static_cast<size_t>(it - fsdp_params.begin()), tensor))
            add_sharded(out, "optim/" + sname + "/", s, c);
        }
      }
    }
  }
  return out;
}

}  // namespace loom::checkpoint::detail
