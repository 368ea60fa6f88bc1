#include "tensor/caching_allocator.h"

#include <chrono>
#include <cstdio>
#include <functional>
#include <limits>
#include <thread>

#include "tensor/error.h"

namespace loom {
namespace {

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

/// "1.50 MiB (1572864 bytes)".
std::string format_bytes(size_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024.0 && u < 6) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f %s", v, units[u]);
  return detail::str_cat(buf, " (", n, " bytes)");
}

}  // namespace

void AllocatorBackend::wait_streams(const std::vector<StreamHandle>& streams) {
  for (StreamHandle s : streams) {
    void* event = event_create();
    try {
      event_record(event, s);
      while (!event_query(event)) std::this_thread::sleep_for(std::chrono::microseconds(20));
    } catch (...) {
      event_destroy(event);
      throw;
    }
    event_destroy(event);
  }
}

bool CachingAllocator::ByStreamSize::operator()(const Block* a, const Block* b) const {
  if (a->stream != b->stream) return std::less<StreamHandle>()(a->stream, b->stream);
  if (a->size != b->size) return a->size < b->size;
  return std::less<char*>()(a->ptr, b->ptr);
}

CachingAllocator::CachingAllocator(std::unique_ptr<AllocatorBackend> backend, std::string device_name, bool caching)
    : backend_(std::move(backend)), device_name_(std::move(device_name)), caching_(caching) {
  LOOM_CHECK(backend_ != nullptr, "CachingAllocator for ", device_name_, ": no backend");
}

CachingAllocator::~CachingAllocator() {
  // Destructors must not throw: a backend that fails here (a CUDA runtime
  // already torn down at exit) leaves the memory to the process's end.
  for (auto& [ptr, block] : blocks_) {
    if (block->prev) continue;  // not the head of a segment
    try {
      backend_->free(ptr);
    } catch (...) {
    }
  }
  for (auto& [event, block] : pending_) {
    try {
      backend_->event_destroy(event);
    } catch (...) {
    }
  }
  for (void* event : spare_events_) {
    try {
      backend_->event_destroy(event);
    } catch (...) {
    }
  }
}

void* CachingAllocator::allocate(size_t bytes, StreamHandle stream) {
  if (bytes == 0) return nullptr;
  std::lock_guard<std::mutex> lock(mutex_);
  if (bytes > std::numeric_limits<size_t>::max() - kLargeSegmentRound) {
    ++stats_.num_ooms;
    throw_oom(bytes, bytes);
  }
  Block* b = nullptr;
  if (caching_) {
    process_events();
    const size_t size = round_up(bytes, kMinBlockSize);
    const bool small = size <= kSmallSize;
    b = find_free(small, stream, size);
    if (!b) b = new_segment(small, stream, small ? kSmallSegment : round_up(size, kLargeSegmentRound), bytes);
    split(b, size);
  } else {
    b = new_segment(false, stream, bytes, bytes);  // exactly the request, never split
  }
  b->allocated = true;
  b->requested = bytes;
  stats_.allocated_bytes += static_cast<int64_t>(b->size);
  ++stats_.num_allocs;
  update_peaks();
  return b->ptr;
}

CachingAllocator::Block* CachingAllocator::find_free(bool small, StreamHandle stream, size_t size) {
  FreeList& list = pool(small);
  Block key;
  key.stream = stream;
  key.size = size;
  auto it = list.lower_bound(&key);  // smallest block of this stream with size >= size
  if (it == list.end() || (*it)->stream != stream) return nullptr;
  Block* b = *it;
  list.erase(it);
  return b;
}

CachingAllocator::Block* CachingAllocator::new_segment(bool small, StreamHandle stream, size_t segment,
                                                       size_t requested) {
  void* p = backend_->alloc(segment);
  if (!p && caching_) {
    // Cached segments of other sizes or streams may be what stands in the way.
    ++stats_.num_alloc_retries;
    release_cached();
    p = backend_->alloc(segment);
  }
  if (!p) {
    ++stats_.num_ooms;
    throw_oom(requested, segment);
  }
  auto block = std::make_unique<Block>();
  block->ptr = static_cast<char*>(p);
  block->size = segment;
  block->stream = stream;
  block->small_pool = small;
  Block* b = block.get();
  blocks_[block->ptr] = std::move(block);
  stats_.reserved_bytes += static_cast<int64_t>(segment);
  ++stats_.num_backend_allocs;
  return b;
}

void CachingAllocator::split(Block* b, size_t size) {
  const size_t rest = b->size - size;
  // A large-pool remainder of 1 MiB or less would only ever serve small
  // requests, which the large pool does not take: keep it in the block.
  const bool worth = b->small_pool ? rest >= kMinBlockSize : rest > kSmallSize;
  if (!worth) return;
  auto r = std::make_unique<Block>();
  r->ptr = b->ptr + size;
  r->size = rest;
  r->stream = b->stream;
  r->small_pool = b->small_pool;
  r->prev = b;
  r->next = b->next;
  if (b->next) b->next->prev = r.get();
  b->next = r.get();
  b->size = size;
  // b was free, so its old neighbour after it is in use: the remainder has no free neighbour to merge with.
  pool(r->small_pool).insert(r.get());
  blocks_[r->ptr] = std::move(r);
}

CachingAllocator::Block* CachingAllocator::allocated_block(void* ptr, const char* what) {
  auto it = blocks_.find(static_cast<char*>(ptr));
  if (it == blocks_.end() || !it->second->allocated)
    LOOM_THROW(InvalidArgument, what, " on ", device_name_, ": pointer ", ptr,
               " was not returned by allocate() or was freed already");
  return it->second.get();
}

