// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace srl_ext {

// Kernels are reached below the autograd layer (the op's autograd is registered in Python), but
// the ATen calls inside them would dispatch through autograd again and refuse inputs that
// require grad (mm_out). The guard keeps the calling thread below it; it is thread-local, so
// the kernels also work on detached views of their inputs, which the worker threads of
// at::parallel_for see as plain tensors.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

// The same floor as torch.nn.functional.normalize (srl_ext/reference.py: EPS).
constexpr double kNormEps = 1e-12;

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

}  // namespace srl_ext
