// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "../common.h"

// The Fortran BLAS that torch links (MKL in the x86-64 wheels, which export it). Weak: the
// extension still loads where torch does not export them, and gemm() below then goes through ATen.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

namespace srl_ext {

// Kernels are reached below the autograd layer (the op's autograd is registered in Python), but
// the ATen calls inside them would dispatch through autograd again and refuse inputs that
// require grad (mm_out). The guard keeps the calling thread below it; it is thread-local, so
// the kernels also work on detached views of their inputs, which the worker threads of
// at::parallel_for see as plain tensors.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

// float32 for half-precision inputs, the dtype itself for float32/float64.
inline at::ScalarType accumulation_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// Bins index rows of K x D tables: an index out of range would write out of bounds, so every
// kernel checks them (ValueError in Python, also when the Python-level checks are skipped).
inline void check_bins_in_range(const int64_t* bins, int64_t n, int64_t num_bins) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(
        bins[i] >= 0 && bins[i] < num_bins, "srl_ext: argument 'bins' must hold bin indices in [0, ", num_bins,
        "), got ", bins[i], " at position ", i);
  }
}

// The ops are public (torch.ops.srl_ext.*): each checks every tensor argument's device, shape and
// dtype before reading it, since a size that disagrees with another argument's would read or
// write past a buffer. cols / rows < 0: any.
inline void check_cpu_matrix(const at::Tensor& t, const char* name, int64_t cols = -1, int64_t rows = -1) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "srl_ext: argument '", name, "' must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 2, "srl_ext: argument '", name, "' must be 2-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.size(1) >= 1, "srl_ext: argument '", name, "' must have D >= 1 columns, got ", t.size(1));
  TORCH_CHECK_VALUE(
      cols < 0 || t.size(1) == cols, "srl_ext: argument '", name, "' must have ", cols, " columns, got shape ",
      t.sizes());
  TORCH_CHECK_VALUE(
      rows < 0 || t.size(0) == rows, "srl_ext: argument '", name, "' must have ", rows, " rows, got shape ", t.sizes());
  TORCH_CHECK_VALUE(
      at::isFloatingType(t.scalar_type()), "srl_ext: argument '", name, "' must be floating point, got ",
      t.scalar_type());
}

// A vector of n entries on the CPU: int64 when `integer`, else floating point.
inline void check_cpu_vector(const at::Tensor& t, const char* name, int64_t n, bool integer) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "srl_ext: argument '", name, "' must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK_VALUE(
      t.dim() == 1 && t.size(0) == n, "srl_ext: argument '", name, "' must have shape (", n, ",), got shape ",
      t.sizes());
  TORCH_CHECK_VALUE(
      integer ? t.scalar_type() == at::kLong : at::isFloatingType(t.scalar_type()), "srl_ext: argument '", name,
      "' must be ", integer ? "int64" : "floating point", ", got ", t.scalar_type());
}

// Rows of D = 0 columns: refused on every device, as the CUDA envelope plans its shared memory
// per column (a division by D on the host).
inline void check_feature_dim(int64_t dim, const char* name) {
  TORCH_CHECK_VALUE(dim >= 1, "srl_ext: argument '", name, "' must have D >= 1 columns, got ", dim);
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t d) {
  T s = 0;
  for (int64_t k = 0; k < d; ++k) s += a[k] * b[k];
  return s;
}

// Gradient of y = x / max(||x||, eps) given y, ||x|| and dL/dy, written to out (may alias g).
template <typename T>
inline void normalize_backward(const T* y, T norm, const T* g, T* out, int64_t d) {
  if (norm > static_cast<T>(kNormEps)) {
    const T yg = dot(y, g, d);
    for (int64_t k = 0; k < d; ++k) out[k] = (g[k] - y[k] * yg) / norm;
  } else {
    for (int64_t k = 0; k < d; ++k) out[k] = g[k] / static_cast<T>(kNormEps);
  }
}

// C = alpha * op(A) op(B) + beta * C on row-major blocks (op(A): m x k, op(B): k x n, C: m x n;
// lda, ldb, ldc: row strides; beta = 0 ignores C's contents). Straight to the BLAS when torch
// exports it: an ATen call costs microseconds of dispatch and checks, which the small blocks of
// the fused kernels would pay many times per call. SRL_EXT_GEMM=aten forces the ATen path.
namespace detail {
inline bool blas_disabled() {
  static const bool disabled = [] {
    const char* choice = std::getenv("SRL_EXT_GEMM");
    return choice != nullptr && std::strcmp(choice, "aten") == 0;
  }();
  return disabled;
}

template <typename T>
void gemm_aten(
    bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
    int64_t ldb, T beta, T* c, int64_t ldc) {
  const BelowAutograd below_autograd;
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto* a_data = const_cast<T*>(a);
  auto* b_data = const_cast<T*>(b);
  const at::Tensor op_a = trans_a ? at::from_blob(a_data, {k, m}, {lda, 1}, options).t()
                                  : at::from_blob(a_data, {m, k}, {lda, 1}, options);
  const at::Tensor op_b = trans_b ? at::from_blob(b_data, {n, k}, {ldb, 1}, options).t()
                                  : at::from_blob(b_data, {k, n}, {ldb, 1}, options);
  at::Tensor out = at::from_blob(c, {m, n}, {ldc, 1}, options);
  out.addmm_(op_a, op_b, beta, alpha);  // beta = 0: out's contents are ignored, NaN included
}
}  // namespace detail

template <typename T>
inline void gemm(
    bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
    int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  auto* blas = [] {
    if constexpr (std::is_same_v<T, float>) return sgemm_; else return dgemm_;
  }();
  constexpr int64_t kIntMax = 2147483647;
  const bool fits = std::max({m, n, k, lda, ldb, ldc}) <= kIntMax;
  if (blas == nullptr || !fits || detail::blas_disabled()) {
    detail::gemm_aten(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Row-major C is column-major C^T = op(B)^T op(A)^T: the operands swap, and a row-major
  // operand is its own transpose in column-major.
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int mm = static_cast<int>(n), nn = static_cast<int>(m), kk = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  // The BLAS reads its leading dimensions even for empty operands: at least 1.
  const int la1 = std::max(la, 1), lb1 = std::max(lb, 1), lc1 = std::max(lc, 1);
  blas(&ta, &tb, &mm, &nn, &kk, &alpha, b, &la1, a, &lb1, &beta, c, &lc1);
}

}  // namespace srl_ext
