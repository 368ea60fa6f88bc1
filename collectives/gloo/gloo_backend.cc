#include "collectives/gloo/gloo_backend.h"

#include <gloo/alltoall.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

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

// The rings below cut a buffer of `count` elements into `n` blocks (block b:
// elements [count*b/n, count*(b+1)/n), as the mpi backend does) and each block
// into `segs` segments, so that a segment can travel on while the next one is
// still being received or reduced: receive, reduce and send overlap, and the
// pipeline fills after one segment instead of one block. Every rank computes
// the same plan, so both ends of a message agree on its bytes; empty segments
// (tiny or odd sizes) are skipped by both.
struct SegmentPlan {
  int64_t count = 0;  // elements
  int n = 1;          // blocks (ranks)
  int segs = 1;       // segments per block
  size_t es = 1;      // bytes per element

  SegmentPlan(int64_t count_, int n_, size_t es_, size_t segment_bytes) : count(count_), n(n_), es(es_) {
    const int64_t block_max = (count + n - 1) / n;
    const int64_t per_seg = std::max<int64_t>(1, static_cast<int64_t>(segment_bytes / es));
    segs = static_cast<int>(std::max<int64_t>(1, (block_max + per_seg - 1) / per_seg));
  }
  int64_t block_begin(int b) const { return count * b / n; }
  int64_t block_len(int b) const { return block_begin(b + 1) - block_begin(b); }
  // Element range of segment k of block b: [seg_begin, seg_begin + seg_len).
  int64_t seg_begin(int b, int k) const { return block_begin(b) + block_len(b) * k / segs; }
  int64_t seg_len(int b, int k) const { return block_len(b) * (k + 1) / segs - block_len(b) * k / segs; }
  size_t seg_off_bytes(int b, int k) const { return static_cast<size_t>(seg_begin(b, k)) * es; }
  size_t seg_bytes(int b, int k) const { return static_cast<size_t>(seg_len(b, k)) * es; }
  // The largest segment, in bytes (the size of one scratch slot).
  size_t seg_cap_bytes() const {
    const int64_t block_max = (count + n - 1) / n;
    return static_cast<size_t>((block_max + segs - 1) / segs) * es;
  }
};

// Environment knobs for measuring the rings: segment size and the number of
// segments the TCP rings may receive ahead of their reduction. Throws
// InvalidArgument naming the variable when it is not a positive integer.
size_t env_count(const char* name, size_t fallback, const char* what) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v, &end, 10);
  LOOM_CHECK_T(InvalidArgument, x > 0 && end && *end == '\0', name, "=", v, ": expected a positive integer (", what,
               "); unset it for the default, ", fallback);
  return static_cast<size_t>(x);
}

// A rank's mailbox for the same-host rings: a small memfd mapping that its
// two ring neighbours map too (read-only), through pidfd_getfd. Only its owner
// writes it. `ready` counts the segment addresses published in `addr` (a ring
// of kRing) for the right neighbour, `consumed` the ones taken from the left
// neighbour's mailbox, `done` the collectives after which we no longer read
// the left neighbour's memory.
constexpr uint64_t kRing = 8192;
struct Mailbox {
  alignas(64) std::atomic<uint64_t> ready{0};
  alignas(64) std::atomic<uint64_t> consumed{0};
  alignas(64) std::atomic<uint64_t> done{0};
  alignas(64) uint64_t addr[kRing];
};
static_assert(std::atomic<uint64_t>::is_always_lock_free, "mailbox counters are shared between processes");

