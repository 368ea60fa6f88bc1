// A caching device-memory allocator (the policy of PyTorch's CUDA caching
// allocator) over an abstract raw backend, so that a training step after the
// first reuses cached blocks and calls the backend's allocator (cudaMalloc) not
// at all. Plain C++, compiled in every build; tensor/cuda/runtime.cu puts one in
// front of cudaMalloc per device, the tests put one in front of malloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace loom {

/// A stream as the allocator sees it: an opaque handle compared by value (a
/// cudaStream_t in the CUDA runtime). Blocks are cached per stream.
using StreamHandle = void*;

/// The raw memory and event operations a CachingAllocator is built on.
/// Implementations may throw loom::Error for failures other than out-of-memory.
class AllocatorBackend {
 public:
  virtual ~AllocatorBackend() = default;
  /// bytes (> 0) of fresh memory, or nullptr when the device is out of memory.
  virtual void* alloc(size_t bytes) = 0;
  /// Returns memory obtained from alloc().
  virtual void free(void* ptr) = 0;
  /// An event handle that record() and query() accept.
  virtual void* event_create() = 0;
  /// Marks the point that the work queued so far on `stream` must pass.
  virtual void event_record(void* event, StreamHandle stream) = 0;
  /// True once the stream passed the recorded point.
  virtual bool event_query(void* event) = 0;
  virtual void event_destroy(void* event) = 0;
  /// Returns once the work queued so far on each of `streams` has finished (a
  /// backend may wait for more, e.g. the whole device). Used only by an
  /// allocator with caching off, before it frees a block. The default records
  /// an event on each stream and polls it.
  virtual void wait_streams(const std::vector<StreamHandle>& streams);
  /// Extra words for an out-of-memory message (the device's free and total memory); may be empty.
  virtual std::string describe_memory() { return {}; }
};

/// Counters of one CachingAllocator. Byte counts are of blocks (requests rounded
/// up to kMinBlockSize, or a whole cached block when splitting it would leave a
/// useless sliver), not of the bytes asked for; with caching off a block is
/// exactly the request and each block is its own segment.
struct AllocatorStats {
  int64_t allocated_bytes = 0;       // in blocks handed out and not yet freed
  int64_t reserved_bytes = 0;        // in segments held from the backend (allocated + cached)
  int64_t peak_allocated_bytes = 0;  // max of allocated_bytes since construction or reset_peak()
  int64_t peak_reserved_bytes = 0;   // max of reserved_bytes since construction or reset_peak()
  int64_t num_allocs = 0;            // allocate() calls that returned memory
  int64_t num_frees = 0;             // free() calls that released a block
  int64_t num_backend_allocs = 0;    // segments obtained from the backend (cudaMalloc calls)
  int64_t num_backend_frees = 0;     // segments returned to the backend (cudaFree calls)
  int64_t num_alloc_retries = 0;     // backend OOMs after which the cache was emptied and the call retried
  int64_t num_ooms = 0;              // requests that threw OutOfMemory
};

/// Caching allocator policy. Requests are rounded up to 512 B; requests up to
/// 1 MiB are cut from 2 MiB segments (the small pool), larger ones from segments
/// of the request rounded up to 2 MiB (the large pool). A request takes the
/// smallest free block of its pool and stream that fits (best fit) and splits
/// it; a freed block merges with free neighbours of its segment and goes back to
/// the free list of the stream it was allocated on. A block that record_stream()
/// marked as used on other streams is reused only after events recorded on those
/// streams at free() have completed. When the backend is out of memory, the
/// allocator returns its fully free segments to the backend and retries once,
/// then throws OutOfMemory. All methods are thread-safe.
///
/// With caching off (a debugging mode, PyTorch's PYTORCH_NO_CUDA_MEMORY_CACHING)
/// each allocate() takes exactly the bytes asked for from the backend, and
/// free() waits for the block's stream and the streams record_stream() named
/// (AllocatorBackend::wait_streams) and returns the memory to the backend at
/// once, so that a memory checker sees every block as its own allocation.
class CachingAllocator {
 public:
  static constexpr size_t kMinBlockSize = 512;           // every request is rounded up to a multiple
  static constexpr size_t kSmallSize = 1 << 20;          // largest request of the small pool (1 MiB)
  static constexpr size_t kSmallSegment = 2 << 20;       // segment size of the small pool (2 MiB)
  static constexpr size_t kLargeSegmentRound = 2 << 20;  // large segments are multiples of this (2 MiB)

