// Shared by the parallel tests: the world group (from mpirun / torchrun
// variables, or a one-rank group when started alone), tiny GPT-2 and Llama
// models that every rank builds with the same weights, deterministic global
// batches, and single-rank AdamW training on the global batch as the reference
// every parallel layout must reproduce.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "collectives/process_group.h"
#include "nn/causal_lm.h"
#include "nn/gpt2.h"
#include "nn/llama.h"
#include "nn/optim.h"

namespace loom::ptest {

/// The world group of this test process (size 1 when not started by mpirun).
std::shared_ptr<collectives::ProcessGroup> world();

enum class Family { kGPT2, kLlama };
const char* family_name(Family f);
/// Both families, for TEST_P / loops.
inline std::vector<Family> families() { return {Family::kGPT2, Family::kLlama}; }

/// Shapes shared by the tiny models: every size divides by 4 so TP works on 4 ranks.
constexpr int64_t kVocab = 64, kSeq = 16, kBatch = 8, kLayers = 3;
nn::GPT2Config tiny_gpt2_config();    // n_embd 64, 4 heads, 3 layers, tied embeddings
nn::LlamaConfig tiny_llama_config();  // n_embd 64, 8 heads, 4 kv heads, hidden 128, 3 layers
/// A fresh model with the same weights on every rank (fixed seed).
std::shared_ptr<nn::CausalLM> tiny_model(Family f, DType dtype = DType::f32);

/// (B, T) i64 tokens and next-token targets of global step `step` (same on every rank).
struct Batch {
  Tensor idx, targets;
};
Batch global_batch(int step, int64_t batch = kBatch);
/// Rows [part * B/parts, (part+1) * B/parts) of b; B must divide by parts.
Batch rows(const Batch& b, int part, int parts);

/// The optimisation every layout runs: AdamW over nn::weight_decay_groups
/// (decay on >= 2-D weights), clipping to clip_norm before each step.
struct TrainConfig {
  int steps = 3;
  double lr = 1e-2;
  double weight_decay = 0.1;
  double clip_norm = 0.5;  // small enough that clipping is active on these models
};

/// What a training run yields: the single-rank references and the runs under test alike.
struct Run {
  std::vector<double> losses;      // per step, before the update
  std::vector<double> grad_norms;  // per step, before clipping
  nn::StateDict params;            // after the last step, by Hugging Face name
};
using Reference = Run;
/// Single-rank training on the global batches (computed once per family/config/blocks).
/// blocks > 1: each step's gradient is accumulated over `blocks` row blocks in
/// order (loss of block r scaled by 1/blocks) instead of one pass over the whole
/// batch. Mathematically the same; in f32 it sums every weight gradient in the
/// same blocks as data-parallel ranks do. Parameters are compared against this
/// one: AdamW divides each element's gradient by its own magnitude, so elements
/// whose exact gradient is 0 (GPT-2's key biases, which softmax ignores) turn
/// last-bit summation differences into updates of up to lr — measured: the
/// block-wise reference itself differs from the whole-batch one by up to 6e-3
/// after three steps, with no parallelism involved. Losses and gradient norms
/// agree with the whole-batch reference within 1e-5.
const Reference& single_rank_reference(Family f, const TrainConfig& cfg = {}, int blocks = 1);

/// Every tensor of want is in got with the same shape, and each element agrees
/// within rtol relative to (|want| + mean |want| of that tensor), so elements
/// near zero are compared at the tensor's scale. Reports the worst element.
void expect_state_near(const nn::StateDict& got, const nn::StateDict& want, double rtol = 1e-5);
/// The same tensors with the same f32 elements, bit for bit; a tensor that differs reports how many elements do.
void expect_state_bit_equal(const nn::StateDict& got, const nn::StateDict& want);
/// Step-by-step |got - want| <= rtol * |want|.
void expect_values_near(const std::vector<double>& got, const std::vector<double>& want, double rtol,
                        const std::string& what);

/// The most one bias-corrected AdamW step (AdamWOptions' betas) can move an element, in units of lr, whatever the
/// gradients: |m̂_t| / sqrt(v̂_t) <= (1-b1)/(1-b1^t) * sqrt((1-b2^t)/(1-b2)) * sqrt(sum_{k<t} (b1²/b2)^k) by
/// Cauchy-Schwarz (1 at t = 1, 1.003 at t = 3).
double adamw_step_bound(int t);

/// Parameters of training whose gradients were summed in another order than `want`'s (the backend's ring on more than
/// two ranks), after cfg.steps AdamW steps from the same start. The tolerance, per tensor:
/// - every element within 2 * lr * sum_t adamw_step_bound(t) of want (about 0.06 for the defaults): what any two
///   AdamW runs with the same lr can differ by at most, whatever their gradients. This is the only bound there is for
///   GPT-2's key biases, whose exact gradient is 0 (softmax ignores them): AdamW divides each element's gradient by its
///   own magnitude, so their updates are summation noise of up to lr per step.
/// - the relative L2 difference of the other elements at most 1e-4. Summing 4 ranks' gradients in another order
///   changes each by a few units in the last place; AdamW makes that visible only in the few elements whose gradient
///   is itself near that noise (measured on 4 ranks, gloo and mpi, DDP and FSDP: at most 0.4% of a tensor's elements
///   differ by more than 1e-5 relative, mostly elements on which whole-batch and 4-block single-rank training also
///   disagree), so the relative L2 difference stays at or below 1.1e-5 (worst: GPT-2's first mlp.c_proj.weight). A
///   reduction that loses, repeats or misplaces a chunk moves every element of it by up to lr (1e-2, against weights
///   of about 2e-2): relative differences of order 0.1.
void expect_state_near_reordered(const nn::StateDict& got, const nn::StateDict& want, const TrainConfig& cfg = {});

/// The data-parallel check of DDP and FSDP: train(false) — or train(true) when already_rank_ordered — gives losses
/// and gradient norms of `whole` (whole-batch single-rank training) within 1e-5. On more than two ranks the backend's
/// ring reduction adds the ranks' gradients in an order that differs per chunk: its parameters are checked against
/// `params_ref` with expect_state_near_reordered, then the run is repeated with the wrapper's rank-ordered reduction
/// (train(true)) and checked the same way; the parameters of the last run must equal `params_ref` (single-rank
/// training that adds in that order) within 1e-5. Uses the default TrainConfig.
void expect_matches_single_rank(const std::function<Run(bool rank_ordered)>& train, bool already_rank_ordered,
                                const Reference& whole, const Reference& params_ref);

/// Average of a scalar over a group (e.g. the loss of each data-parallel rank).
double group_mean(collectives::ProcessGroup& g, double v);

}  // namespace loom::ptest
