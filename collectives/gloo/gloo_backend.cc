#include "collectives/gloo/gloo_backend.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <cstring>
#include <mutex>

#include "collectives/netif.h"
#include "collectives/reduce.h"
#include "tensor/logging.h"

namespace loom::collectives {

namespace {

// Gloo's rendezvous talks to our Store through this adapter.
class GlooStoreAdapter : public gloo::rendezvous::Store {
 public:
  explicit GlooStoreAdapter(std::shared_ptr<collectives::Store> s) : store_(std::move(s)) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_->set(key, Bytes(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    Bytes b = store_->get(key);
    return std::vector<char>(b.begin(), b.end());
  }
  void wait(const std::vector<std::string>& keys) override { store_->wait(keys); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    store_->wait(keys, timeout);
  }

 private:
  std::shared_ptr<collectives::Store> store_;
};

// Runs a gloo call, turning its exceptions into ours (timeouts into Timeout).
template <typename F>
void gloo_call(const char* op, F&& f) {
  try {
    f();
  } catch (const gloo::IoException& e) {
    std::string m = e.what();
    if (m.find("imed out") != std::string::npos || m.find("imeout") != std::string::npos)
      LOOM_THROW(Timeout, "gloo ", op, ": ", m);
    LOOM_THROW(CommError, "gloo ", op, ": ", m, " (a peer may have exited)");
  } catch (const gloo::Exception& e) {
    LOOM_THROW(CommError, "gloo ", op, ": ", e.what());
  }
}

using ReduceFn = void (*)(void*, const void*, const void*, size_t);

template <typename T>
ReduceFn reduce_fn(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return &gloo::sum<T>;
    case ReduceOp::kProduct:
      return &gloo::product<T>;
    case ReduceOp::kMin:
      return &gloo::min<T>;
    case ReduceOp::kMax:
      return &gloo::max<T>;
  }
  return nullptr;
}

class GlooBackend : public Backend {
 public:
  explicit GlooBackend(const BackendContext& ctx) : rank_(ctx.rank), size_(ctx.size) {
    // Listen where the other nodes can reach us: the named interface, else the
    // address of the route to MASTER_ADDR (never gethostname(), which often
    // resolves to a loopback address such as Debian's 127.0.1.1).
    ListenChoice where = choose_listen_address(ctx.iface, ctx.hostname, ctx.master_addr, ctx.master_port);
    gloo::transport::tcp::attr attr;
    attr.hostname = where.address;
    const std::string says = "gloo: listening on " + where.address + " (interface " +
                             (where.iface.empty() ? std::string("?") : where.iface) + ", " + where.reason + ")";
    // Once per process at info level; sub-groups repeat it only at debug level.
    static std::once_flag logged;
    bool first = false;
    std::call_once(logged, [&] { first = true; });
    if (first) {
      LOOM_INFO(says);
    } else {
      LOOM_DEBUG(says, " for group ", ctx.group_name);
    }
    gloo_call("connect", [&] {
      device_ = gloo::transport::tcp::CreateDevice(attr);
      auto c = std::make_shared<gloo::rendezvous::Context>(rank_, size_);
      c->setTimeout(ctx.timeout);
      GlooStoreAdapter adapter(ctx.store);
      c->connectFullMesh(adapter, device_);
      context_ = c;
    });
  }

  std::string name() const override { return "gloo"; }

  void allreduce(Tensor& t, ReduceOp op, Millis timeout) override {
    gloo::AllreduceOptions o(context_);
    o.setTag(next_tag());
    o.setTimeout(timeout);
    dispatch_reduce(t.dtype(), "allreduce", [&](auto tag) {
      using T = decltype(tag);
      o.setOutput(static_cast<T*>(t.data_ptr()), static_cast<size_t>(t.numel()));
      o.setReduceFunction(reduce_fn<T>(op));
    });
    gloo_call("allreduce", [&] { gloo::allreduce(o); });
  }

