#include "checkpoint/h5.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tensor/error.h"

namespace loom::checkpoint::detail {

namespace {

// HDF5 prints its error stack to stderr by default; loom reports errors itself. HDF5's atexit handler closes files
// still open, and a file whose close failed (a write error on a full disk leaves it half-closed) crashes it there: loom
// closes every file itself, so the handler is turned off.
void quiet_hdf5() {
  static bool done = [] {
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

int close_file(int64_t id) { return H5Fclose(id); }
int close_dset(int64_t id) { return H5Dclose(id); }
int close_space(int64_t id) { return H5Sclose(id); }
int close_plist(int64_t id) { return H5Pclose(id); }
int close_attr(int64_t id) { return H5Aclose(id); }
int close_type(int64_t id) { return H5Tclose(id); }

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0)
    throw IoError(loom::detail::str_cat("checkpoint: cannot open ", path, " to fsync: ", std::strerror(errno)));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw IoError(loom::detail::str_cat("checkpoint: fsync of ", path, " failed: ", std::strerror(err)));
}

void write_attr(int64_t obj, const char* name, int64_t type, const void* data, hsize_t n, const std::string& where) {
  H5Id space(H5Screate_simple(1, &n, nullptr), close_space);
  H5Id attr(H5Acreate2(obj, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT), close_attr);
  if (!attr.valid() || H5Awrite(attr.get(), type, data) < 0)
    throw IoError(loom::detail::str_cat("checkpoint: cannot write attribute ", name, " of ", where));
}

}  // namespace

std::mutex& h5_mutex() {
  static std::mutex m;
  return m;
}

H5Id& H5Id::operator=(H5Id&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = std::exchange(o.id_, -1);
    close_ = o.close_;
  }
  return *this;
}

bool H5Id::reset() {
  bool ok = true;
  if (id_ >= 0 && close_) ok = close_(id_) >= 0;
  id_ = -1;
  return ok;
}

int64_t h5_file_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return H5T_IEEE_F32LE;
    case DType::f64:
      return H5T_IEEE_F64LE;
    case DType::f16:
    case DType::bf16:
      return H5T_STD_U16LE;
    case DType::i32:
      return H5T_STD_I32LE;
    case DType::i64:
      return H5T_STD_I64LE;
    case DType::u8:
      return H5T_STD_U8LE;
  }
  throw InvalidArgument("checkpoint: unknown dtype");
}

H5Writer::H5Writer(std::string path) : path_(std::move(path)) {
  quiet_hdf5();
  // The latest file format (no backwards-compatible structures) keeps metadata small; h5py and h5dump read it.
  H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), close_plist);
  H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  file_ = H5Id(H5Fcreate(path_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), close_file);
  if (!file_.valid()) throw IoError(loom::detail::str_cat("checkpoint: cannot create HDF5 file ", path_));
}

void H5Writer::create(const std::string& dset, DType dtype, int64_t n,
                      const std::vector<std::pair<std::string, std::vector<int64_t>>>& attrs) {
  dset_.reset();
  space_.reset();
  dset_name_ = dset;
  dtype_ = dtype;
  const std::string where = path_ + ":" + dset;
  H5Id lcpl(H5Pcreate(H5P_LINK_CREATE), close_plist);
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  hsize_t dims = static_cast<hsize_t>(n);
  space_ = H5Id(H5Screate_simple(1, &dims, nullptr), close_space);
  // Contiguous layout with no fill: the data is written once, in order, so HDF5 need not pre-fill it.
  H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), close_plist);
  H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER);
  H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_LATE);
  dset_ = H5Id(
      H5Dcreate2(file_.get(), dset.c_str(), h5_file_type(dtype), space_.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT),
      close_dset);
  if (!dset_.valid()) throw IoError("checkpoint: cannot create dataset " + where);
  for (const auto& [name, v] : attrs) write_attr(dset_.get(), name.c_str(), H5T_STD_I64LE, v.data(), v.size(), where);
  const char* dn = dtype_name(dtype);
  H5Id str(H5Tcopy(H5T_C_S1), close_type);
  H5Tset_size(str.get(), std::strlen(dn));
  H5Tset_strpad(str.get(), H5T_STR_NULLPAD);  // exactly the name, no terminator stored
  H5Id scalar(H5Screate(H5S_SCALAR), close_space);
  H5Id attr(H5Acreate2(dset_.get(), "dtype", str.get(), scalar.get(), H5P_DEFAULT, H5P_DEFAULT), close_attr);
  if (!attr.valid() || H5Awrite(attr.get(), str.get(), dn) < 0)
    throw IoError("checkpoint: cannot write attribute dtype of " + where);
}

