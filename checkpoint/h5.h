// Thin RAII layer over the HDF5 C API for checkpoint files: one writer and one reader per rank file, 1-D datasets (one
// per saved piece) written and read by element ranges (hyperslabs). Every failing call throws IoError naming the file
// and dataset. HDF5 calls are serialised by one mutex (Debian's HDF5 is not built thread-safe, and async saves write
// from a background thread).
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "tensor/dtype.h"

namespace loom::checkpoint::detail {

/// The lock every HDF5 call in loom takes.
std::mutex& h5_mutex();

/// An hid_t closed by its close function on destruction.
class H5Id {
 public:
  using Closer = int (*)(int64_t);
  H5Id() = default;
  H5Id(int64_t id, Closer close) : id_(id), close_(close) {}
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, -1)), close_(o.close_) {}
  H5Id& operator=(H5Id&& o) noexcept;
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  ~H5Id() { reset(); }
  int64_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  /// Closes now; returns false when HDF5 reported an error closing (a failed flush).
  bool reset();

 private:
  int64_t id_ = -1;
  Closer close_ = nullptr;
};

/// Writes one rank file: datasets created one after another and filled by ranges.
class H5Writer {
 public:
  /// Creates (truncates) path. Throws IoError.
  explicit H5Writer(std::string path);
  /// Creates the 1-D dataset `dset` ("/a/b/0", groups created as needed) of n elements of dtype, with int64 array
  /// attributes; it becomes the current dataset. Throws IoError.
  void create(const std::string& dset, DType dtype, int64_t n,
              const std::vector<std::pair<std::string, std::vector<int64_t>>>& attrs);
  /// Attaches the per-block CRC32C list to the current dataset (after its data is written).
  void set_crc(const std::vector<uint32_t>& crcs);
  /// Writes elements [offset, offset + count) of the current dataset from data. Throws IoError.
  void write(int64_t offset, int64_t count, const void* data);
  /// Closes the file and fsyncs it: when this returns, the bytes are on disk. Throws IoError (a full disk shows here or
  /// in write).
  void close_and_sync();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  H5Id file_, dset_, space_, type_;
  std::string dset_name_;
  DType dtype_ = DType::f32;
};

/// Reads ranges of datasets of one rank file.
class H5Reader {
 public:
  /// Opens path read-only. Throws IoError naming the file (missing, truncated, not HDF5).
  explicit H5Reader(std::string path);
  /// Reads elements [offset, offset + count) of dataset dset into out; the dataset must hold `total` elements of dtype.
  /// `tensor` names the tensor for errors. Throws IoError.
  void read(const std::string& dset, DType dtype, int64_t total, int64_t offset, int64_t count, void* out,
            const std::string& tensor);
  const std::string& path() const { return path_; }
  int64_t file_id() const { return file_.get(); }

 private:
  std::string path_;
  H5Id file_;
};

/// Byte offset of dataset dset's data within the file at path (for tests that corrupt data). Throws IoError.
int64_t dataset_file_offset(const std::string& path, const std::string& dset);

/// The HDF5 file type loom stores dtype as (f16/bf16 as 16-bit unsigned integers, the dtype in an attribute).
int64_t h5_file_type(DType dtype);

}  // namespace loom::checkpoint::detail
