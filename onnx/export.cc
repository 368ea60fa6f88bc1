#include "onnx/export.h"

#include <onnx/onnx_pb.h>  // onnx-ml.pb.h with ONNX_API defined (ONNX_ML=1 from the ONNX CMake targets)

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include "autograd/autograd.h"
#include "tensor/op_trace.h"
#include "tensor/ops.h"

namespace loom::onnx {
namespace {

namespace pb = ::onnx;

/// A size as the exporter emits it: coef * product of dynamic symbols (empty: the constant coef).
struct SymInt {
  int64_t coef = 0;
  std::vector<int> syms;
  bool ok = true;  // false: depends on the symbols in a way that is not coef * product
  bool is_const() const { return ok && syms.empty(); }
};

/// A dynamic axis: its name, example size and the graph input/axis it is read from at run time.
struct Symbol {
  std::string name;
  int64_t base = 0;
  size_t input = 0;
  int64_t axis = 0;
};

/// What one trace leaves behind once it stops recording.
struct TraceData {
  std::vector<optrace::OpRecord> ops;
  std::vector<optrace::ValueInfo> values;
  std::vector<Tensor> tensors;
  std::vector<int64_t> outputs;
};

int32_t onnx_type(DType dt) {
  switch (dt) {
    case DType::f32:
      return pb::TensorProto_DataType_FLOAT;
    case DType::f64:
      return pb::TensorProto_DataType_DOUBLE;
    case DType::f16:
      return pb::TensorProto_DataType_FLOAT16;
    case DType::bf16:
      return pb::TensorProto_DataType_BFLOAT16;
    case DType::i32:
      return pb::TensorProto_DataType_INT32;
    case DType::i64:
      return pb::TensorProto_DataType_INT64;
    case DType::u8:
      return pb::TensorProto_DataType_UINT8;
  }
  throw ExportError("export_onnx: unknown dtype");
}

int64_t wrap(int64_t d, int64_t rank) { return d < 0 ? d + rank : d; }

class Exporter {
 public:
  Exporter(nn::Module& module, const ExportOptions& opts, std::vector<Symbol> symbols, std::vector<TraceData> traces,
           std::vector<std::string> input_names)
      : module_(module),
        opts_(opts),
        symbols_(std::move(symbols)),
        traces_(std::move(traces)),
        input_names_(std::move(input_names)) {
    for (auto& [name, m] : module_.named_modules()) module_names_[m] = name;
    for (auto& [name, t] : module_.named_parameters()) param_names_.emplace(t.impl_ptr().get(), name);
    for (auto& [name, t] : module_.named_buffers()) param_names_.emplace(t.impl_ptr().get(), name);
    graph_ = model_.mutable_graph();
  }

  void build(const std::vector<std::string>& output_names, const std::string& path);

 private:
  const TraceData& base() const { return traces_[0]; }

  // ---------------------------------------------------------------- sizes
  SymInt solve(int64_t v0, const std::vector<int64_t>& grown) const {
    SymInt s;
    s.coef = v0;
    int64_t denom = 1;
    for (size_t k = 0; k < symbols_.size(); ++k)
      if (grown[k] != v0) {
        s.syms.push_back(static_cast<int>(k));
        denom *= symbols_[k].base;
      }
    if (s.syms.empty()) return s;
    if (denom == 0 || v0 % denom != 0) {
      s.ok = false;
      return s;
    }
    s.coef = v0 / denom;
    for (int k : s.syms) {  // the trace where symbol k grew by one must agree
      int64_t p = s.coef;
      for (int j : s.syms) p *= j == k ? symbols_[j].base + 1 : symbols_[j].base;
      if (p != grown[k]) s.ok = false;
    }
    return s;
  }
  std::vector<SymInt> sym_shape(int64_t vid) const {
    std::vector<SymInt> out;
    const Shape& s0 = base().values[vid].sizes;
    for (size_t d = 0; d < s0.size(); ++d) {
      std::vector<int64_t> g;
      for (size_t k = 1; k < traces_.size(); ++k) g.push_back(traces_[k].values[vid].sizes.at(d));
      out.push_back(solve(s0[d], g));
    }
    return out;
  }
  SymInt sym_attr(size_t op, const std::string& name) const {
    const int64_t v0 = std::get<int64_t>(base().ops[op].attr(name));
    std::vector<int64_t> g;
    for (size_t k = 1; k < traces_.size(); ++k) g.push_back(std::get<int64_t>(traces_[k].ops[op].attr(name)));
    return solve(v0, g);
  }
  int64_t int_attr(size_t op, const std::string& name) const {
    SymInt s = sym_attr(op, name);
    if (!s.is_const()) fail(op, "attribute '" + name + "' follows a dynamic axis where only a constant is supported");
    return s.coef;
  }
  double float_attr(size_t op, const std::string& name) const { return std::get<double>(base().ops[op].attr(name)); }
  std::vector<int64_t> ints_attr(size_t op, const std::string& name) const {
    return std::get<std::vector<int64_t>>(base().ops[op].attr(name));
  }

