#include "nn/embedding.h"

#include "autograd/functions.h"
#include "nn/init.h"

namespace loom::nn {

Embedding::Embedding(int64_t num, int64_t dim, double init_std, DType dtype, Generator& gen)
    : Module("Embedding"), num_embeddings(num), embedding_dim(dim) {
  LOOM_CHECK(num > 0 && dim > 0, "Embedding: num_embeddings (", num, ") and embedding_dim (", dim,
             ") must be positive");
  weight = register_parameter("weight", empty({num, dim}, dtype));
  init::normal_(weight, 0.0, init_std, gen);
}

Tensor Embedding::forward(const Tensor& indices) { return embedding(weight, indices); }

std::string Embedding::extra_repr() const {
  return std::to_string(num_embeddings) + ", " + std::to_string(embedding_dim);
}

}  // namespace loom::nn