  // Ring reduce-scatter on unbound buffers: n-1 steps, each sends one chunk to
  // the right neighbour and folds the chunk from the left into the accumulator.
  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, Millis timeout) override {
    const size_t es = in.element_size();
    const size_t chunk = static_cast<size_t>(out.numel());
    const uint32_t tag = next_tag();
    if (size_ == 1) {
      std::memcpy(out.data_ptr(), in.data_ptr(), chunk * es);
      return;
    }
    Tensor acc = empty({in.numel()}, in.dtype());
    std::memcpy(acc.data_ptr(), in.data_ptr(), in.nbytes());
    Tensor tmp = empty({static_cast<int64_t>(chunk)}, in.dtype());
    auto* accp = static_cast<uint8_t*>(acc.data_ptr());
    const uint64_t slot = (uint64_t{0xA1} << 56) | (uint64_t{tag} << 8);
    const int right = (rank_ + 1) % size_, left = (rank_ - 1 + size_) % size_;
    gloo_call("reduce_scatter", [&] {
      auto sbuf = context_->createUnboundBuffer(accp, acc.nbytes());
      auto rbuf = context_->createUnboundBuffer(tmp.data_ptr(), tmp.nbytes());
      for (int s = 0; s < size_ - 1; ++s) {
        const size_t send_c = static_cast<size_t>(((rank_ - s - 1) % size_ + size_) % size_);
        const size_t recv_c = static_cast<size_t>(((rank_ - s - 2) % size_ + size_) % size_);
        sbuf->send(right, slot, send_c * chunk * es, chunk * es);
        rbuf->recv(left, slot, 0, chunk * es);
        if (!rbuf->waitRecv(timeout)) LOOM_THROW(Timeout, "gloo reduce_scatter: recv from rank ", left, " timed out");
        detail::reduce_into(accp + recv_c * chunk * es, tmp.data_ptr(), chunk, in.dtype(), op);
        if (!sbuf->waitSend(timeout)) LOOM_THROW(Timeout, "gloo reduce_scatter: send to rank ", right, " timed out");
      }
    });
    std::memcpy(out.data_ptr(), accp + static_cast<size_t>(rank_) * chunk * es, chunk * es);
  }

  void all_gather(Tensor& out, const Tensor& in, Millis timeout) override {
    gloo::AllgatherOptions o(context_);
    o.setTag(next_tag());
    o.setTimeout(timeout);
    o.setInput(static_cast<uint8_t*>(in.data_ptr()), in.nbytes());
    o.setOutput(static_cast<uint8_t*>(out.data_ptr()), out.nbytes());
    gloo_call("all_gather", [&] { gloo::allgather(o); });
  }

  void broadcast(Tensor& t, int root, Millis timeout) override {
    gloo::BroadcastOptions o(context_);
    o.setTag(next_tag());
    o.setTimeout(timeout);
    o.setRoot(root);
    o.setOutput(static_cast<uint8_t*>(t.data_ptr()), t.nbytes());
    gloo_call("broadcast", [&] { gloo::broadcast(o); });
  }

  void barrier(Millis timeout) override {
    gloo::BarrierOptions o(context_);
    o.setTag(next_tag());
    o.setTimeout(timeout);
    gloo_call("barrier", [&] { gloo::barrier(o); });
  }

  void send(const Tensor& t, int dst, int tag, Millis timeout) override {
    gloo_call("send", [&] {
      auto buf = context_->createUnboundBuffer(t.data_ptr(), t.nbytes());
      buf->send(dst, p2p_slot(tag));
      if (!buf->waitSend(timeout)) LOOM_THROW(Timeout, "gloo send to rank ", dst, " timed out");
    });
  }

  void recv(Tensor& t, int src, int tag, Millis timeout) override {
    gloo_call("recv", [&] {
      auto buf = context_->createUnboundBuffer(t.data_ptr(), t.nbytes());
      buf->recv(src, p2p_slot(tag));
      if (!buf->waitRecv(timeout)) LOOM_THROW(Timeout, "gloo recv from rank ", src, " timed out");
    });
  }

  void all_to_all(Tensor& out, const Tensor& in, Millis timeout) override {
    gloo::AlltoallOptions o(context_);
    o.setTag(next_tag());
    o.setTimeout(timeout);
    o.setInput(static_cast<uint8_t*>(in.data_ptr()), in.nbytes());
    o.setOutput(static_cast<uint8_t*>(out.data_ptr()), out.nbytes());
    gloo_call("all_to_all", [&] { gloo::alltoall(o); });
  }

 private:
  template <typename F>
  static void dispatch_reduce(DType d, const char* op, F&& f) {
    switch (d) {
      case DType::f32:
        return f(float{});
      case DType::f64:
        return f(double{});
      case DType::i32:
        return f(int32_t{});
      case DType::i64:
        return f(int64_t{});
      default:
        LOOM_THROW(InvalidArgument, "gloo ", op, ": dtype ", dtype_name(d), " reaches the backend unconverted");
    }
  }
  uint32_t next_tag() { return tag_++ & 0xffffffu; }
  static uint64_t p2p_slot(int tag) { return (uint64_t{0xB2} << 56) | (static_cast<uint64_t>(tag) & 0xffffffu); }

  int rank_, size_;
  uint32_t tag_ = 0;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;
};

}  // namespace

std::unique_ptr<Backend> make_gloo_backend(const BackendContext& ctx) { return std::make_unique<GlooBackend>(ctx); }

}  // namespace loom::collectives