  std::string where(size_t op) const {
    const auto& mods = base().ops[op].modules;
    if (mods.empty()) return "outside any module";
    const auto* m = static_cast<const nn::Module*>(mods.back());
    auto it = module_names_.find(const_cast<nn::Module*>(m));
    std::string path = it == module_names_.end() || it->second.empty() ? "<root>" : it->second;
    return "module '" + path + "' (" + m->type_name() + ")";
  }
  [[noreturn]] void fail(size_t op, const std::string& what) const {
    throw ExportError("export_onnx: op '" + base().ops[op].op + "' in " + where(op) + ": " + what);
  }

  // ---------------------------------------------------------------- graph building
  std::string fresh(const std::string& hint) { return hint + "_" + std::to_string(counter_++); }
  pb::NodeProto* add_node(const std::string& type, const std::vector<std::string>& ins,
                          const std::vector<std::string>& outs) {
    pb::NodeProto* n = graph_->add_node();
    n->set_op_type(type);
    n->set_name(type + "_" + std::to_string(graph_->node_size()));
    for (const auto& i : ins) n->add_input(i);
    for (const auto& o : outs) n->add_output(o);
    return n;
  }
  std::string node(const std::string& type, const std::vector<std::string>& ins) {
    std::string out = fresh(type);
    add_node(type, ins, {out});
    return out;
  }
  static void attr_i(pb::NodeProto* n, const std::string& name, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto_AttributeType_INT);
    a->set_i(v);
  }
  static void attr_f(pb::NodeProto* n, const std::string& name, double v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto_AttributeType_FLOAT);
    a->set_f(static_cast<float>(v));
  }
  static void attr_is(pb::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(pb::AttributeProto_AttributeType_INTS);
    for (int64_t x : v) a->add_ints(x);
  }
  std::string node_i(const std::string& type, const std::vector<std::string>& ins, const std::string& attr, int64_t v) {
    std::string out = fresh(type);
    attr_i(add_node(type, ins, {out}), attr, v);
    return out;
  }

  static void fill_scalar(pb::TensorProto* t, double v, DType dt) {
    t->set_data_type(onnx_type(dt));
    switch (dt) {
      case DType::f32:
        t->add_float_data(static_cast<float>(v));
        break;
      case DType::f64:
        t->add_double_data(v);
        break;
      case DType::i64:
        t->add_int64_data(static_cast<int64_t>(v));
        break;
      case DType::i32:
      case DType::u8:
        t->add_int32_data(static_cast<int32_t>(v));
        break;
      default:
        throw ExportError("export_onnx: constants of dtype " + std::string(dtype_name(dt)) + " are not supported");
    }
  }
  /// A 0-dim constant (or 1-element 1-D with shape1) of dtype dt.
  std::string const_scalar(double v, DType dt) {
    std::string name = fresh("const");
    pb::TensorProto* t = graph_->add_initializer();
    t->set_name(name);
    fill_scalar(t, v, dt);
    return name;
  }
  std::string const_i64(const std::vector<int64_t>& v, bool scalar = false) {
    std::string key = std::string(scalar ? "s" : "v");
    for (int64_t x : v) {
      key += ',';
      key += std::to_string(x);
    }
    auto it = const_cache_.find(key);
    if (it != const_cache_.end()) return it->second;
    std::string name = fresh("const_i64");
    pb::TensorProto* t = graph_->add_initializer();
    t->set_name(name);
    t->set_data_type(pb::TensorProto_DataType_INT64);
    if (!scalar) t->add_dims(static_cast<int64_t>(v.size()));
    for (int64_t x : v) t->add_int64_data(x);
    return const_cache_[key] = name;
  }
  /// 1-D int64 [1]: the run-time size of symbol k.
  std::string sym_dim(int k) {
    auto it = sym_cache_.find(k);
    if (it != sym_cache_.end()) return it->second;
    const Symbol& s = symbols_[k];
    std::string out = fresh("dim_" + s.name);
    auto* n = add_node("Shape", {input_names_[s.input]}, {out});
    attr_i(n, "start", s.axis);
    attr_i(n, "end", s.axis + 1);
    return sym_cache_[k] = out;
  }
  /// 1-D int64 tensor holding the sizes, computed from the inputs' shapes where they are dynamic.
  std::string shape_tensor(size_t op, const std::vector<SymInt>& sizes) {
    std::vector<int64_t> consts;
    bool all_const = true;
    for (const auto& s : sizes) {
      if (!s.ok) fail(op, "a size depends on the dynamic axes in a way the exporter cannot express");
      all_const = all_const && s.is_const();
      consts.push_back(s.coef);
    }
    if (all_const) return const_i64(consts);
    std::vector<std::string> parts;
    for (const auto& s : sizes) {
      if (s.is_const()) {
        parts.push_back(const_i64({s.coef}));
        continue;
      }
      std::string p = sym_dim(s.syms[0]);
      for (size_t j = 1; j < s.syms.size(); ++j) p = node("Mul", {p, sym_dim(s.syms[j])});
      if (s.coef != 1) p = node("Mul", {p, const_i64({s.coef})});
      parts.push_back(p);
    }
    return parts.size() == 1 ? parts[0] : node_i("Concat", parts, "axis", 0);
  }
  std::string cast(const std::string& x, DType from, DType to) {
    return from == to ? x : node_i("Cast", {x}, "to", onnx_type(to));
  }
  std::string to_bool(const std::string& x) { return node_i("Cast", {x}, "to", pb::TensorProto_DataType_BOOL); }

