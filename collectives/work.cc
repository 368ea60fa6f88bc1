#include "collectives/work.h"

#include "tensor/error.h"
#include "tensor/trace_events.h"

namespace loom::collectives {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kProduct:
      return "product";
  }
  return "?";
}

bool Work::is_completed() const {
  std::lock_guard<std::mutex> g(mu_);
  return done_;
}

void Work::wait(Millis timeout) {
  const int64_t t0 = trace::enabled() ? trace::now_ns() : 0;
  struct Record {  // the wait span, also when wait throws
    const Work& w;
    int64_t t0;
    ~Record() {
      if (t0 != 0)
        trace::record_span(
            "wait " + w.op_, trace::kWait, t0, trace::now_ns(),
            {trace::num("seq", static_cast<int64_t>(w.seq_)), trace::str("op", w.op_), trace::str("group", w.group_)});
    }
  } record{*this, t0};
  std::unique_lock<std::mutex> lk(mu_);
  if (timeout == Millis::max()) {
    cv_.wait(lk, [&] { return done_; });
  } else if (!cv_.wait_for(lk, timeout, [&] { return done_; })) {
    LOOM_THROW(Timeout, "Work::wait: ", op_, " #", seq_, " did not complete within the caller's wait timeout of ",
               timeout.count(), " ms (it keeps running; its own collective timeout still applies)");
  }
  if (error_) std::rethrow_exception(error_);
}

std::exception_ptr Work::exception() const {
  std::lock_guard<std::mutex> g(mu_);
  return error_;
}

void Work::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (done_) return;
    done_ = true;
    error_ = std::move(error);
  }
  cv_.notify_all();
}

}  // namespace loom::collectives
