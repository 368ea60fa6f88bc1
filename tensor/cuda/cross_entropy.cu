// Fused softmax cross-entropy over logits (N, V), as llm.c does it: the forward
// keeps only the log-sum-exp of each row (an online max / sum of exp in one read)
// and the row's loss; the backward recomputes softmax from the saved lse and
// writes dlogits in one pass. The probabilities are never stored.
#include <limits>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/row_common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

/// Threads per block (at most; fewer for a short row) of both kernels: their __launch_bounds__.
constexpr int kCrossEntropyThreads = 1024;

// lse (N) = log sum exp of each row of logits (N, V); row_loss (N) = lse - logits[target]
// (0 where target == ignore_index; NaN for a target outside [0, V), which the op rejects first).
template <typename T, typename I>
__global__ void __launch_bounds__(kCrossEntropyThreads)
    cross_entropy_kernel(acc_t<T>* __restrict__ row_loss, acc_t<T>* __restrict__ lse, const T* __restrict__ logits,
                         const I* __restrict__ target, int64_t N, int64_t V, int64_t ignore_index) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* x = logits + r * V;
    A m, s;
    row_max_sumexp<T>(x, V, scratch, m, s);
    if (threadIdx.x == 0) {
      const A l = m + log_acc(s);
      const int64_t t = static_cast<int64_t>(target[r]);
      lse[r] = l;
      if (t == ignore_index) {
        row_loss[r] = A(0);
      } else if (t >= 0 && t < V) {
        row_loss[r] = l - load_acc(x + t);
      } else {
        row_loss[r] = std::numeric_limits<A>::quiet_NaN();
      }
    }
  }
}

/// The 0-dim grad_loss of dtype dt read on the device, as double.
__device__ __forceinline__ double load_scalar(const void* p, DType dt) {
  switch (dt) {
    case DType::f32:
      return static_cast<double>(*static_cast<const float*>(p));
    case DType::f64:
      return *static_cast<const double*>(p);
    case DType::bf16:
      return static_cast<double>(__bfloat162float(*static_cast<const __nv_bfloat16*>(p)));
    case DType::f16:
      return static_cast<double>(__half2float(*static_cast<const __half*>(p)));
    default:
      return 0.0;  // the launcher admits floating dtypes only
  }
}

// dlogits (N, V) = g * (exp(logits - lse) - onehot(target)) with g = grad_loss / count for
// counted rows, 0 for rows whose target is ignore_index.
template <typename T, typename I>
__global__ void __launch_bounds__(kCrossEntropyThreads)
    cross_entropy_backward_kernel(T* __restrict__ dlogits, const void* __restrict__ grad_loss, DType grad_dtype,
                                  const T* __restrict__ logits, const I* __restrict__ target,
                                  const acc_t<T>* __restrict__ lse, int64_t N, int64_t V, int64_t count,
                                  int64_t ignore_index) {
  using A = acc_t<T>;
  const A g = static_cast<A>(count > 0 ? load_scalar(grad_loss, grad_dtype) / static_cast<double>(count) : 0.0);
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const T* x = logits + r * V;
    T* o = dlogits + r * V;
    const int64_t t = static_cast<int64_t>(target[r]);
    if (t == ignore_index) {
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) o[i] = from_acc<T>(A(0));
      continue;
    }
    const A l = lse[r];
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      A v = g * exp_acc(load_acc(x + i) - l);
      if (i == t) v -= g;
      o[i] = from_acc<T>(v);
    }
  }
}

// ---------------------------------------------------------------- launchers

template <typename F>
void dispatch_index(DType dt, const char* op, F&& f) {
  if (dt == DType::i64) return f(int64_t{});
  if (dt == DType::i32) return f(int32_t{});
  LOOM_THROW(InvalidArgument, op, ": targets have dtype ", dtype_name(dt), "; expected int64 or int32");
}

void check_logits(const char* op, const Tensor& logits, const Tensor& target) {
  LOOM_CHECK(logits.dim() == 2 && logits.is_contiguous() && target.dim() == 1 && target.is_contiguous() &&
                 target.size(0) == logits.size(0),
             op, ": CUDA kernel expects contiguous logits (N, V) and target (N), got ", shape_str(logits.sizes()),
             " and ", shape_str(target.sizes()));
}

void check_stat(const char* op, const char* what, const Tensor& s, int64_t N, DType dt) {
  LOOM_CHECK(s.defined() && s.is_contiguous() && s.numel() == N && s.dtype() == dt, op, ": ", what,
             " must be contiguous ", dtype_name(dt), " of ", N, " values, got ",
             s.defined() ? dtype_name(s.dtype()) : "undefined", " ", s.defined() ? shape_str(s.sizes()) : "");
}

void cross_entropy_entry(const Tensor& row_loss, const Tensor& lse, const Tensor& logits, const Tensor& target,
                         int64_t ignore_index) {
  const char* op = "cross_entropy";
  check_logits(op, logits, target);
  const int64_t N = logits.size(0), V = logits.size(1);
  DeviceScope scope(logits.device().index);
  dispatch_floating(logits.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    check_stat(op, "row_loss", row_loss, N, acc_dtype<T>());
    check_stat(op, "lse", lse, N, acc_dtype<T>());
    if (N == 0) return;
    dispatch_index(target.dtype(), op, [&](auto itag) {
      using I = decltype(itag);
      cross_entropy_kernel<T, I><<<row_grid(N), row_block_size(V, kCrossEntropyThreads), 0, stream_for(logits)>>>(
          dptr<A>(row_loss), dptr<A>(lse), dptr<const T>(logits), dptr<const I>(target), N, V, ignore_index);
      LOOM_CUDA_LAUNCH_CHECK("cross_entropy_kernel");
    });
  });
}

void cross_entropy_backward_entry(const Tensor& dlogits, const Tensor& grad_loss, const Tensor& logits,
                                  const Tensor& target, const Tensor& lse, int64_t count, int64_t ignore_index) {
  const char* op = "cross_entropy_backward";
  check_logits(op, logits, target);
  LOOM_CHECK(dlogits.is_contiguous() && dlogits.dtype() == logits.dtype() && dlogits.sizes() == logits.sizes(), op,
             ": dlogits must be contiguous and match logits ", shape_str(logits.sizes()));
  LOOM_CHECK(grad_loss.defined() && grad_loss.numel() == 1 && is_floating(grad_loss.dtype()) &&
                 grad_loss.device() == logits.device(),
             op, ": grad_loss must be one floating value on ", logits.device().str());
  const int64_t N = logits.size(0), V = logits.size(1);
  DeviceScope scope(logits.device().index);
  dispatch_floating(logits.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    check_stat(op, "lse", lse, N, acc_dtype<T>());
    if (N == 0 || V == 0) return;
    dispatch_index(target.dtype(), op, [&](auto itag) {
      using I = decltype(itag);
      cross_entropy_backward_kernel<T, I>
          <<<row_grid(N), row_block_size(V, kCrossEntropyThreads), 0, stream_for(logits)>>>(
              dptr<T>(dlogits), grad_loss.data_ptr(), grad_loss.dtype(), dptr<const T>(logits), dptr<const I>(target),
              dptr<const A>(lse), N, V, count, ignore_index);
      LOOM_CUDA_LAUNCH_CHECK("cross_entropy_backward_kernel");
    });
  });
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {
void register_cross_entropy(CudaKernels& k) {
  k.cross_entropy = &cuda_detail::cross_entropy_entry;
  k.cross_entropy_backward = &cuda_detail::cross_entropy_backward_entry;
}
}  // namespace loom::detail