  // ---------------------------------------------------------------- values
  std::string name_of(size_t op, int64_t vid);
  DType dtype_of(int64_t vid) const { return base().values[vid].dtype; }
  int64_t rank_of(int64_t vid) const { return static_cast<int64_t>(base().values[vid].sizes.size()); }
  void emit(size_t op);
  std::string gelu(const std::string& x, DType dt, bool tanh_form);
  std::string linear(size_t op, const std::string& x, int64_t xid, const std::string& w, const std::string& b);
  std::string rms_norm(const std::string& x, const std::string& w, double eps, DType dt);

  nn::Module& module_;
  const ExportOptions& opts_;
  std::vector<Symbol> symbols_;
  std::vector<TraceData> traces_;
  std::vector<std::string> input_names_;
  std::unordered_map<nn::Module*, std::string> module_names_;
  std::unordered_map<const TensorImpl*, std::string> param_names_;
  std::unordered_map<int64_t, std::string> names_;  // value id -> ONNX value name
  std::unordered_map<std::string, std::string> const_cache_;
  std::unordered_map<int, std::string> sym_cache_;
  std::vector<std::pair<std::string, Tensor>> initializers_;  // parameters and buffers used
  pb::ModelProto model_;
  pb::GraphProto* graph_ = nullptr;
  int64_t counter_ = 0;
};

std::string Exporter::name_of(size_t op, int64_t vid) {
  if (vid < 0) return "";
  auto it = names_.find(vid);
  if (it != names_.end()) return it->second;
  const Tensor& t = base().tensors[vid];
  auto p = param_names_.find(t.impl_ptr().get());
  if (p != param_names_.end()) {
    initializers_.emplace_back(p->second, t);
    return names_[vid] = p->second;
  }
  fail(op, "input of shape " + shape_str(t.sizes()) +
               " is not a graph input, a parameter or buffer of the module, nor the output of a traced op "
               "(a tensor made outside tensor/ops.h inside the forward cannot be exported)");
}

std::string Exporter::gelu(const std::string& x, DType dt, bool tanh_form) {
  // loom's forms: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) or 0.5 x (1 + erf(x / sqrt 2)).
  std::string inner;
  if (tanh_form) {
    std::string x3 = node("Mul", {node("Mul", {x, x}), x});
    std::string u = node("Add", {x, node("Mul", {x3, const_scalar(0.044715, dt)})});
    inner = node("Tanh", {node("Mul", {u, const_scalar(std::sqrt(2.0 / M_PI), dt)})});
  } else {
    inner = node("Erf", {node("Mul", {x, const_scalar(M_SQRT1_2, dt)})});
  }
  std::string h = node("Mul", {x, const_scalar(0.5, dt)});
  return node("Mul", {h, node("Add", {inner, const_scalar(1.0, dt)})});
}

std::string Exporter::linear(size_t, const std::string& x, int64_t xid, const std::string& w, const std::string& b) {
  if (rank_of(xid) == 2) {  // Gemm: x @ w^T + b
    std::vector<std::string> ins{x, w};
    if (!b.empty()) ins.push_back(b);
    std::string out = fresh("Gemm");
    attr_i(add_node("Gemm", ins, {out}), "transB", 1);
    return out;
  }
  std::string wt = fresh("Transpose");
  attr_is(add_node("Transpose", {w}, {wt}), "perm", {1, 0});
  std::string y = node("MatMul", {x, wt});
  return b.empty() ? y : node("Add", {y, b});
}

std::string Exporter::rms_norm(const std::string& x, const std::string& w, double eps, DType dt) {
  std::string ms = fresh("ReduceMean");
  auto* n = add_node("ReduceMean", {node("Mul", {x, x})}, {ms});
  attr_is(n, "axes", {-1});
  attr_i(n, "keepdims", 1);
  std::string rstd = node("Reciprocal", {node("Sqrt", {node("Add", {ms, const_scalar(eps, dt)})})});
  return node("Mul", {node("Mul", {x, rstd}), w});
}

