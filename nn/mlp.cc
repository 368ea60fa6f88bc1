#include "nn/mlp.h"

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
  Tensor h = (*c_proj)((*act)((*c_fc)(x)));
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