  /// device_name (e.g. "cuda:0") appears in error messages. caching: false
  /// for one backend allocation per block (see the class comment); fixed for
  /// the allocator's lifetime.
  CachingAllocator(std::unique_ptr<AllocatorBackend> backend, std::string device_name, bool caching = true);
  /// Returns every segment to the backend (errors are swallowed: this runs in
  /// destructors); pointers still handed out become invalid.
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  /// bytes of memory for use on `stream`; nullptr for 0 bytes. Throws
  /// OutOfMemory naming the request, the device and the allocator's usage when
  /// the backend cannot provide it even after the cache was emptied.
  void* allocate(size_t bytes, StreamHandle stream);
  /// Releases a pointer allocate() returned (nullptr: no-op). Throws
  /// InvalidArgument for any other pointer.
  void free(void* ptr);
  /// Marks the block holding ptr (any address inside a live block) as used on
  /// `stream`, so that after free() it is reused only when `stream` has passed
  /// the point of the free. Returns false, doing nothing, when ptr lies in no
  /// block handed out by this allocator (memory owned elsewhere).
  bool record_stream(void* ptr, StreamHandle stream);
  /// Returns fully free segments to the backend (blocks still waiting for
  /// events stay). Cached bytes that are not part of a whole free segment stay.
  void empty_cache();

  AllocatorStats stats() const;
  /// Sets the peaks to the current values.
  void reset_peak();
  const std::string& device_name() const { return device_name_; }
  /// False when every block is its own backend allocation.
  bool caching() const { return caching_; }

 private:
  struct Block {
    char* ptr = nullptr;
    size_t size = 0;       // bytes
    size_t requested = 0;  // bytes asked for by the current owner
    StreamHandle stream = nullptr;
    bool small_pool = false;
    bool allocated = false;
    int pending_events = 0;              // events to pass before the block is free again
    std::set<StreamHandle> stream_uses;  // other streams that used it (record_stream)
    Block* prev = nullptr;               // neighbours in the same segment
    Block* next = nullptr;
  };
  struct ByStreamSize {
    bool operator()(const Block* a, const Block* b) const;
  };
  using FreeList = std::set<Block*, ByStreamSize>;

  FreeList& pool(bool small) { return small ? small_free_ : large_free_; }
  Block* find_free(bool small, StreamHandle stream, size_t size);
  Block* new_segment(bool small, StreamHandle stream, size_t segment, size_t requested);
  void split(Block* b, size_t size);
  void free_block(Block* b);  // merges and puts it on its free list
  void free_uncached(void* ptr);
  Block* allocated_block(void* ptr, const char* what);  // the block allocate() returned as ptr, else throws
  void process_events();
  void release_cached();
  Block* live_block_containing(void* ptr);
  [[noreturn]] void throw_oom(size_t requested, size_t segment);
  void update_peaks();

  mutable std::mutex mutex_;
  std::unique_ptr<AllocatorBackend> backend_;
  std::string device_name_;
  bool caching_ = true;
  std::map<char*, std::unique_ptr<Block>> blocks_;  // every block, free or not, by address
  FreeList small_free_;
  FreeList large_free_;
  std::vector<std::pair<void*, Block*>> pending_;  // (event, block) recorded at free()
  std::vector<void*> spare_events_;                // created events not in use
  AllocatorStats stats_;
};

}  // namespace loom
