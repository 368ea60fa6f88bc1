// Matrix products on cuBLAS / cuBLASLt: bmm through cublasGemmStridedBatchedEx
// (row- or column-major views read as they lie, batch stride 0 broadcasting),
// linear through cublasLtMatmul with the bias, or bias + tanh-GELU writing the
// pre-activation, in the epilogue (llm.c's fusion). f32 runs in full f32
// (CUBLAS_COMPUTE_32F: TF32 off unless LOOM_ALLOW_TF32=1 is set), bf16/f16 in
// and out with f32 accumulation, f64 in f64.
//
// cuBLAS is column-major; a row-major C (M, N) is the column-major C^T (N, M),
// and C^T = B^T A^T, so every call passes b as cuBLAS's A and a as its B with
// m = N, n = M. A row-major operand is then an untransposed column-major one
// with the same leading dimension, a column-major (transposed) view a
// transposed one: no copies.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

#include "tensor/cuda/common.cuh"
#include "tensor/cuda/linear_plan.h"
#include "tensor/cuda/row_common.cuh"
#include "tensor/cuda_dispatch.h"

namespace loom::cuda_detail {
namespace {

[[noreturn]] void throw_cublas(cublasStatus_t s, const char* what, const char* file, int line) {
  LOOM_THROW(Error, what, " failed: ", cublasGetStatusName(s), " (", cublasGetStatusString(s), ") at ", file, ":",
             line);
}

#define LOOM_CUBLAS_CHECK(expr)                                                      \
  do {                                                                               \
    cublasStatus_t loom_cublas_st_ = (expr);                                         \
    if (loom_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                    \
      ::loom::cuda_detail::throw_cublas(loom_cublas_st_, #expr, __FILE__, __LINE__); \
  } while (0)

// ---------------------------------------------------------------- kernels

// c (n) = beta * c (0 when beta == 0, so NaNs in c do not survive): a product with K = 0.
template <typename T>
__global__ void __launch_bounds__(kBlock) scale_kernel(T* c, int64_t n, acc_t<T> beta) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    c[i] = from_acc<T>(beta == acc_t<T>(0) ? acc_t<T>(0) : beta * load_acc(c + i));
}

template <typename A>
__device__ __forceinline__ A gelu_tanh(A v) {
  const A k0 = A(0.7978845608028654), k1 = A(0.044715);
  return A(0.5) * v * (A(1) + tanh(k0 * (v + k1 * v * v * v)));
}

// out (M, N) += bias (N) (bias may be null); with pre, pre = that sum and out = gelu_tanh(sum).
// The epilogue of linear when cuBLASLt has no fused kernel for the case.
template <typename T>
__global__ void __launch_bounds__(kBlock) bias_gelu_kernel(T* out, T* pre, const T* bias, int64_t M, int64_t N) {
  using A = acc_t<T>;
  const int64_t n = M * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    A v = load_acc(out + i);
    if (bias) v += load_acc(bias + i % N);
    if (pre) {
      const T rounded = from_acc<T>(v);  // the pre-activation as stored, as the fused epilogue gives it
      pre[i] = rounded;
      v = gelu_tanh(load_acc(&rounded));
    }
    out[i] = from_acc<T>(v);
  }
}

// ---------------------------------------------------------------- handles and workspaces

constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLAS's recommendation for Hopper

/// One cuBLAS and one cuBLASLt handle per device and a workspace per (device, stream), made on
/// first use. cuBLAS handles are not safe to share between threads that set different streams,
/// so every call holds `mu` while it sets the stream and enqueues (microseconds; the GPU work
/// itself is asynchronous). The holder is a function-local static made after the CUDA runtime
/// is up, so it is destroyed before the runtime at exit; errors there are ignored.
struct BlasState {
  struct Device {
    cublasHandle_t blas = nullptr;
    cublasLtHandle_t lt = nullptr;
    std::map<cudaStream_t, void*> workspace;
  };
  std::mutex mu;
  std::vector<Device> devices;
  // cuBLASLt heuristic results by problem (see LtKey); nullopt: no fused algorithm, use the fallback.
  std::map<std::vector<int64_t>, std::optional<cublasLtMatmulAlgo_t>> lt_algos;