// Which ranks count as one host for the same-host rings: the same kernel boot
// and pid namespace (so a pid means the same process to process_vm_readv),
// and the same network namespace, so that ranks in different network
// namespaces (scripts/netns_cluster.sh's simulated nodes, containers) keep
// talking over the network between them as real hosts would.
std::string host_identity() {
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  std::string id = boot;
  for (const char* ns : {"/proc/self/ns/pid", "/proc/self/ns/net"}) {
    char link[256] = {0};
    const ssize_t k = ::readlink(ns, link, sizeof link - 1);
    id.push_back('/');
    id.append(k > 0 ? link : "?");
  }
  return id;
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
    if (size_ > 1) setup_cma(ctx);
  }

  ~GlooBackend() override {
    for (const void* m :
         {static_cast<const void*>(box_), static_cast<const void*>(left_box_), static_cast<const void*>(right_box_)})
      if (m) ::munmap(const_cast<void*>(m), sizeof(Mailbox));
  }

  std::string name() const override { return "gloo"; }

  // allreduce, reduce_scatter and all_gather run loom's own segmented rings on
  // gloo's unbound buffers (see the comment above SegmentPlan); gloo's
  // algorithms remain for broadcast, barrier and all_to_all.
  void allreduce(Tensor& t, ReduceOp op, Millis timeout) override {
    const uint32_t tag = next_tag();
    if (size_ == 1 || t.numel() == 0) return;
    gloo_call("allreduce", [&] { cma() ? cma_allreduce(t, op, timeout) : ring_allreduce(t, op, tag, timeout); });
  }

  void reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, Millis timeout) override {
    const uint32_t tag = next_tag();
    if (size_ == 1 || out.numel() == 0) {
      if (out.nbytes() > 0) std::memcpy(out.data_ptr(), in.data_ptr(), out.nbytes());
      return;
    }
    gloo_call("reduce_scatter", [&] {
      cma() ? cma_reduce_scatter(out, in, op, timeout) : ring_reduce_scatter(out, in, op, tag, timeout);
    });
  }

  void all_gather(Tensor& out, const Tensor& in, Millis timeout) override {
    const uint32_t tag = next_tag();
    if (size_ == 1 || in.numel() == 0) {
      if (in.nbytes() > 0) std::memcpy(out.data_ptr(), in.data_ptr(), in.nbytes());
      return;
    }
    gloo_call("all_gather", [&] { cma() ? cma_all_gather(out, in, timeout) : ring_all_gather(out, in, tag, timeout); });
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
  using Clock = std::chrono::steady_clock;
  using UBuf = gloo::transport::UnboundBuffer;

  // Slots of one collective: prefix byte, the collective's tag, a stream byte
  // (so the messages of two phases never match each other's receives).
  static uint64_t slot(uint8_t prefix, uint32_t tag, uint8_t stream) {
    return (uint64_t{prefix} << 56) | (uint64_t{tag} << 8) | stream;
  }
  static Millis left_of(Clock::time_point deadline) {
    const auto ms = std::chrono::duration_cast<Millis>(deadline - Clock::now());
    return std::max(ms, Millis(1));
  }
  static void wait_recv(UBuf& b, Clock::time_point deadline, const char* op, int peer) {
    if (!b.waitRecv(nullptr, left_of(deadline)))
      LOOM_THROW(Timeout, "gloo ", op, ": receive from rank ", peer, " aborted");
  }
  static void wait_sends(UBuf& b, size_t count, Clock::time_point deadline, const char* op, int peer) {
    for (size_t i = 0; i < count; ++i)
      if (!b.waitSend(nullptr, left_of(deadline)))
        LOOM_THROW(Timeout, "gloo ", op, ": send to rank ", peer, " aborted");
  }
  uint8_t* scratch(size_t bytes) {
    if (scratch_.size() < bytes) scratch_.resize(bytes);
    return scratch_.data();
  }

  // In-place ring allreduce: n - 1 reduce-scatter steps (step s sends block
  // r - s and folds the left neighbour's block r - s - 1 into ours), then
  // n - 1 all-gather steps (step s sends block r + 1 - s, receives block r - s
  // straight into t). Per segment: the reduce-scatter receive lands in one of
  // window_ scratch slots, is reduced into t, and that segment of t goes out at
  // once as the next step's message. All all-gather receives are posted up
  // front into t: the left neighbour can send a segment there only after it
  // has reduced our copy of it, so our send from that place has finished.
  void ring_allreduce(Tensor& t, ReduceOp op, uint32_t tag, Millis timeout) {
    const char* name = "allreduce";
    const auto deadline = Clock::now() + timeout;
    const int n = size_, r = rank_, right = (r + 1) % n, left = (r + n - 1) % n;
    const SegmentPlan p(t.numel(), n, t.element_size(), segment_bytes_);
    const uint64_t rs_slot = slot(0xA2, tag, 0), ag_slot = slot(0xA2, tag, 1);
    auto* data = static_cast<uint8_t*>(t.data_ptr());
    const size_t cap = p.seg_cap_bytes();
    uint8_t* scr = scratch(cap * window_);
    auto tbuf = context_->createUnboundBuffer(data, t.nbytes());
    auto sbuf = context_->createUnboundBuffer(scr, cap * window_);
    auto mod = [n](int b) { return ((b % n) + n) % n; };
    struct Msg {
      int s, k, b;
    };
    // Reduce-scatter messages from the left, in the order it sends them.
    std::vector<Msg> rs;
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k)
        if (p.seg_len(mod(r - s - 1), k) > 0) rs.push_back({s, k, mod(r - s - 1)});
    size_t sends = 0;
    auto send = [&](uint64_t sl, int b, int k) {
      if (p.seg_len(b, k) == 0) return;
      tbuf->send(right, sl, p.seg_off_bytes(b, k), p.seg_bytes(b, k));
      ++sends;
    };
    auto post_rs = [&](size_t i) {
      const Msg& m = rs[i];
      sbuf->recv(left, rs_slot, (i % window_) * cap, p.seg_bytes(m.b, m.k));
    };
    size_t ag_recvs = 0;
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k) {
        const int b = mod(r - s);
        if (p.seg_len(b, k) == 0) continue;
        tbuf->recv(left, ag_slot, p.seg_off_bytes(b, k), p.seg_bytes(b, k));
        ++ag_recvs;
      }
    for (size_t i = 0; i < rs.size() && i < window_; ++i) post_rs(i);
    for (int k = 0; k < p.segs; ++k) send(rs_slot, r, k);
    for (size_t i = 0; i < rs.size(); ++i) {
      const Msg& m = rs[i];
      wait_recv(*sbuf, deadline, name, left);
      detail::reduce_into(data + p.seg_off_bytes(m.b, m.k), scr + (i % window_) * cap,
                          static_cast<size_t>(p.seg_len(m.b, m.k)), t.dtype(), op);
      if (i + window_ < rs.size()) post_rs(i + window_);
      send(m.s < n - 2 ? rs_slot : ag_slot, m.b, m.k);  // the last step's block is final: the all-gather starts
    }
    // All-gather: receive in order, forward all but the last step's blocks.
    size_t got = 0;
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k) {
        const int b = mod(r - s);
        if (p.seg_len(b, k) == 0) continue;
        wait_recv(*tbuf, deadline, name, left);
        ++got;
        if (s < n - 2) send(ag_slot, b, k);
      }
    LOOM_CHECK(got == ag_recvs, "gloo allreduce: ", got, " of ", ag_recvs, " all-gather segments");
    wait_sends(*tbuf, sends, deadline, name, right);
  }

  // Ring reduce-scatter, out of place: step s (0 .. n-2) sends the partial sum
  // of block r - s - 1 and receives that of block r - s - 2. Step 0 sends
  // straight from in; a middle step's partial sum is received into a scratch
  // slot, reduced there with in's block and forwarded from there; the last
  // step (block r) is received into out and reduced in place. `in` is only
  // read, and out is written only by the last step.
  void ring_reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, uint32_t tag, Millis timeout) {
    const char* name = "reduce_scatter";
    const auto deadline = Clock::now() + timeout;
    const int n = size_, r = rank_, right = (r + 1) % n, left = (r + n - 1) % n;
    const SegmentPlan p(in.numel(), n, in.element_size(), segment_bytes_);
    const uint64_t mid_slot = slot(0xA1, tag, 0), last_slot = slot(0xA1, tag, 1);
    auto* src = static_cast<uint8_t*>(in.data_ptr());
    auto* dst = static_cast<uint8_t*>(out.data_ptr());
    auto mod = [n](int b) { return ((b % n) + n) % n; };
    struct Msg {
      int s, k, b;
    };
    std::vector<Msg> mid;  // received steps 0 .. n-3, in the left neighbour's order
    for (int s = 0; s < n - 2; ++s)
      for (int k = 0; k < p.segs; ++k)
        if (p.seg_len(mod(r - s - 2), k) > 0) mid.push_back({s, k, mod(r - s - 2)});
    // A middle message waits in its scratch slot until the right neighbour
    // takes it, which it does about one block (p.segs messages) after we
    // received it. With p.segs + window_ slots and receives posted window_ - 1
    // ahead, reusing a slot waits only for a send the right neighbour has
    // already asked for, so the ring cannot lock up.
    const size_t cap = p.seg_cap_bytes(), slots = mid.empty() ? 0 : static_cast<size_t>(p.segs) + window_;
    uint8_t* scr = scratch(std::max<size_t>(cap * slots, 1));
    auto ibuf = context_->createUnboundBuffer(src, in.nbytes());
    auto obuf = context_->createUnboundBuffer(dst, out.nbytes());
    // Two views of the scratch: sends on one slot to one rank finish in
    // order, so each view counts its own: forwards to a middle step (fbuf,
    // which also receives) come first in mid's order, then those to the last.
    auto sbuf = context_->createUnboundBuffer(scr, std::max<size_t>(cap * slots, 1));
    auto lbuf = context_->createUnboundBuffer(scr, std::max<size_t>(cap * slots, 1));
    const size_t out_base = p.seg_off_bytes(r, 0);
    const size_t to_mid =
        static_cast<size_t>(std::count_if(mid.begin(), mid.end(), [n](const Msg& m) { return m.s + 1 < n - 2; }));
    size_t posted = 0, mid_sends = 0, mid_done = 0, last_sends = 0, last_done = 0, in_sends = 0;
    auto sent = [&](size_t j) {  // waits until the forward of mid[j] is out
      UBuf& b = j < to_mid ? *sbuf : *lbuf;
      size_t& done = j < to_mid ? mid_done : last_done;
      const size_t need = j < to_mid ? j + 1 : j - to_mid + 1;
      if (done < need) wait_sends(b, need - done, deadline, name, right);
      done = std::max(done, need);
    };
    auto post_until = [&](size_t end) {  // posts the receives of mid[posted .. end)
      for (end = std::min(end, mid.size()); posted < end; ++posted) {
        if (posted >= slots) sent(posted - slots);  // the slot's previous message must be out
        const Msg& m = mid[posted];
        sbuf->recv(left, mid_slot, (posted % slots) * cap, p.seg_bytes(m.b, m.k));
      }
    };
    for (int k = 0; k < p.segs; ++k)
      if (p.seg_len(r, k) > 0) obuf->recv(left, last_slot, p.seg_off_bytes(r, k) - out_base, p.seg_bytes(r, k));
    post_until(slots);
    for (int k = 0; k < p.segs; ++k) {
      const int b = mod(r - 1);
      if (p.seg_len(b, k) == 0) continue;
      ibuf->send(right, n == 2 ? last_slot : mid_slot, p.seg_off_bytes(b, k), p.seg_bytes(b, k));
      ++in_sends;
    }
    for (size_t i = 0; i < mid.size(); ++i) {
      const Msg& m = mid[i];
      post_until(i + window_);
      uint8_t* at = scr + (i % slots) * cap;
      wait_recv(*sbuf, deadline, name, left);
      detail::reduce_into(at, src + p.seg_off_bytes(m.b, m.k), static_cast<size_t>(p.seg_len(m.b, m.k)), in.dtype(),
                          op);
      // The right neighbour receives this as its step m.s + 1: the last one when m.s + 1 == n - 2.
      if (i < to_mid) {
        sbuf->send(right, mid_slot, (i % slots) * cap, p.seg_bytes(m.b, m.k));
        ++mid_sends;
      } else {
        lbuf->send(right, last_slot, (i % slots) * cap, p.seg_bytes(m.b, m.k));
        ++last_sends;
      }
    }
    for (int k = 0; k < p.segs; ++k) {
      if (p.seg_len(r, k) == 0) continue;
      wait_recv(*obuf, deadline, name, left);
      detail::reduce_into(dst + p.seg_off_bytes(r, k) - out_base, src + p.seg_off_bytes(r, k),
                          static_cast<size_t>(p.seg_len(r, k)), in.dtype(), op);
    }
    wait_sends(*sbuf, mid_sends - mid_done, deadline, name, right);
    wait_sends(*lbuf, last_sends - last_done, deadline, name, right);
    wait_sends(*ibuf, in_sends, deadline, name, right);
  }

  // Ring all-gather: step s (0 .. n-2) sends block r - s and receives block
  // r - s - 1 into out; step 0 sends straight from in, later steps forward
  // each segment of out as soon as it has arrived. Every receive is posted up
  // front (no scratch); in is copied into out's block r meanwhile.
  void ring_all_gather(Tensor& out, const Tensor& in, uint32_t tag, Millis timeout) {
    const char* name = "all_gather";
    const auto deadline = Clock::now() + timeout;
    const int n = size_, r = rank_, right = (r + 1) % n, left = (r + n - 1) % n;
    const SegmentPlan p(out.numel(), n, out.element_size(), segment_bytes_);
    const uint64_t sl = slot(0xA3, tag, 0);
    auto* src = static_cast<uint8_t*>(in.data_ptr());
    auto* dst = static_cast<uint8_t*>(out.data_ptr());
    auto ibuf = context_->createUnboundBuffer(src, in.nbytes());
    auto obuf = context_->createUnboundBuffer(dst, out.nbytes());
    auto mod = [n](int b) { return ((b % n) + n) % n; };
    const size_t in_base = p.seg_off_bytes(r, 0);
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k)
        if (p.seg_len(mod(r - s - 1), k) > 0)
          obuf->recv(left, sl, p.seg_off_bytes(mod(r - s - 1), k), p.seg_bytes(mod(r - s - 1), k));
    size_t in_sends = 0, out_sends = 0;
    for (int k = 0; k < p.segs; ++k) {
      if (p.seg_len(r, k) == 0) continue;
      ibuf->send(right, sl, p.seg_off_bytes(r, k) - in_base, p.seg_bytes(r, k));
      ++in_sends;
    }
    std::memcpy(dst + in_base, src, in.nbytes());
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k) {
        const int b = mod(r - s - 1);
        if (p.seg_len(b, k) == 0) continue;
        wait_recv(*obuf, deadline, name, left);
        if (s < n - 2) {
          obuf->send(right, sl, p.seg_off_bytes(b, k), p.seg_bytes(b, k));
          ++out_sends;
        }
      }
    wait_sends(*obuf, out_sends, deadline, name, right);
    wait_sends(*ibuf, in_sends, deadline, name, right);
  }

  // Cross-memory attach (CMA): when every rank of the group runs on this
  // host, the rings move their bulk data with process_vm_readv, one copy from
  // the left neighbour's memory into ours (as Open MPI's shared-memory
  // transport does), and signal "segment ready at this address" and "done
  // reading your memory" through the Mailboxes, polled, with no message and
  // no thread wake-up in between. LOOM_GLOO_CMA=0 turns it off (TCP for
  // everything); otherwise each rank checks that it can read both neighbours
  // (a nonce at a published address) and map their mailboxes, and all ranks
  // use CMA only if every rank's check passed (so all run the same rings).
  void setup_cma(const BackendContext& ctx) {
    const char* env = std::getenv("LOOM_GLOO_CMA");
    auto& store = *ctx.store;
    // The group's verdict: every rank adds 1 to "loom_cma_bad" if its check
    // failed, then 1 to "loom_cma_checked"; the rank that brings the latter to
    // size_ publishes "loom_cma_all" (O(size_) store calls in all).
    auto vote = [&](bool ok) {
      if (!ok) store.add("loom_cma_bad", 1);
      if (store.add("loom_cma_checked", 1) == size_)
        store.set("loom_cma_all", to_bytes(store.add("loom_cma_bad", 0) == 0 ? "1" : "0"));
    };
    if (env && std::string(env) == "0") {  // say so, so that the others do not wait for us and use TCP too
      store.set("loom_cma/" + std::to_string(rank_), to_bytes("off"));
      vote(false);
      return;
    }
    std::random_device rd;
    probe_ = (uint64_t{rd()} << 32) ^ rd() ^ static_cast<uint64_t>(::getpid());
    const int fd = ::memfd_create("loom-gloo-mailbox", MFD_CLOEXEC);
    void* mine_map = MAP_FAILED;
    if (fd >= 0 && ::ftruncate(fd, sizeof(Mailbox)) == 0)
      mine_map = ::mmap(nullptr, sizeof(Mailbox), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    std::ostringstream mine;
    mine << host_identity() << " " << ::getpid() << " " << reinterpret_cast<uintptr_t>(&probe_) << " " << probe_ << " "
         << (mine_map == MAP_FAILED ? -1 : fd);
    store.set("loom_cma/" + std::to_string(rank_), to_bytes(mine.str()));
    struct Peer {
      long pid = 0;
      void* box = MAP_FAILED;
    };
    // Reads a neighbour's entry, checks we can read its memory, maps its mailbox.
    auto peer = [&](int q) {
      Peer out;
      const std::string key = "loom_cma/" + std::to_string(q);
      store.wait({key}, ctx.timeout);
      std::istringstream theirs(to_string(store.get(key)));
      std::string host;
      uintptr_t addr = 0;
      uint64_t nonce = 0;
      int their_fd = -1;
      theirs >> host >> out.pid >> addr >> nonce >> their_fd;
      if (host != host_identity() || out.pid <= 0 || their_fd < 0) return out;
      uint64_t seen = 0;
      iovec l{&seen, sizeof seen}, r{reinterpret_cast<void*>(addr), sizeof seen};
      if (::process_vm_readv(static_cast<pid_t>(out.pid), &l, 1, &r, 1, 0) != static_cast<ssize_t>(sizeof seen) ||
          seen != nonce)
        return out;
      const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(out.pid), 0));
      if (pidfd < 0) return out;
      const int dup = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, their_fd, 0));
      ::close(pidfd);
      if (dup < 0) return out;
      out.box = ::mmap(nullptr, sizeof(Mailbox), PROT_READ, MAP_SHARED, dup, 0);
      ::close(dup);
      return out;
    };
    Peer l = mine_map == MAP_FAILED ? Peer{} : peer(left());
    Peer r = l.box == MAP_FAILED ? Peer{} : peer(right());
    const bool ok = l.box != MAP_FAILED && r.box != MAP_FAILED;
    vote(ok);
    store.wait({"loom_cma_all"}, ctx.timeout);
    const bool all = to_string(store.get("loom_cma_all")) == "1";
    if (fd >= 0) ::close(fd);  // every neighbour holds its own mapping by now
    if (all) {
      left_pid_ = static_cast<pid_t>(l.pid);
      box_ = new (mine_map) Mailbox();
      left_box_ = static_cast<const Mailbox*>(l.box);
      right_box_ = static_cast<const Mailbox*>(r.box);
    } else {
      for (void* m : {mine_map, l.box, r.box})
        if (m != MAP_FAILED) ::munmap(m, sizeof(Mailbox));
    }
    LOOM_DEBUG("gloo group ", ctx.group_name, ": ",
               all ? "same host, rings read peers' memory (CMA)" : "rings over TCP");
  }
  bool cma() const { return left_pid_ > 0; }

  // Copies len bytes at the left neighbour's address `from` into `to`.
  void pull(void* to, uint64_t from, size_t len, const char* op) const {
    auto* dst = static_cast<uint8_t*>(to);
    while (len > 0) {
      iovec l{dst, len}, r{reinterpret_cast<void*>(from), len};
      const ssize_t k = ::process_vm_readv(left_pid_, &l, 1, &r, 1, 0);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0)
        LOOM_THROW(CommError, "gloo ", op, ": reading ", len, " bytes of rank ", (rank_ + size_ - 1) % size_, " (pid ",
                   left_pid_, ") failed: ", k < 0 ? std::strerror(errno) : "nothing read",
                   "; set LOOM_GLOO_CMA=0 to move data over TCP instead");
      dst += k;
      from += static_cast<uint64_t>(k);
      len -= static_cast<size_t>(k);
    }
  }

  // The tokens of one CMA ring, through the shared mailboxes: ready(p)
  // publishes "the next segment is at p" to the right neighbour, next() waits
  // for the left neighbour's next one, finish() tells the left we are done
  // reading its memory and waits until the right is done with ours (so the
  // caller may reuse its buffers). Counters are cumulative over the group's
  // life; every rank runs the same collectives in the same order, so both ends
  // of a counter agree on it.
  struct Tokens {
    GlooBackend& g;
    const char* op;
    Clock::time_point deadline;
    Millis timeout;

    Tokens(GlooBackend& g_, const char* op_, Millis timeout_)
        : g(g_), op(op_), deadline(Clock::now() + timeout_), timeout(timeout_) {
      LOOM_CHECK_T(CommError, !g.broken_, "gloo ", op, ": the group is unusable after an earlier timeout");
    }
    void ready(const void* p) {
      Mailbox& me = *g.box_;
      const uint64_t w = me.ready.load(std::memory_order_relaxed);
      // The right neighbour must have taken the token kRing places back.
      g.await([&] { return g.right_box_->consumed.load(std::memory_order_acquire) + kRing > w; }, deadline, op,
              g.right(), timeout);
      me.addr[w % kRing] = reinterpret_cast<uintptr_t>(p);
      me.ready.store(w + 1, std::memory_order_release);
    }
    uint64_t next() {
      const Mailbox& left = *g.left_box_;
      const uint64_t c = g.box_->consumed.load(std::memory_order_relaxed);
      g.await([&] { return left.ready.load(std::memory_order_acquire) > c; }, deadline, op, g.left(), timeout);
      const uint64_t a = left.addr[c % kRing];
      g.box_->consumed.store(c + 1, std::memory_order_release);
      return a;
    }
    void finish() {
      const uint64_t d = g.box_->done.load(std::memory_order_relaxed) + 1;
      g.box_->done.store(d, std::memory_order_release);
      g.await([&] { return g.right_box_->done.load(std::memory_order_acquire) >= d; }, deadline, op, g.right(),
              timeout);
    }
  };

  // Polls cond until true: spins briefly, yields for 0.5 ms, then naps 20 us
  // at a time (200 us after 5 ms); past the deadline the group is marked broken and Timeout thrown.
  template <typename Cond>
  void await(Cond&& cond, Clock::time_point deadline, const char* op, int peer, Millis timeout) {
    const auto start = Clock::now();
    for (uint64_t i = 0;; ++i) {
      if (cond()) return;
      if (i < 256) continue;
      const auto now = Clock::now();
      if (now > deadline) {
        broken_ = true;
        LOOM_THROW(Timeout, "gloo ", op, ": rank ", peer, " did not reach the matching step within ", timeout.count(),
                   " ms (same-host ring)");
      }
      const auto waited = now - start;
      if (waited < std::chrono::microseconds(500)) {
        std::this_thread::yield();
      } else {  // a peer still computing: nap, longer after 5 ms so a waiting rank costs the others little
        std::this_thread::sleep_for(std::chrono::microseconds(waited < std::chrono::milliseconds(5) ? 20 : 200));
      }
    }
  }
  int left() const { return (rank_ + size_ - 1) % size_; }
  int right() const { return (rank_ + 1) % size_; }

  // Pulls len bytes of the left neighbour at `from` through a small cache-sized
  // scratch and folds them into acc (acc = op(acc, left's)).
  void pull_reduce(uint8_t* acc, uint64_t from, size_t len, DType d, ReduceOp op, const char* name) {
    const size_t es = element_size(d), piece = (size_t{256} << 10) / es * es;
    uint8_t* tmp = scratch(std::min(len, piece));
    for (size_t off = 0; off < len; off += piece) {
      const size_t k = std::min(piece, len - off);
      pull(tmp, from + off, k, name);
      detail::reduce_into(acc + off, tmp, k / es, d, op);
    }
  }

  // The CMA twin of ring_allreduce: the same blocks, segments and order, but a
  // message is a token; the reduce-scatter pulls each segment through a small
  // scratch into t, the all-gather pulls straight into t.
  void cma_allreduce(Tensor& t, ReduceOp op, Millis timeout) {
    const char* name = "allreduce";
    const int n = size_, r = rank_;
    const SegmentPlan p(t.numel(), n, t.element_size(), segment_bytes_);
    auto* data = static_cast<uint8_t*>(t.data_ptr());
    auto mod = [n](int b) { return ((b % n) + n) % n; };
    Tokens tk(*this, name, timeout);
    for (int k = 0; k < p.segs; ++k)
      if (p.seg_len(r, k) > 0) tk.ready(data + p.seg_off_bytes(r, k));
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k) {
        const int b = mod(r - s - 1);
        if (p.seg_len(b, k) == 0) continue;
        pull_reduce(data + p.seg_off_bytes(b, k), tk.next(), p.seg_bytes(b, k), t.dtype(), op, name);
        tk.ready(data + p.seg_off_bytes(b, k));  // next step's message, or (last step) the first all-gather one
      }
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k) {
        const int b = mod(r - s);
        if (p.seg_len(b, k) == 0) continue;
        pull(data + p.seg_off_bytes(b, k), tk.next(), p.seg_bytes(b, k), name);
        if (s < n - 2) tk.ready(data + p.seg_off_bytes(b, k));
      }
    tk.finish();
  }

  // The CMA twin of ring_reduce_scatter. A middle step's partial sum is pulled
  // into its own scratch region (n - 2 blocks in all), reduced with in's block
  // and announced from there; the last step pulls into out and reduces there.
  void cma_reduce_scatter(Tensor& out, const Tensor& in, ReduceOp op, Millis timeout) {
    const char* name = "reduce_scatter";
    const int n = size_, r = rank_;
    const SegmentPlan p(in.numel(), n, in.element_size(), segment_bytes_);
    auto* src = static_cast<uint8_t*>(in.data_ptr());
    auto* dst = static_cast<uint8_t*>(out.data_ptr());
    auto mod = [n](int b) { return ((b % n) + n) % n; };
    const size_t cbytes = out.nbytes(), out_base = p.seg_off_bytes(r, 0);
    Tokens tk(*this, name, timeout);
    uint8_t* mid = n > 2 ? scratch(static_cast<size_t>(n - 2) * cbytes) : nullptr;
    for (int k = 0; k < p.segs; ++k)
      if (p.seg_len(mod(r - 1), k) > 0) tk.ready(src + p.seg_off_bytes(mod(r - 1), k));
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k) {
        const int b = mod(r - s - 2);
        if (p.seg_len(b, k) == 0) continue;
        const size_t in_block = p.seg_off_bytes(b, k) - p.seg_off_bytes(b, 0), len = p.seg_bytes(b, k);
        uint8_t* at =
            s == n - 2 ? dst + p.seg_off_bytes(r, k) - out_base : mid + static_cast<size_t>(s) * cbytes + in_block;
        pull(at, tk.next(), len, name);
        detail::reduce_into(at, src + p.seg_off_bytes(b, k), static_cast<size_t>(p.seg_len(b, k)), in.dtype(), op);
        if (s < n - 2) tk.ready(at);
      }
    tk.finish();
  }

  // The CMA twin of ring_all_gather: every segment is pulled straight into out.
  void cma_all_gather(Tensor& out, const Tensor& in, Millis timeout) {
    const char* name = "all_gather";
    const int n = size_, r = rank_;
    const SegmentPlan p(out.numel(), n, out.element_size(), segment_bytes_);
    auto* src = static_cast<uint8_t*>(in.data_ptr());
    auto* dst = static_cast<uint8_t*>(out.data_ptr());
    auto mod = [n](int b) { return ((b % n) + n) % n; };
    const size_t in_base = p.seg_off_bytes(r, 0);
    Tokens tk(*this, name, timeout);
    for (int k = 0; k < p.segs; ++k)
      if (p.seg_len(r, k) > 0) tk.ready(src + p.seg_off_bytes(r, k) - in_base);
    std::memcpy(dst + in_base, src, in.nbytes());
    for (int s = 0; s < n - 1; ++s)
      for (int k = 0; k < p.segs; ++k) {
        const int b = mod(r - s - 1);
        if (p.seg_len(b, k) == 0) continue;
        pull(dst + p.seg_off_bytes(b, k), tk.next(), p.seg_bytes(b, k), name);
        if (s < n - 2) tk.ready(dst + p.seg_off_bytes(b, k));
      }
    tk.finish();
  }

  uint32_t next_tag() { return tag_++ & 0xffffffu; }
  static uint64_t p2p_slot(int tag) { return (uint64_t{0xB2} << 56) | (static_cast<uint64_t>(tag) & 0xffffffu); }

  int rank_, size_;
  uint32_t tag_ = 0;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::Context> context_;
  size_t segment_bytes_ = env_count("LOOM_GLOO_SEGMENT_BYTES", size_t{1} << 20, "bytes per ring segment");
  size_t window_ = env_count("LOOM_GLOO_WINDOW", 8, "segments a TCP ring receives ahead");
  uint64_t probe_ = 0;                  // a nonce our right neighbour reads to check CMA works
  pid_t left_pid_ = 0;                  // the left neighbour's pid when the rings use CMA
  Mailbox* box_ = nullptr;              // ours (CMA only)
  const Mailbox* left_box_ = nullptr;   // the left neighbour's, read-only
  const Mailbox* right_box_ = nullptr;  // the right neighbour's, read-only
  bool broken_ = false;                 // a same-host ring timed out: the counters are out of step
  std::vector<uint8_t> scratch_;        // the rings' receive slots, reused across calls
};

}  // namespace

std::unique_ptr<Backend> make_gloo_backend(const BackendContext& ctx) { return std::make_unique<GlooBackend>(ctx); }

}  // namespace loom::collectives