void Exporter::emit(size_t i) {
  const optrace::OpRecord& r = base().ops[i];
  const std::string& op = r.op;
  auto in = [&](size_t k) { return name_of(i, r.inputs.at(k)); };
  auto in_t = [&](size_t k, DType dt) { return cast(in(k), dtype_of(r.inputs.at(k)), dt); };
  const int64_t out_id = r.outputs.at(0);
  const DType odt = dtype_of(out_id);
  auto set = [&](const std::string& name, size_t k = 0) { names_[r.outputs.at(k)] = name; };
  auto out_shape = [&]() { return shape_tensor(i, sym_shape(out_id)); };

  static const std::unordered_map<std::string, std::string> kBinary = {
      {"add", "Add"}, {"sub", "Sub"},     {"mul", "Mul"},    {"div", "Div"},
      {"pow", "Pow"}, {"maximum", "Max"}, {"minimum", "Min"}};
  static const std::unordered_map<std::string, std::string> kUnary = {
      {"neg", "Neg"},   {"abs", "Abs"},         {"exp", "Exp"},   {"log", "Log"}, {"sqrt", "Sqrt"},
      {"tanh", "Tanh"}, {"sigmoid", "Sigmoid"}, {"relu", "Relu"}, {"sin", "Sin"}, {"cos", "Cos"}};
  static const std::unordered_map<std::string, std::string> kCompare = {
      {"eq", "Equal"}, {"lt", "Less"}, {"le", "LessOrEqual"}, {"gt", "Greater"}, {"ge", "GreaterOrEqual"}};

  if (op == "clone" || op == "contiguous" || op == "to_device" || (op == "cast" && dtype_of(r.inputs[0]) == odt)) {
    set(in(0));
  } else if (op == "cast") {
    set(cast(in(0), dtype_of(r.inputs[0]), odt));
  } else if (auto b = kBinary.find(op); b != kBinary.end()) {
    set(node(b->second, {in_t(0, odt), in_t(1, odt)}));
  } else if (op == "add_scalar" || op == "mul_scalar" || op == "pow_scalar" || op == "rsub_scalar" ||
             op == "rdiv_scalar") {
    std::string x = in_t(0, odt), c = const_scalar(float_attr(i, "value"), odt);
    if (op == "add_scalar") set(node("Add", {x, c}));
    if (op == "mul_scalar") set(node("Mul", {x, c}));
    if (op == "pow_scalar") set(node("Pow", {x, c}));
    if (op == "rsub_scalar") set(node("Sub", {c, x}));
    if (op == "rdiv_scalar") set(node("Div", {c, x}));
  } else if (auto c = kCompare.find(op); c != kCompare.end() || op == "ne") {
    const DType ct = promote_types(dtype_of(r.inputs[0]), dtype_of(r.inputs[1]));
    std::string y = node(op == "ne" ? "Equal" : c->second, {in_t(0, ct), in_t(1, ct)});
    if (op == "ne") y = node("Not", {y});
    set(node_i("Cast", {y}, "to", onnx_type(DType::u8)));
  } else if (op == "gt_scalar" || op == "lt_scalar") {
    const DType dt = dtype_of(r.inputs[0]);
    std::string y = node(op == "gt_scalar" ? "Greater" : "Less", {in(0), const_scalar(float_attr(i, "value"), dt)});
    set(node_i("Cast", {y}, "to", onnx_type(DType::u8)));
  } else if (auto u = kUnary.find(op); u != kUnary.end()) {
    set(node(u->second, {in_t(0, odt)}));
  } else if (op == "rsqrt") {
    set(node("Reciprocal", {node("Sqrt", {in_t(0, odt)})}));
  } else if (op == "gelu") {
    set(gelu(in_t(0, odt), odt, int_attr(i, "tanh") != 0));
  } else if (op == "silu") {
    std::string x = in_t(0, odt);
    set(node("Mul", {x, node("Sigmoid", {x})}));
  } else if (op == "clamp") {
    set(node("Clip", {in(0), const_scalar(float_attr(i, "lo"), odt), const_scalar(float_attr(i, "hi"), odt)}));
  } else if (op == "view" || op == "reshape") {
    set(node("Reshape", {in(0), out_shape()}));
  } else if (op == "flatten") {
    const int64_t rank = rank_of(r.inputs[0]);
    const int64_t s = wrap(int_attr(i, "start_dim"), rank), e = wrap(int_attr(i, "end_dim"), rank);
    if (s == 1 && e == rank - 1)
      set(node_i("Flatten", {in(0)}, "axis", 1));
    else
      set(node("Reshape", {in(0), out_shape()}));
  } else if (op == "permute" || op == "transpose") {
    const int64_t rank = rank_of(r.inputs[0]);
    std::vector<int64_t> perm(rank);
    for (int64_t d = 0; d < rank; ++d) perm[d] = d;
    if (op == "permute") {
      perm = ints_attr(i, "dims");
      for (auto& d : perm) d = wrap(d, rank);
    } else if (rank > 0) {
      std::swap(perm[wrap(int_attr(i, "dim0"), rank)], perm[wrap(int_attr(i, "dim1"), rank)]);
    }
    std::string y = fresh("Transpose");
    attr_is(add_node("Transpose", {in(0)}, {y}), "perm", perm);
    set(y);
  } else if (op == "slice") {
    const SymInt start = sym_attr(i, "start"), end = sym_attr(i, "end");
    set(node("Slice", {in(0), shape_tensor(i, {start}), shape_tensor(i, {end}), const_i64({int_attr(i, "dim")}),
                       const_i64({int_attr(i, "step")})}));
  } else if (op == "select") {
    set(node_i("Gather", {in(0), const_i64({int_attr(i, "index")}, true)}, "axis", int_attr(i, "dim")));
  } else if (op == "expand") {
    set(node("Expand", {in(0), out_shape()}));
  } else if (op == "unsqueeze") {
    set(node("Unsqueeze", {in(0), const_i64({int_attr(i, "dim")})}));
  } else if (op == "cat") {
    std::vector<std::string> parts;
    for (size_t k = 0; k < r.inputs.size(); ++k) parts.push_back(in_t(k, odt));
    set(node_i("Concat", parts, "axis", int_attr(i, "dim")));
  } else if (op == "index_select") {
    set(node_i("Gather", {in(0), in(1)}, "axis", int_attr(i, "dim")));
  } else if (op == "where") {
    set(node("Where", {to_bool(in(0)), in_t(1, odt), in_t(2, odt)}));
  } else if (op == "masked_fill") {
    set(node("Where", {to_bool(in(1)), const_scalar(float_attr(i, "value"), odt), in(0)}));
  } else if (op == "causal_mask") {
    const SymInt T = sym_attr(i, "T");
    auto* n = add_node("ConstantOfShape", {shape_tensor(i, {T, T})}, {fresh("ones")});
    auto* a = n->add_attribute();
    a->set_name("value");
    a->set_type(pb::AttributeProto_AttributeType_TENSOR);
    a->mutable_t()->add_dims(1);
    fill_scalar(a->mutable_t(), 1.0, DType::f32);
    std::string upper = fresh("Trilu");  // 1 strictly above the diagonal: the keys a query must not see
    attr_i(add_node("Trilu", {n->output(0), const_i64({1}, true)}, {upper}), "upper", 1);
    set(node_i("Cast", {upper}, "to", onnx_type(DType::u8)));
  } else if (op == "full") {
    auto* n = add_node("ConstantOfShape", {out_shape()}, {fresh("full")});
    auto* a = n->add_attribute();
    a->set_name("value");
    a->set_type(pb::AttributeProto_AttributeType_TENSOR);
    a->mutable_t()->add_dims(1);
    fill_scalar(a->mutable_t(), float_attr(i, "value"), odt);
    set(n->output(0));
  } else if (op == "arange") {
    // Range(start, start + n * step, step) with n the output's length (dynamic when it follows an axis).
    const SymInt n = sym_shape(out_id).at(0);
    const double start = float_attr(i, "start"), step = float_attr(i, "step");
    std::string limit;
    if (n.is_const()) {
      limit = const_scalar(start + static_cast<double>(n.coef) * step, odt);
    } else {
      std::string len = node("Squeeze", {shape_tensor(i, {n}), const_i64({0})});
      len = cast(len, DType::i64, odt);
      limit = node("Add", {node("Mul", {len, const_scalar(step, odt)}), const_scalar(start, odt)});
    }
    set(node("Range", {const_scalar(start, odt), limit, const_scalar(step, odt)}));
  } else if (op == "sum" || op == "mean") {
    const std::vector<int64_t> dims = ints_attr(i, "dims");
    const int64_t keep = int_attr(i, "keepdim");
    std::string x = in_t(0, odt), y = fresh(op == "sum" ? "ReduceSum" : "ReduceMean");
    if (op == "sum") {
      std::vector<std::string> ins{x};
      if (!dims.empty()) ins.push_back(const_i64(dims));
      attr_i(add_node("ReduceSum", ins, {y}), "keepdims", keep);
    } else {
      auto* n = add_node("ReduceMean", {x}, {y});
      if (!dims.empty()) attr_is(n, "axes", dims);
      attr_i(n, "keepdims", keep);
    }
    set(y);
  } else if (op == "max") {
    set(node_i("ReduceMax", {in(0)}, "keepdims", 0));
  } else if (op == "max_dim") {
    const int64_t dim = int_attr(i, "dim"), keep = int_attr(i, "keepdim");
    std::string v = fresh("ReduceMax"), ix = fresh("ArgMax");
    auto* n = add_node("ReduceMax", {in(0)}, {v});
    attr_is(n, "axes", {dim});
    attr_i(n, "keepdims", keep);
    auto* m = add_node("ArgMax", {in(0)}, {ix});
    attr_i(m, "axis", dim);
    attr_i(m, "keepdims", keep);
    set(v, 0);
    set(ix, 1);
  } else if (op == "matmul") {
    set(node("MatMul", {in(0), in(1)}));
  } else if (op == "linear") {
    set(linear(i, in(0), r.inputs[0], in(1), in(2)));
  } else if (op == "softmax" || op == "log_softmax") {
    set(node_i(op == "softmax" ? "Softmax" : "LogSoftmax", {in(0)}, "axis", int_attr(i, "dim")));
  } else if (op == "layer_norm" || op == "add_layer_norm") {
    const bool add = op == "add_layer_norm";
    std::string x = add ? node("Add", {in_t(0, odt), in_t(1, odt)}) : in(0);
    const size_t wi = add ? 2 : 1;
    std::string w = in(wi), b = in(wi + 1);
    if (w.empty()) {
      const int64_t C = base().values[out_id].sizes.back();
      std::string shape = const_i64({C});
      auto* n = add_node("ConstantOfShape", {shape}, {fresh("ones")});
      auto* a = n->add_attribute();
      a->set_name("value");
      a->set_type(pb::AttributeProto_AttributeType_TENSOR);
      a->mutable_t()->add_dims(1);
      fill_scalar(a->mutable_t(), 1.0, odt);
      w = n->output(0);
    }
    std::vector<std::string> ins{x, w};
    if (!b.empty()) ins.push_back(b);
    std::string y = fresh("LayerNormalization");
    auto* n = add_node("LayerNormalization", ins, {y});
    attr_i(n, "axis", -1);
    attr_f(n, "epsilon", float_attr(i, "eps"));
    if (add) {
      set(x, 0);
      set(y, 1);
    } else {
      set(y);
    }
  } else if (op == "rms_norm") {
    set(rms_norm(in(0), in(1), float_attr(i, "eps"), odt));
  } else if (op == "add_rms_norm") {
    std::string x = node("Add", {in_t(0, odt), in_t(1, odt)});
    set(x, 0);
    set(rms_norm(x, in(2), float_attr(i, "eps"), odt), 1);
  } else if (op == "embedding") {
    set(node_i("Gather", {in(0), in(1)}, "axis", 0));
  } else if (op == "rope") {
    // Hugging Face's rotate-half on pairs (i, i + D/2): [x1 c - x2 s, x2 c + x1 s], s negated for the inverse.
    const int64_t D = base().values[r.inputs[0]].sizes.back();
    std::string x1 = fresh("x1"), x2 = fresh("x2");
    auto* n = add_node("Split", {in(0), const_i64({D / 2, D / 2})}, {x1, x2});
    attr_i(n, "axis", -1);
    std::string c = in_t(1, odt), s = in_t(2, odt);
    if (int_attr(i, "inverse") != 0) s = node("Neg", {s});
    std::string lo = node("Sub", {node("Mul", {x1, c}), node("Mul", {x2, s})});
    std::string hi = node("Add", {node("Mul", {x2, c}), node("Mul", {x1, s})});
    set(node_i("Concat", {lo, hi}, "axis", -1));
  } else if (op == "conv2d") {
    std::vector<int64_t> pad = ints_attr(i, "padding");
    std::vector<std::string> ins{in(0), in(1)};
    if (r.inputs[2] >= 0) ins.push_back(in(2));
    std::string y = fresh("Conv");
    auto* n = add_node("Conv", ins, {y});
    attr_is(n, "strides", ints_attr(i, "stride"));
    attr_is(n, "pads", {pad[0], pad[1], pad[0], pad[1]});
    attr_is(n, "dilations", ints_attr(i, "dilation"));
    attr_i(n, "group", int_attr(i, "groups"));
    set(y);
  } else if (op == "max_pool2d" || op == "avg_pool2d") {
    // MaxPool's Indices (flat over the whole tensor) differ from loom's (per plane): only the values are exported.
    const bool is_max = op == "max_pool2d";
    std::vector<int64_t> pad = ints_attr(i, "padding");
    std::string y = fresh(is_max ? "MaxPool" : "AveragePool");
    auto* n = add_node(is_max ? "MaxPool" : "AveragePool", {in(0)}, {y});
    attr_is(n, "kernel_shape", ints_attr(i, "kernel"));
    attr_is(n, "strides", ints_attr(i, "stride"));
    attr_is(n, "pads", {pad[0], pad[1], pad[0], pad[1]});
    attr_i(n, "ceil_mode", int_attr(i, "ceil_mode"));
    if (is_max)
      attr_is(n, "dilations", ints_attr(i, "dilation"));
    else
      attr_i(n, "count_include_pad", int_attr(i, "count_include_pad"));
    set(y);
  } else if (op == "adaptive_avg_pool2d") {
    const std::vector<int64_t> os = ints_attr(i, "output_size");
    const Shape& xs = base().values[r.inputs[0]].sizes;
    const int64_t H = xs[xs.size() - 2], W = xs.back();
    const auto hw = sym_shape(r.inputs[0]);
    if (!hw[hw.size() - 2].is_const() || !hw.back().is_const())
      fail(i, "adaptive pooling over dynamic spatial dims is not supported");
    if (os[0] == 1 && os[1] == 1) {
      set(node("GlobalAveragePool", {in(0)}));
    } else if (H % os[0] == 0 && W % os[1] == 0) {  // equal windows: a plain average pool
      std::string y = fresh("AveragePool");
      auto* n = add_node("AveragePool", {in(0)}, {y});
      attr_is(n, "kernel_shape", {H / os[0], W / os[1]});
      attr_is(n, "strides", {H / os[0], W / os[1]});
      set(y);
    } else {
      fail(i, "output size does not divide the input's spatial size (unequal windows have no ONNX operator)");
    }
  } else if (op == "batch_norm") {
    if (int_attr(i, "training") != 0)
      fail(i,
           "batch statistics (training mode) cannot be exported; the exporter runs the module in eval mode, so a "
           "batch_norm call with training=true ignores the module's flag");
    if (r.inputs[3] < 0) fail(i, "no running statistics (track_running_stats=false) to export");
    const int64_t C = base().values[r.inputs[0]].sizes.at(1);
    auto filled = [&](double v) {
      auto* n = add_node("ConstantOfShape", {const_i64({C})}, {fresh("bn_const")});
      auto* a = n->add_attribute();
      a->set_name("value");
      a->set_type(pb::AttributeProto_AttributeType_TENSOR);
      a->mutable_t()->add_dims(1);
      fill_scalar(a->mutable_t(), v, odt);
      return n->output(0);
    };
    std::string w = r.inputs[1] >= 0 ? in(1) : filled(1.0), b = r.inputs[2] >= 0 ? in(2) : filled(0.0);
    std::string y = fresh("BatchNormalization");
    auto* n = add_node("BatchNormalization", {in(0), w, b, in_t(3, odt), in_t(4, odt)}, {y});
    attr_f(n, "epsilon", float_attr(i, "eps"));
    set(y);
  } else {
    fail(i, "no ONNX mapping for this op (supported: the ops GPT-2, Llama and ConvNets use in eval mode)");
  }
}

