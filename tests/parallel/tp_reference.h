// Single-rank training that adds in the order tensor-parallel ranks do. Mathematically it is
// ptest::single_rank_reference; in f32 the order of additions matters for the parameters, because AdamW divides each
// element's gradient by its own magnitude, so an element whose gradient is ~0 (GPT-2's key biases, which softmax
// ignores, or any element whose steps nearly cancel) turns last-bit differences into visible updates (measured: up to
// 1e-3 relative after three steps between TP and whole-batch training). TP changes the order in three places: a
// row-parallel layer adds tp partial products, a column-parallel layer's input gradient adds tp partial products, and
// the vocabulary-parallel loss adds tp partial sums of exponentials. The replay keeps the unsplit model and its full
// parameters and computes exactly those pieces as the ranks do, each rank's block of a weight as its own matrix
// product, the blocks added in rank order (TpReduce::kRankOrdered, and any all-reduce on two ranks).
#pragma once

#include "tests/parallel/harness.h"

namespace loom::ptest {

/// tiny_model(f) with its linear layers and loss replaced by single-rank replays of a tp-rank split (GPT-2's fused
/// c_attn by q, k and v parts). Parameters stay the full ones under the usual names.
std::shared_ptr<nn::CausalLM> tp_replay_model(Family f, int tp);

/// Three AdamW steps (as single_rank_reference) of tp_replay_model(f, tp), each step's gradient accumulated over
/// `parts` row blocks of the global batch with loss / parts (what `parts` data-parallel ranks with a rank-ordered
/// reduction compute; parts = 1: the whole batch). Cached.
const Reference& tp_order_reference(Family f, int tp, int parts, const TrainConfig& cfg = {});

}  // namespace loom::ptest
