// conv2d forward and both backward passes through cuDNN's convolution API
// (compiled where cudnn.h is found; tensor/conv_cuda.h's table otherwise stays
// empty and the ops refuse CUDA tensors). One cuDNN handle per device and
// thread, set to the current stream before each call; algorithms picked by
// cudnnGet*Algorithm_v7 (first that fits a 256 MiB workspace), workspace from
// loom's caching allocator. Pooling and batch norm have no CUDA path yet.
#include "tensor/conv_cuda.h"
#include "tensor/cuda/common.cuh"

#if __has_include(<cudnn.h>)
#include <cudnn.h>

#include <map>

namespace loom::detail {
namespace {

[[noreturn]] void throw_cudnn(cudnnStatus_t s, const char* what, const char* file, int line) {
  LOOM_THROW(Error, what, " failed: ", cudnnGetErrorString(s), " at ", file, ":", line);
}
#define LOOM_CUDNN_CHECK(expr)                                                                                        \
  do {                                                                                                                \
    cudnnStatus_t loom_cudnn_s_ = (expr);                                                                             \
    if (loom_cudnn_s_ != CUDNN_STATUS_SUCCESS) ::loom::detail::throw_cudnn(loom_cudnn_s_, #expr, __FILE__, __LINE__); \
  } while (0)

constexpr size_t kMaxWorkspace = size_t(256) << 20;

cudnnHandle_t handle_for(const Tensor& t) {
  thread_local std::map<int, cudnnHandle_t> handles;
  const int dev = t.device().index;
  auto it = handles.find(dev);
  if (it == handles.end()) {
    cudnnHandle_t h = nullptr;
    LOOM_CUDNN_CHECK(cudnnCreate(&h));
    it = handles.emplace(dev, h).first;
  }
  LOOM_CUDNN_CHECK(cudnnSetStream(it->second, cuda_detail::stream_for(t)));
  return it->second;
}

cudnnDataType_t cudnn_type(DType dt, const char* op) {
  switch (dt) {
    case DType::f32:
      return CUDNN_DATA_FLOAT;
    case DType::f64:
      return CUDNN_DATA_DOUBLE;
    case DType::f16:
      return CUDNN_DATA_HALF;
    case DType::bf16:
      return CUDNN_DATA_BFLOAT16;
    default:
      LOOM_THROW(InvalidArgument, op, ": cuDNN has no convolution for dtype ", dtype_name(dt));
  }
}

/// Descriptors of one convolution, destroyed with the object.
struct ConvDescs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  ConvDescs(const Shape& xs, const Shape& ws, const Shape& ys, DType dt, const Conv2dOptions& o, const char* op) {
    const cudnnDataType_t t = cudnn_type(dt, op);
    // f16/bf16 accumulate in f32; f32/f64 in their own type.
    const cudnnDataType_t acc = (dt == DType::f16 || dt == DType::bf16) ? CUDNN_DATA_FLOAT : t;
    LOOM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    LOOM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    LOOM_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    LOOM_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    auto i = [](int64_t v) { return static_cast<int>(v); };
    LOOM_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, t, i(xs[0]), i(xs[1]), i(xs[2]), i(xs[3])));
    LOOM_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, t, i(ys[0]), i(ys[1]), i(ys[2]), i(ys[3])));
    LOOM_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, t, CUDNN_TENSOR_NCHW, i(ws[0]), i(ws[1]), i(ws[2]), i(ws[3])));
    LOOM_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, i(o.padding[0]), i(o.padding[1]), i(o.stride[0]),
                                                     i(o.stride[1]), i(o.dilation[0]), i(o.dilation[1]),
                                                     CUDNN_CROSS_CORRELATION, acc));
    LOOM_CUDNN_CHECK(cudnnSetConvolutionGroupCount(conv, i(o.groups)));
    // f32 in full precision (no TF32), as the CPU path and the tests against it expect; 16-bit on tensor cores.
    LOOM_CUDNN_CHECK(cudnnSetConvolutionMathType(
        conv, (dt == DType::f16 || dt == DType::bf16) ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
  }
  ~ConvDescs() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(conv);
  }
  ConvDescs(const ConvDescs&) = delete;
  ConvDescs& operator=(const ConvDescs&) = delete;
};

/// alpha/beta in the scaling type cuDNN wants: double for f64 data, float otherwise.
struct Scale {
  float f1 = 1.f, f0 = 0.f;
  double d1 = 1.0, d0 = 0.0;
  bool dbl;
  explicit Scale(DType dt) : dbl(dt == DType::f64) {}
  const void* one() const { return dbl ? static_cast<const void*>(&d1) : static_cast<const void*>(&f1); }
  const void* zero() const { return dbl ? static_cast<const void*>(&d0) : static_cast<const void*>(&f0); }
};