void Exporter::build(const std::vector<std::string>& output_names, const std::string& path) {
  const TraceData& t0 = base();
  const size_t n_in = input_names_.size();
  // Live ops: those an output depends on (ops run inside other ops, or whose results are dropped, are left out).
  std::vector<bool> live(t0.ops.size(), false);
  std::vector<int64_t> stack(t0.outputs.begin(), t0.outputs.end());
  std::vector<bool> seen(t0.values.size(), false);
  while (!stack.empty()) {
    const int64_t v = stack.back();
    stack.pop_back();
    if (v < 0 || seen[v]) continue;
    seen[v] = true;
    const int64_t p = t0.values[v].producer;
    if (p < 0 || live[p]) continue;
    live[p] = true;
    for (int64_t u : t0.ops[p].inputs) stack.push_back(u);
  }
  for (size_t k = 0; k < n_in; ++k) names_[static_cast<int64_t>(k)] = input_names_[k];
  for (size_t i = 0; i < t0.ops.size(); ++i)
    if (live[i]) emit(i);

  model_.set_ir_version(8);
  model_.set_producer_name("loom");
  model_.set_producer_version("0.1.0");
  auto* opset = model_.add_opset_import();
  opset->set_domain("");
  opset->set_version(opts_.opset);
  graph_->set_name("loom_" + module_.type_name());

  auto value_info = [&](pb::ValueInfoProto* vi, const std::string& name, int64_t vid) {
    vi->set_name(name);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx_type(t0.values[vid].dtype));
    auto* shape = tt->mutable_shape();
    const auto sym = sym_shape(vid);
    for (size_t d = 0; d < sym.size(); ++d) {
      auto* dim = shape->add_dim();
      if (sym[d].is_const())
        dim->set_dim_value(sym[d].coef);
      else if (sym[d].ok && sym[d].syms.size() == 1 && sym[d].coef == 1)
        dim->set_dim_param(symbols_[sym[d].syms[0]].name);
      else
        dim->set_dim_param(name + "_dim" + std::to_string(d));
    }
  };
  for (size_t k = 0; k < n_in; ++k) value_info(graph_->add_input(), input_names_[k], static_cast<int64_t>(k));
  for (size_t k = 0; k < t0.outputs.size(); ++k) {
    const int64_t vid = t0.outputs[k];
    std::string src = names_.count(vid) ? names_[vid] : name_of(0, vid);
    add_node("Identity", {src}, {output_names[k]});
    value_info(graph_->add_output(), output_names[k], vid);
  }

  // Initializers: every parameter and buffer the graph reads, raw little-endian bytes.
  int64_t total = 0;
  for (auto& [name, t] : initializers_) total += t.numel() * static_cast<int64_t>(t.element_size());
  // protobuf cannot hold a message over 2 GB: beyond that (less a margin for the graph) the weights go beside it.
  const bool external = opts_.external_data == "always" ||
                        (opts_.external_data == "auto" && total > (int64_t{2} << 30) - (int64_t{64} << 20));
  LOOM_CHECK_T(ExportError,
               opts_.external_data == "always" || opts_.external_data == "auto" || opts_.external_data == "never",
               "export_onnx: external_data must be auto, always or never, got '", opts_.external_data, "'");
  const std::string data_path = path + ".data";
  std::ofstream data;
  if (external) {
    data.open(data_path, std::ios::binary | std::ios::trunc);
    if (!data) throw IoError("export_onnx: cannot write " + data_path);
  }
  int64_t offset = 0;
  for (auto& [name, t] : initializers_) {
    Tensor c = ops::contiguous(t);
    pb::TensorProto* tp = graph_->add_initializer();
    tp->set_name(name);
    tp->set_data_type(onnx_type(c.dtype()));
    for (int64_t d : c.sizes()) tp->add_dims(d);
    const int64_t bytes = c.numel() * static_cast<int64_t>(c.element_size());
    if (external) {
      data.write(static_cast<const char*>(c.data_ptr()), bytes);
      tp->set_data_location(pb::TensorProto_DataLocation_EXTERNAL);
      auto kv = [&](const std::string& k, const std::string& v) {
        auto* e = tp->add_external_data();
        e->set_key(k);
        e->set_value(v);
      };
      kv("location", std::filesystem::path(data_path).filename().string());
      kv("offset", std::to_string(offset));
      kv("length", std::to_string(bytes));
      offset += bytes;
    } else {
      tp->set_raw_data(c.data_ptr(), static_cast<size_t>(bytes));
    }
  }
  if (external && !data.flush()) throw IoError("export_onnx: writing " + data_path + " failed (disk full?)");
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw IoError("export_onnx: cannot write " + path + " (does its directory exist?)");
  if (!model_.SerializeToOstream(&f) || !f.flush())
    throw IoError("export_onnx: writing " + path + " failed (disk full?)");
}

}  // namespace