  ~BlasState() {
    for (Device& d : devices) {
      for (auto& [stream, ws] : d.workspace) cudaFree(ws);
      if (d.lt) cublasLtDestroy(d.lt);
      if (d.blas) cublasDestroy(d.blas);
    }
  }

  /// The handles of `device` (the current device) and the workspace of `stream`; call with mu held.
  Device& get(int device, cudaStream_t stream, void** workspace) {
    if (static_cast<size_t>(device) >= devices.size()) devices.resize(static_cast<size_t>(device) + 1);
    Device& d = devices[static_cast<size_t>(device)];
    if (!d.blas) LOOM_CUBLAS_CHECK(cublasCreate(&d.blas));
    if (!d.lt) LOOM_CUBLAS_CHECK(cublasLtCreate(&d.lt));
    auto it = d.workspace.find(stream);
    if (it == d.workspace.end()) {
      void* ws = nullptr;
      LOOM_CUDA_CHECK(cudaMalloc(&ws, kWorkspaceBytes));
      it = d.workspace.emplace(stream, ws).first;
    }
    *workspace = it->second;
    return d;
  }
};

BlasState& blas_state() {
  static BlasState s;
  return s;
}

bool allow_tf32() {
  static const bool on = [] {
    const char* v = std::getenv("LOOM_ALLOW_TF32");
    return v != nullptr && v[0] == '1';
  }();
  return on;
}

struct TypeInfo {
  cudaDataType_t data;
  cublasComputeType_t compute;
  cudaDataType_t scale;
};

TypeInfo type_info(DType dt, const char* op) {
  switch (dt) {
    case DType::f32:
      return {CUDA_R_32F, allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::f64:
      return {CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F};
    case DType::bf16:
      return {CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::f16:
      return {CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    default:
      break;
  }
  LOOM_THROW(Unsupported, op, ": no CUDA matrix product for dtype ", dtype_name(dt),
             " (f32, f64, bf16, f16 only); convert to a floating dtype first");
}

/// alpha and beta in the scale type (f64 for f64, else f32), passed to cuBLAS by host pointer.
struct Scalars {
  float f[2];
  double d[2];
  const void* alpha(cudaDataType_t s) const { return s == CUDA_R_64F ? static_cast<const void*>(&d[0]) : &f[0]; }
  const void* beta(cudaDataType_t s) const { return s == CUDA_R_64F ? static_cast<const void*>(&d[1]) : &f[1]; }
};
Scalars scalars(double alpha, double beta) {
  return {{static_cast<float>(alpha), static_cast<float>(beta)}, {alpha, beta}};
}

/// cuBLAS's view of a (rows, cols) row-major-indexed matrix with element strides (rs, cs):
/// op N with leading dimension ld when row-major, op T when column-major; nullopt otherwise.
struct Layout {
  cublasOperation_t op;
  int64_t ld;
};
std::optional<Layout> layout_of(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  const int64_t r1 = rows > 1 ? rows : 1, c1 = cols > 1 ? cols : 1;
  if ((cols <= 1 || cs == 1) && (rows <= 1 || rs >= c1)) return Layout{CUBLAS_OP_N, rows <= 1 ? c1 : rs};
  if ((rows <= 1 || rs == 1) && (cols <= 1 || cs >= r1)) return Layout{CUBLAS_OP_T, cols <= 1 ? r1 : cs};
  return std::nullopt;
}

template <typename T>
void launch_scale(cudaStream_t stream, const Tensor& c, double beta) {
  const int64_t n = c.numel();
  if (n == 0) return;
  scale_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(dptr<T>(c), n, static_cast<acc_t<T>>(beta));
  LOOM_CUDA_LAUNCH_CHECK("scale_kernel");
}

// ---------------------------------------------------------------- bmm

void bmm_entry(const Tensor& out, const Tensor& a, const Tensor& b, double alpha, double beta) {
  const char* op = "bmm";
  LOOM_CHECK(out.dim() == 3 && a.dim() == 3 && b.dim() == 3 && out.is_contiguous(), op,
             ": CUDA kernel expects 3-D operands and a contiguous out, got out ", shape_str(out.sizes()), " = ",
             shape_str(a.sizes()), " @ ", shape_str(b.sizes()));
  LOOM_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), op, ": operands must share out's dtype ",
             dtype_name(out.dtype()));
  const int64_t B = out.size(0), M = out.size(1), N = out.size(2), K = a.size(2);
  LOOM_CHECK(a.size(1) == M && b.size(1) == K && b.size(2) == N && (a.size(0) == B || a.size(0) == 1) &&
                 (b.size(0) == B || b.size(0) == 1),
             op, ": shapes do not agree: out ", shape_str(out.sizes()), " = ", shape_str(a.sizes()), " @ ",
             shape_str(b.sizes()));
  const TypeInfo ti = type_info(out.dtype(), op);
  if (B == 0 || M == 0 || N == 0) return;
  DeviceScope scope(out.device().index);
  const cudaStream_t stream = stream_for(out);
  if (K == 0) {
    dispatch_floating(out.dtype(), op, [&](auto tag) { launch_scale<decltype(tag)>(stream, out, beta); });
    return;
  }
  const std::optional<Layout> la = layout_of(M, K, a.stride(1), a.stride(2));
  const std::optional<Layout> lb = layout_of(K, N, b.stride(1), b.stride(2));
  LOOM_CHECK(la && lb, op, ": operands must be row- or column-major matrices, got strides ", shape_str(a.strides()),
             " and ", shape_str(b.strides()), "; make them contiguous first");
  const int64_t sa = a.size(0) == 1 ? 0 : a.stride(0), sb = b.size(0) == 1 ? 0 : b.stride(0);
  const Scalars s = scalars(alpha, beta);
  BlasState& st = blas_state();
  std::lock_guard<std::mutex> lock(st.mu);
  void* ws = nullptr;
  BlasState::Device& d = st.get(out.device().index, stream, &ws);
  LOOM_CUBLAS_CHECK(cublasSetStream(d.blas, stream));
  LOOM_CUBLAS_CHECK(cublasSetWorkspace(d.blas, ws, kWorkspaceBytes));
  // C^T (N, M) = b^T (N, K) @ a^T (K, M) in cuBLAS's column-major terms.
  LOOM_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(
      d.blas, lb->op, la->op, N, M, K, s.alpha(ti.scale), b.data_ptr(), ti.data, lb->ld, sb, a.data_ptr(), ti.data,
      la->ld, sa, s.beta(ti.scale), out.data_ptr(), ti.data, N, M * N, B, ti.compute, CUBLAS_GEMM_DEFAULT));
}

// ---------------------------------------------------------------- linear (cuBLASLt)

static_assert(kCublasStatusSuccess == CUBLAS_STATUS_SUCCESS &&
                  kCublasStatusInvalidValue == CUBLAS_STATUS_INVALID_VALUE &&
                  kCublasStatusNotSupported == CUBLAS_STATUS_NOT_SUPPORTED,
              "tensor/cuda/linear_plan.h's cuBLAS status codes differ from cublas_api.h");

/// RAII for the cuBLASLt descriptors of one call.
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescs() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

/// Runs out (M, N) = x (M, K) @ w (N, K)^T with the epilogue through cuBLASLt; false, having written
/// nothing, when the operands' alignment rules fusion out (plan_linear_fusion), when cuBLASLt has no
/// algorithm for the case or when cublasLtMatmul declines it (lt_matmul_outcome): the caller then runs
/// the unfused path, which gives the same results. Call with st.mu held.
bool lt_linear(BlasState& st, BlasState::Device& d, void* ws, cudaStream_t stream, const TypeInfo& ti,
               const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& gelu_pre,
               int64_t M, int64_t N, int64_t K) {
  const bool gelu = gelu_pre.defined();
  LinearOperands ops;
  ops.w = w.data_ptr();
  ops.x = x.data_ptr();
  ops.out = out.data_ptr();
  ops.bias = bias.defined() ? bias.data_ptr() : nullptr;
  ops.aux = gelu ? gelu_pre.data_ptr() : nullptr;
  ops.M = M;
  ops.N = N;
  ops.K = K;
  ops.element_size = static_cast<int64_t>(out.element_size());
  if (plan_linear_fusion(ops) != LinearFusion::kFused) return false;
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  if (gelu)
    epi = bias.defined() ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  else if (bias.defined())
    epi = CUBLASLT_EPILOGUE_BIAS;
  const void* bias_ptr = bias.defined() ? bias.data_ptr() : nullptr;
  void* aux_ptr = gelu ? gelu_pre.data_ptr() : nullptr;
  const uint32_t al_a = pointer_alignment(w.data_ptr()), al_b = pointer_alignment(x.data_ptr()),
                 al_c = pointer_alignment(out.data_ptr());
  const std::vector<int64_t> key = {out.device().index,
                                    static_cast<int64_t>(out.dtype()),
                                    M,
                                    N,
                                    K,
                                    static_cast<int64_t>(epi),
                                    al_a,
                                    al_b,
                                    al_c,
                                    bias_ptr ? pointer_alignment(bias_ptr) : 0,
                                    aux_ptr ? pointer_alignment(aux_ptr) : 0,
                                    allow_tf32() ? 1 : 0};
  auto cached = st.lt_algos.find(key);
  if (cached != st.lt_algos.end() && !cached->second) return false;

  LtDescs desc;
  LOOM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.op, ti.compute, ti.scale));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  LOOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  LOOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  LOOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (bias_ptr) {
    const int32_t bt = ti.data;
    LOOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
    LOOM_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)));
  }
  if (aux_ptr) {
    const int64_t ld = N;
    LOOM_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux_ptr, sizeof(aux_ptr)));
    LOOM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof(ld)));
  }
  // Column-major: w (N, K) row-major is (K, N) with ld K, used transposed; x (M, K) is (K, M)
  // with ld K; out (M, N) is (N, M) with ld N.
  LOOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.a, ti.data, K, N, K));
  LOOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.b, ti.data, K, M, K));
  LOOM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc.c, ti.data, N, M, N));

  cublasLtMatmulAlgo_t algo;
  if (cached != st.lt_algos.end()) {
    algo = *cached->second;
  } else {
    LOOM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&desc.pref));
    const uint64_t wsb = kWorkspaceBytes;
    LOOM_CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(desc.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, al_a},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, al_b},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, al_c},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, al_c}};
    for (const auto& [attr, v] : aligns)
      LOOM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(desc.pref, attr, &v, sizeof(v)));
    cublasLtMatmulHeuristicResult_t res{};
    int found = 0;
    const cublasStatus_t hs =
        cublasLtMatmulAlgoGetHeuristic(d.lt, desc.op, desc.a, desc.b, desc.c, desc.c, desc.pref, 1, &res, &found);
    if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
      st.lt_algos.emplace(key, std::nullopt);
      return false;
    }
    algo = res.algo;
    st.lt_algos.emplace(key, algo);
  }
  const Scalars s = scalars(1.0, 0.0);
  const cublasStatus_t ms =
      cublasLtMatmul(d.lt, desc.op, s.alpha(ti.scale), w.data_ptr(), desc.a, x.data_ptr(), desc.b, s.beta(ti.scale),
                     out.data_ptr(), desc.c, out.data_ptr(), desc.c, &algo, ws, kWorkspaceBytes, stream);
  switch (lt_matmul_outcome(static_cast<int>(ms))) {
    case LtMatmulOutcome::kDone:
      return true;
    case LtMatmulOutcome::kRunUnfused:
      st.lt_algos[key] = std::nullopt;  // declined after a successful heuristic: skip the attempt from now on
      return false;
    case LtMatmulOutcome::kFail:
      break;
  }
  throw_cublas(ms, "cublasLtMatmul", __FILE__, __LINE__);
}