void CachingAllocator::free(void* ptr) {
  if (!ptr) return;
  if (!caching_) {
    free_uncached(ptr);
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  Block* b = allocated_block(ptr, "CachingAllocator::free");
  b->allocated = false;
  b->requested = 0;
  stats_.allocated_bytes -= static_cast<int64_t>(b->size);
  ++stats_.num_frees;
  if (b->stream_uses.empty()) {
    free_block(b);
    return;
  }
  // Other streams may still read or write the block: it is free once each of
  // them passes an event recorded now.
  std::set<StreamHandle> uses;
  uses.swap(b->stream_uses);
  for (StreamHandle s : uses) {
    void* event = nullptr;
    if (!spare_events_.empty()) {
      event = spare_events_.back();
      spare_events_.pop_back();
    } else {
      event = backend_->event_create();
    }
    try {
      backend_->event_record(event, s);
    } catch (...) {
      spare_events_.push_back(event);
      throw;
    }
    pending_.emplace_back(event, b);
    ++b->pending_events;
  }
}

void CachingAllocator::free_uncached(void* ptr) {
  // The memory goes back to the backend now, where anything may reuse it: first
  // the stream it was allocated on and every stream that used it must be done.
  std::vector<StreamHandle> streams;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Block* b = allocated_block(ptr, "CachingAllocator::free");
    streams.push_back(b->stream);
    streams.insert(streams.end(), b->stream_uses.begin(), b->stream_uses.end());
  }
  // Without the lock, so that other threads allocate and free meanwhile; a throw
  // leaves the block allocated.
  backend_->wait_streams(streams);
  std::lock_guard<std::mutex> lock(mutex_);
  Block* b = allocated_block(ptr, "CachingAllocator::free");  // a racing second free of ptr throws here
  backend_->free(b->ptr);
  stats_.allocated_bytes -= static_cast<int64_t>(b->size);
  stats_.reserved_bytes -= static_cast<int64_t>(b->size);
  ++stats_.num_frees;
  ++stats_.num_backend_frees;
  blocks_.erase(b->ptr);  // destroys b
}

void CachingAllocator::free_block(Block* b) {
  FreeList& list = pool(b->small_pool);
  auto is_free = [](const Block* n) { return n && !n->allocated && n->pending_events == 0; };
  if (is_free(b->prev)) {
    Block* p = b->prev;
    list.erase(p);
    p->size += b->size;
    p->next = b->next;
    if (b->next) b->next->prev = p;
    blocks_.erase(b->ptr);  // destroys b
    b = p;
  }
  if (is_free(b->next)) {
    Block* n = b->next;
    list.erase(n);
    b->size += n->size;
    b->next = n->next;
    if (n->next) n->next->prev = b;
    blocks_.erase(n->ptr);  // destroys n
  }
  list.insert(b);
}

void CachingAllocator::process_events() {
  // Swap-and-pop keeps pending_ consistent even if a query throws.
  for (size_t i = 0; i < pending_.size();) {
    auto [event, block] = pending_[i];
    if (!backend_->event_query(event)) {
      ++i;
      continue;
    }
    pending_[i] = pending_.back();
    pending_.pop_back();
    spare_events_.push_back(event);
    if (--block->pending_events == 0) free_block(block);
  }
}

void CachingAllocator::release_cached() {
  process_events();
  std::vector<Block*> whole;
  for (FreeList* list : {&small_free_, &large_free_})
    for (Block* b : *list)
      if (!b->prev && !b->next) whole.push_back(b);
  for (Block* b : whole) {
    backend_->free(b->ptr);
    pool(b->small_pool).erase(b);
    stats_.reserved_bytes -= static_cast<int64_t>(b->size);
    ++stats_.num_backend_frees;
    blocks_.erase(b->ptr);
  }
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  release_cached();
}

CachingAllocator::Block* CachingAllocator::live_block_containing(void* ptr) {
  char* p = static_cast<char*>(ptr);
  auto it = blocks_.upper_bound(p);  // first block starting after p
  if (it == blocks_.begin()) return nullptr;
  --it;
  Block* b = it->second.get();
  if (!b->allocated || !std::less<char*>()(p, b->ptr + b->size)) return nullptr;
  return b;
}

bool CachingAllocator::record_stream(void* ptr, StreamHandle stream) {
  if (!ptr) return false;
  std::lock_guard<std::mutex> lock(mutex_);
  Block* b = live_block_containing(ptr);
  if (!b) return false;
  if (stream != b->stream) b->stream_uses.insert(stream);
  return true;
}

AllocatorStats CachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CachingAllocator::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
  stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

void CachingAllocator::update_peaks() {
  if (stats_.allocated_bytes > stats_.peak_allocated_bytes) stats_.peak_allocated_bytes = stats_.allocated_bytes;
  if (stats_.reserved_bytes > stats_.peak_reserved_bytes) stats_.peak_reserved_bytes = stats_.reserved_bytes;
}

void CachingAllocator::throw_oom(size_t requested, size_t segment) {
  std::string device = backend_->describe_memory();
  LOOM_THROW(OutOfMemory, "out of memory on ", device_name_, ": tried to allocate ", format_bytes(requested),
             caching_ ? " (a new segment of " : " (caching off: one backend allocation of ", format_bytes(segment),
             "); loom's caching allocator has ", format_bytes(static_cast<size_t>(stats_.allocated_bytes)),
             " allocated to tensors and ", format_bytes(static_cast<size_t>(stats_.reserved_bytes)),
             " reserved (peak allocated ", format_bytes(static_cast<size_t>(stats_.peak_allocated_bytes)), ")",
             device.empty() ? "" : "; ", device,
             ". To fit: lower the batch size or sequence length, use bf16, activation checkpointing or FSDP "
             "sharding, and drop references to tensors you no longer need; memory held by other processes on the "
             "device is not the allocator's to free");
}

}  // namespace loom