void export_onnx(nn::Module& module, const ForwardFn& forward, const std::vector<Tensor>& example_inputs,
                 const std::string& path, const ExportOptions& opts) {
  LOOM_CHECK_T(ExportError, opts.opset >= 17, "export_onnx: opset ", opts.opset,
               " is too old; 17 or later is needed (LayerNormalization)");
  LOOM_CHECK_T(ExportError, !example_inputs.empty(), "export_onnx: no example inputs");
  std::vector<std::string> in_names = opts.input_names;
  for (size_t k = in_names.size(); k < example_inputs.size(); ++k) in_names.push_back("input_" + std::to_string(k));
  LOOM_CHECK_T(ExportError, in_names.size() == example_inputs.size(), "export_onnx: ", in_names.size(),
               " input names for ", example_inputs.size(), " example inputs");
  for (const auto& t : example_inputs)
    LOOM_CHECK_T(ExportError, t.defined() && t.device().is_cpu(), "export_onnx: example inputs must be CPU tensors");

  // Dynamic symbols, read at run time from the first input axis that carries them.
  std::vector<Symbol> symbols;
  std::vector<std::vector<std::pair<int64_t, int>>> axes_of(example_inputs.size());  // input -> (axis, symbol)
  for (const auto& [name, axes] : opts.dynamic_axes) {
    auto it = std::find(in_names.begin(), in_names.end(), name);
    if (it == in_names.end()) continue;  // an output's axes only name its dims
    const size_t k = static_cast<size_t>(it - in_names.begin());
    for (const auto& [axis0, sym] : axes) {
      const int64_t axis = wrap(axis0, example_inputs[k].dim());
      LOOM_CHECK_T(ExportError, axis >= 0 && axis < example_inputs[k].dim(), "export_onnx: dynamic axis ", axis0,
                   " of input '", name, "' is out of range for shape ", shape_str(example_inputs[k].sizes()));
      auto s = std::find_if(symbols.begin(), symbols.end(), [&](const Symbol& x) { return x.name == sym; });
      int idx;
      if (s == symbols.end()) {
        symbols.push_back({sym, example_inputs[k].size(axis), k, axis});
        idx = static_cast<int>(symbols.size()) - 1;
      } else {
        idx = static_cast<int>(s - symbols.begin());
        LOOM_CHECK_T(ExportError, s->base == example_inputs[k].size(axis), "export_onnx: dynamic axis '", sym,
                     "' has size ", s->base, " on one input and ", example_inputs[k].size(axis), " on '", name, "'");
      }
      axes_of[k].push_back({axis, idx});
    }
  }

  const bool was_training = module.is_training();
  module.eval();
  std::vector<TraceData> traces;
  try {
    autograd::NoGradGuard no_grad;
    for (size_t round = 0; round <= symbols.size(); ++round) {
      std::vector<Tensor> inputs = example_inputs;
      if (round > 0) {  // grow symbol round-1 by one: repeat the first slice along each of its axes
        for (size_t k = 0; k < inputs.size(); ++k)
          for (auto [axis, idx] : axes_of[k])
            if (idx == static_cast<int>(round - 1))
              inputs[k] = ops::cat({inputs[k], ops::narrow(inputs[k], axis, 0, 1)}, axis);
      }
      TraceData td;
      std::vector<Tensor> outs;
      {
        optrace::OpTrace trace;
        for (const auto& t : inputs) trace.value_of(t);
        try {
          outs = forward(inputs);
        } catch (const Error& e) {
          if (round == 0) throw;
          throw ExportError(std::string("export_onnx: the forward failed with dynamic axis '") +
                            symbols[round - 1].name + "' one larger than the example (" + e.what() +
                            "); give an example one smaller on that axis");
        }
        for (const auto& o : outs) {
          int64_t id = trace.find(o);
          LOOM_CHECK_T(ExportError, id >= 0, "export_onnx: an output of shape ", shape_str(o.sizes()),
                       " was not produced by a traced op");
          td.outputs.push_back(id);
        }
        td.ops = trace.ops();
        td.values = trace.values();
        for (size_t v = 0; v < td.values.size(); ++v) td.tensors.push_back(trace.tensor(static_cast<int64_t>(v)));
      }
      if (round > 0) {
        const TraceData& t0 = traces[0];
        bool same = td.ops.size() == t0.ops.size() && td.values.size() == t0.values.size();
        for (size_t i = 0; same && i < td.ops.size(); ++i) same = td.ops[i].op == t0.ops[i].op;
        LOOM_CHECK_T(ExportError, same, "export_onnx: the forward runs different ops when dynamic axis '",
                     symbols[round - 1].name,
                     "' grows by one (control flow on sizes); export with that axis static instead");
        td.tensors.clear();  // only the first trace's tensors are read
      }
      traces.push_back(std::move(td));
    }
  } catch (...) {
    module.train(was_training);
    throw;
  }
  module.train(was_training);

  std::vector<std::string> out_names = opts.output_names;
  for (size_t k = out_names.size(); k < traces[0].outputs.size(); ++k)
    out_names.push_back("output_" + std::to_string(k));
  Exporter ex(module, opts, symbols, std::move(traces), in_names);
  ex.build(out_names, path);
}

}  // namespace loom::onnx
