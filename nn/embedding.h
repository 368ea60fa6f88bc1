// Embedding: a lookup table weight (num_embeddings, embedding_dim), as torch.nn.Embedding.
#pragma once

#include "nn/module.h"
#include "tensor/random.h"

namespace loom::nn {

class Embedding : public Module {
 public:
  /// weight ~ normal(0, init_std) (GPT-2/Llama use 0.02).
  Embedding(int64_t num_embeddings, int64_t embedding_dim, double init_std = 0.02, DType dtype = DType::f32,
            Generator& gen = default_generator());
  /// indices i64 (...) -> (..., embedding_dim). Out-of-range indices throw naming the index.
  /// Virtual so a vocabulary-parallel embedding (parallel/tensor_parallel.h) can stand in for it.
  virtual Tensor forward(const Tensor& indices);
  Tensor operator()(const Tensor& indices) {
    return call(indices, [this](const Tensor& in) { return forward(in); });
  }
  std::string extra_repr() const override;

  int64_t num_embeddings, embedding_dim;
  Tensor weight;  // (num_embeddings, embedding_dim)
};

}  // namespace loom::nn
