#include "nn/mlp.h"

#include <typeinfo>

#include "autograd/functions.h"

namespace loom::nn {

GeluMLP::GeluMLP(const MLPOptions& o, Generator& gen, std::string type_name) : Module(std::move(type_name)) {
  const int64_t C = o.n_embd, Hd = o.hidden ? o.hidden : 4 * o.n_embd;
  c_fc = register_module("c_fc", std::make_shared<Linear>(C, Hd, LinearOptions{o.bias, o.init_std, o.dtype}, gen));
  c_proj =
      register_module("c_proj", std::make_shared<Linear>(Hd, C, LinearOptions{o.bias, o.out_init_std, o.dtype}, gen));
  act = register_module("act", std::make_shared<GELU>(ops::GeluApprox::kTanh));
  if (o.dropout > 0.0) dropout = register_module("dropout", std::make_shared<Dropout>(o.dropout, gen));
}

Tensor GeluMLP::forward(const Tensor& x) {
  // c_fc + tanh GELU as one op (bias and GELU in the matmul epilogue on CUDA; the same
  // bits as the two modules on CPU) when c_fc is a plain Linear (a tensor-parallel
  // subclass has its own forward) and neither module has hooks that would be skipped.
  const bool fuse = typeid(*c_fc) == typeid(Linear) && act->approximate == ops::GeluApprox::kTanh &&
                    !c_fc->has_hooks() && !act->has_hooks();
  Tensor a;
  if (fuse) {
    LOOM_CHECK(x.dim() >= 1 && x.size(-1) == c_fc->in_features, "Linear.forward: input of shape ", shape_str(x.sizes()),
               " does not end in in_features=", c_fc->in_features, " (weight ", shape_str(c_fc->weight.sizes()), ")");
    a = linear_gelu(x, c_fc->weight, c_fc->bias);
  } else {
    a = (*act)((*c_fc)(x));
  }
  Tensor h = (*c_proj)(a);
  return dropout ? (*dropout)(h) : h;
}

SwiGLUMLP::SwiGLUMLP(const MLPOptions& o, Generator& gen, std::string type_name) : Module(std::move(type_name)) {
  const int64_t C = o.n_embd, Hd = o.hidden ? o.hidden : 4 * o.n_embd;
  gate_proj =
      register_module("gate_proj", std::make_shared<Linear>(C, Hd, LinearOptions{o.bias, o.init_std, o.dtype}, gen));
  up_proj =
      register_module("up_proj", std::make_shared<Linear>(C, Hd, LinearOptions{o.bias, o.init_std, o.dtype}, gen));
  down_proj = register_module("down_proj",
                              std::make_shared<Linear>(Hd, C, LinearOptions{o.bias, o.out_init_std, o.dtype}, gen));
  act_fn = register_module("act_fn", std::make_shared<SiLU>());
}

Tensor SwiGLUMLP::forward(const Tensor& x) {
  return (*down_proj)(loom::mul((*act_fn)((*gate_proj)(x)), (*up_proj)(x)));
}

}  // namespace loom::nn
