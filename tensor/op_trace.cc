#include "tensor/op_trace.h"

#include "tensor/error.h"

namespace loom::optrace {

namespace detail {
thread_local OpTrace* t_active = nullptr;
}

bool OpRecord::has_attr(const std::string& name) const {
  for (const auto& a : attrs)
    if (a.name == name) return true;
  return false;
}

const AttrValue& OpRecord::attr(const std::string& name) const {
  for (const auto& a : attrs)
    if (a.name == name) return a.value;
  throw InvalidArgument("optrace: op '" + op + "' has no attribute '" + name + "'");
}

OpTrace::OpTrace() {
  LOOM_CHECK(detail::t_active == nullptr, "OpTrace: a trace is already active on this thread (traces do not nest)");
  detail::t_active = this;
}

OpTrace::~OpTrace() { detail::t_active = nullptr; }

int64_t OpTrace::new_value(const Tensor& t, int64_t producer) {
  const int64_t id = static_cast<int64_t>(values_.size());
  values_.push_back({t.sizes(), t.dtype(), producer});
  tensors_.push_back(t);
  ids_[t.impl_ptr().get()] = id;
  return id;
}

int64_t OpTrace::find(const Tensor& t) const {
  if (!t.defined()) return -1;
  auto it = ids_.find(t.impl_ptr().get());
  return it == ids_.end() ? -1 : it->second;
}

int64_t OpTrace::value_of(const Tensor& t) {
  if (!t.defined()) return -1;
  const int64_t id = find(t);
  return id >= 0 ? id : new_value(t, -1);
}

void OpTrace::add(const std::string& op, std::initializer_list<Tensor> in, std::initializer_list<Tensor> out,
                  std::initializer_list<Attr> attrs) {
  add(op, std::vector<Tensor>(in), std::vector<Tensor>(out), attrs);
}

void OpTrace::add(const std::string& op, const std::vector<Tensor>& in, const std::vector<Tensor>& out,
                  std::initializer_list<Attr> attrs) {
  OpRecord r;
  r.op = op;
  r.attrs.assign(attrs.begin(), attrs.end());
  r.modules = module_stack_;
  for (const auto& t : in) r.inputs.push_back(value_of(t));
  const int64_t index = static_cast<int64_t>(ops_.size());
  for (const auto& t : out) r.outputs.push_back(t.defined() ? new_value(t, index) : -1);
  ops_.push_back(std::move(r));
}

}  // namespace loom::optrace