void H5Writer::set_crc(const std::vector<uint32_t>& crcs) {
  if (!crcs.empty())
    write_attr(dset_.get(), "crc32c", H5T_STD_U32LE, crcs.data(), crcs.size(), path_ + ":" + dset_name_);
}

void H5Writer::write(int64_t offset, int64_t count, const void* data) {
  if (count == 0) return;
  hsize_t off = static_cast<hsize_t>(offset), cnt = static_cast<hsize_t>(count);
  H5Id fspace(H5Dget_space(dset_.get()), close_space);
  H5Id mspace(H5Screate_simple(1, &cnt, nullptr), close_space);
  if (H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &off, nullptr, &cnt, nullptr) < 0 ||
      H5Dwrite(dset_.get(), h5_file_type(dtype_), mspace.get(), fspace.get(), H5P_DEFAULT, data) < 0)
    throw IoError(loom::detail::str_cat("checkpoint: writing elements [", offset, ", ", offset + count, ") of ", path_,
                                        ":", dset_name_, " failed (disk full?)"));
}

void H5Writer::close_and_sync() {
  bool ok = dset_.reset();
  space_.reset();
  ok = file_.reset() && ok;
  if (!ok) throw IoError("checkpoint: closing " + path_ + " failed (disk full?)");
  fsync_path(path_);
}

H5Reader::H5Reader(std::string path) : path_(std::move(path)) {
  quiet_hdf5();
  if (::access(path_.c_str(), R_OK) != 0) throw IoError("checkpoint: rank file " + path_ + " is missing or unreadable");
  file_ = H5Id(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), close_file);
  if (!file_.valid()) throw IoError("checkpoint: " + path_ + " is not a readable HDF5 file (truncated or corrupted?)");
}

void H5Reader::read(const std::string& dset, DType dtype, int64_t total, int64_t offset, int64_t count, void* out,
                    const std::string& tensor) {
  const std::string where = "tensor " + tensor + " (dataset " + dset + " of " + path_ + ")";
  H5Id d(H5Dopen2(file_.get(), dset.c_str(), H5P_DEFAULT), close_dset);
  if (!d.valid()) throw IoError("checkpoint: cannot open " + where + ": missing, or the file is corrupted");
  H5Id fspace(H5Dget_space(d.get()), close_space);
  hsize_t dims = 0;
  if (H5Sget_simple_extent_ndims(fspace.get()) != 1 || H5Sget_simple_extent_dims(fspace.get(), &dims, nullptr) < 0 ||
      static_cast<int64_t>(dims) != total)
    throw IoError(
        loom::detail::str_cat("checkpoint: ", where, " holds ", dims, " elements, the metadata says ", total));
  if (count == 0) return;
  hsize_t off = static_cast<hsize_t>(offset), cnt = static_cast<hsize_t>(count);
  H5Id mspace(H5Screate_simple(1, &cnt, nullptr), close_space);
  if (H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &off, nullptr, &cnt, nullptr) < 0 ||
      H5Dread(d.get(), h5_file_type(dtype), mspace.get(), fspace.get(), H5P_DEFAULT, out) < 0)
    throw IoError(loom::detail::str_cat("checkpoint: reading elements [", offset, ", ", offset + count, ") of ", where,
                                        " failed (truncated or corrupted file)"));
}

int64_t dataset_file_offset(const std::string& path, const std::string& dset) {
  std::lock_guard<std::mutex> lock(h5_mutex());
  H5Reader r(path);
  H5Id d(H5Dopen2(r.file_id(), dset.c_str(), H5P_DEFAULT), close_dset);
  haddr_t off = d.valid() ? H5Dget_offset(d.get()) : HADDR_UNDEF;
  if (off == HADDR_UNDEF) throw IoError("checkpoint: no contiguous data for dataset " + dset + " in " + path);
  return static_cast<int64_t>(off);
}

}  // namespace loom::checkpoint::detail