void linear_entry(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& gelu_pre) {
  const char* op = gelu_pre.defined() ? "linear_gelu" : "linear";
  LOOM_CHECK(
      out.dim() == 2 && x.dim() == 2 && w.dim() == 2 && out.is_contiguous() && x.is_contiguous() && w.is_contiguous(),
      op, ": CUDA kernel expects contiguous out (M, N), x (M, K), w (N, K), got ", shape_str(out.sizes()), ", ",
      shape_str(x.sizes()), ", ", shape_str(w.sizes()));
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  LOOM_CHECK(
      w.size(1) == K && out.size(0) == M && out.size(1) == N && x.dtype() == out.dtype() && w.dtype() == out.dtype(),
      op, ": shapes or dtypes do not agree: out ", shape_str(out.sizes()), " = ", shape_str(x.sizes()), " @ ",
      shape_str(w.sizes()), "^T");
  LOOM_CHECK(!bias.defined() || (bias.is_contiguous() && bias.numel() == N && bias.dtype() == out.dtype()), op,
             ": bias must be contiguous (", N, ") of dtype ", dtype_name(out.dtype()));
  LOOM_CHECK(
      !gelu_pre.defined() || (gelu_pre.is_contiguous() && gelu_pre.numel() == M * N && gelu_pre.dtype() == out.dtype()),
      op, ": gelu_pre must be contiguous (", M, ", ", N, ") of dtype ", dtype_name(out.dtype()));
  const TypeInfo ti = type_info(out.dtype(), op);
  if (M == 0 || N == 0) return;
  DeviceScope scope(out.device().index);
  const cudaStream_t stream = stream_for(out);
  bool fused = false;
  if (K > 0) {
    BlasState& st = blas_state();
    std::lock_guard<std::mutex> lock(st.mu);
    void* ws = nullptr;
    BlasState::Device& d = st.get(out.device().index, stream, &ws);
    fused = lt_linear(st, d, ws, stream, ti, out, x, w, bias, gelu_pre, M, N, K);
    if (!fused) {
      LOOM_CUBLAS_CHECK(cublasSetStream(d.blas, stream));
      LOOM_CUBLAS_CHECK(cublasSetWorkspace(d.blas, ws, kWorkspaceBytes));
      const Scalars s = scalars(1.0, 0.0);
      LOOM_CUBLAS_CHECK(cublasGemmEx_64(d.blas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, s.alpha(ti.scale), w.data_ptr(),
                                        ti.data, K, x.data_ptr(), ti.data, K, s.beta(ti.scale), out.data_ptr(), ti.data,
                                        N, ti.compute, CUBLAS_GEMM_DEFAULT));
    }
  }
  if (fused) return;
  dispatch_floating(out.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    if (K == 0) launch_scale<T>(stream, out, 0.0);  // an empty sum
    if (!bias.defined() && !gelu_pre.defined()) return;
    bias_gelu_kernel<T><<<grid_for(M * N), kBlock, 0, stream>>>(dptr<T>(out),
                                                                gelu_pre.defined() ? dptr<T>(gelu_pre) : nullptr,
                                                                bias.defined() ? dptr<const T>(bias) : nullptr, M, N);
    LOOM_CUDA_LAUNCH_CHECK("bias_gelu_kernel");
  });
}

}  // namespace
}  // namespace loom::cuda_detail

namespace loom::detail {
void register_matmul(CudaKernels& k) {
  k.bmm = &cuda_detail::bmm_entry;
  k.linear = &cuda_detail::linear_entry;
}
}  // namespace loom::detail