Tensor workspace(size_t bytes, const Tensor& like) {
  return bytes == 0 ? Tensor() : empty({static_cast<int64_t>(bytes)}, DType::u8, like.device());
}
void* ptr(const Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

void forward(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& b, const Conv2dOptions& o) {
  cuda_detail::DeviceScope scope(x.device().index);
  cudnnHandle_t h = handle_for(x);
  ConvDescs d(x.sizes(), w.sizes(), y.sizes(), x.dtype(), o, "conv2d");
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int n = 0;
  LOOM_CUDNN_CHECK(
      cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf));
  int pick = -1;
  for (int k = 0; k < n && pick < 0; ++k)
    if (perf[k].status == CUDNN_STATUS_SUCCESS && perf[k].memory <= kMaxWorkspace) pick = k;
  LOOM_CHECK(pick >= 0, "conv2d: cuDNN found no forward algorithm for input ", shape_str(x.sizes()), ", weight ",
             shape_str(w.sizes()));
  Tensor ws = workspace(perf[pick].memory, x);
  const Scale s(x.dtype());
  LOOM_CUDNN_CHECK(cudnnConvolutionForward(h, s.one(), d.x, x.data_ptr(), d.w, w.data_ptr(), d.conv, perf[pick].algo,
                                           ptr(ws), perf[pick].memory, s.zero(), d.y, y.data_ptr()));
  if (b.defined()) {
    cudnnTensorDescriptor_t bd = nullptr;
    LOOM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bd));
    LOOM_CUDNN_CHECK(cudnnSetTensor4dDescriptor(bd, CUDNN_TENSOR_NCHW, cudnn_type(b.dtype(), "conv2d"), 1,
                                                static_cast<int>(b.size(0)), 1, 1));
    const cudnnStatus_t st = cudnnAddTensor(h, s.one(), bd, b.data_ptr(), s.one(), d.y, y.data_ptr());
    cudnnDestroyTensorDescriptor(bd);
    LOOM_CUDNN_CHECK(st);
  }
}

void backward_input(const Tensor& dx, const Tensor& dy, const Tensor& w, const Conv2dOptions& o) {
  cuda_detail::DeviceScope scope(dy.device().index);
  cudnnHandle_t h = handle_for(dy);
  ConvDescs d(dx.sizes(), w.sizes(), dy.sizes(), dy.dtype(), o, "conv2d_backward_input");
  cudnnConvolutionBwdDataAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  int n = 0;
  LOOM_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x,
                                                               CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, perf));
  int pick = -1;
  for (int k = 0; k < n && pick < 0; ++k)
    if (perf[k].status == CUDNN_STATUS_SUCCESS && perf[k].memory <= kMaxWorkspace) pick = k;
  LOOM_CHECK(pick >= 0, "conv2d_backward_input: cuDNN found no algorithm for grad_output ", shape_str(dy.sizes()),
             ", weight ", shape_str(w.sizes()));
  Tensor ws = workspace(perf[pick].memory, dy);
  const Scale s(dy.dtype());
  LOOM_CUDNN_CHECK(cudnnConvolutionBackwardData(h, s.one(), d.w, w.data_ptr(), d.y, dy.data_ptr(), d.conv,
                                                perf[pick].algo, ptr(ws), perf[pick].memory, s.zero(), d.x,
                                                dx.data_ptr()));
}

void backward_weight(const Tensor& dw, const Tensor& dy, const Tensor& x, const Conv2dOptions& o) {
  cuda_detail::DeviceScope scope(dy.device().index);
  cudnnHandle_t h = handle_for(dy);
  ConvDescs d(x.sizes(), dw.sizes(), dy.sizes(), dy.dtype(), o, "conv2d_backward_weight");
  cudnnConvolutionBwdFilterAlgoPerf_t perf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  int n = 0;
  LOOM_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w,
                                                                 CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, perf));
  int pick = -1;
  for (int k = 0; k < n && pick < 0; ++k)
    if (perf[k].status == CUDNN_STATUS_SUCCESS && perf[k].memory <= kMaxWorkspace) pick = k;
  LOOM_CHECK(pick >= 0, "conv2d_backward_weight: cuDNN found no algorithm for grad_output ", shape_str(dy.sizes()),
             ", input ", shape_str(x.sizes()));
  Tensor ws = workspace(perf[pick].memory, dy);
  const Scale s(dy.dtype());
  LOOM_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, s.one(), d.x, x.data_ptr(), d.y, dy.data_ptr(), d.conv,
                                                  perf[pick].algo, ptr(ws), perf[pick].memory, s.zero(), d.w,
                                                  dw.data_ptr()));
}

void backward_bias(const Tensor& db, const Tensor& dy) {
  cuda_detail::DeviceScope scope(dy.device().index);
  cudnnHandle_t h = handle_for(dy);
  cudnnTensorDescriptor_t yd = nullptr, bd = nullptr;
  LOOM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&yd));
  LOOM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bd));
  auto i = [](int64_t v) { return static_cast<int>(v); };
  const cudnnDataType_t t = cudnn_type(dy.dtype(), "conv2d_backward_bias");
  cudnnStatus_t st =
      cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, t, i(dy.size(0)), i(dy.size(1)), i(dy.size(2)), i(dy.size(3)));
  if (st == CUDNN_STATUS_SUCCESS) st = cudnnSetTensor4dDescriptor(bd, CUDNN_TENSOR_NCHW, t, 1, i(db.size(0)), 1, 1);
  const Scale s(dy.dtype());
  if (st == CUDNN_STATUS_SUCCESS)
    st = cudnnConvolutionBackwardBias(h, s.one(), yd, dy.data_ptr(), s.zero(), bd, db.data_ptr());
  cudnnDestroyTensorDescriptor(yd);
  cudnnDestroyTensorDescriptor(bd);
  LOOM_CUDNN_CHECK(st);
}

}  // namespace

void register_conv_cudnn(ConvCudaKernels& k) {
  k.conv2d_forward = forward;
  k.conv2d_backward_input = backward_input;
  k.conv2d_backward_weight = backward_weight;
  k.conv2d_backward_bias = backward_bias;
}

}  // namespace loom::detail

#else  // no cudnn.h at build time: the table stays empty

namespace loom::detail {
void register_conv_cudnn(ConvCudaKernels&) {}
}  // namespace loom::detail

#endif
