// Batch surrogate table (docs/method.md, "The surrogate table"), CUDA, forward and backward.
//
// Forward: one warp per sample gives 1/max(||h_i||, eps); then one block per bin scans the bins
// of the batch in order and sums the normalised rows of its members in shared memory (the same
// order as the CPU kernel; no atomics, so deterministic), turns the sum into a mean or takes
// the memory row, and normalises. Backward: one warp per sample takes d loss / d c_{y_i} back
// through the bin's normalisation and mean, then through the sample's normalisation.
// O(K*B) index reads and O(B*D + K*D) arithmetic; nothing is K x B.
#include "device_utils.cuh"
#include "launch.h"

namespace srl_ext {
namespace cuda {
namespace {

constexpr int kBinThreads = 128;

template <typename T>
__global__ void inverse_norms_kernel(const T* __restrict__ h, T* __restrict__ inv_norms, int64_t batch, int dim) {
  const int lane = threadIdx.x & 31;
  const int64_t i = warp_row();
  if (i >= batch) return;  // the whole warp leaves together
  const T* row = h + i * dim;
  const T sq = warp_dot(row, row, dim);
  if (lane == 0) inv_norms[i] = T(1) / norm_floor(sqrt_(sq));
}

// Dynamic shared memory: dim values of T (the bin's running sum).
template <typename T>
__global__ void __launch_bounds__(kBinThreads) bin_table_kernel(
    const T* __restrict__ h, const int64_t* __restrict__ bins, const T* __restrict__ memory,
    const T* __restrict__ inv_norms, T* __restrict__ surrogates, T* __restrict__ mean_norms,
    int64_t* __restrict__ counts, int64_t batch, int dim) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  T* row = reinterpret_cast<T*>(shared_raw);
  __shared__ int64_t tile_bins[kBinThreads];
  __shared__ T scratch[32];
  const int k = blockIdx.x, t = threadIdx.x;
  // Each thread owns the columns d = t, t + blockDim, ...: no synchronisation on `row`.
  for (int d = t; d < dim; d += kBinThreads) row[d] = 0;
  int64_t count = 0;  // the same in every thread
  for (int64_t base = 0; base < batch; base += kBinThreads) {
    __syncthreads();
    tile_bins[t] = base + t < batch ? bins[base + t] : -1;
    __syncthreads();
    const int n = static_cast<int>(batch - base < kBinThreads ? batch - base : kBinThreads);
    for (int e = 0; e < n; ++e) {
      if (tile_bins[e] != k) continue;  // a bin outside [0, K) matches no block
      const int64_t i = base + e;
      const T inv = inv_norms[i];
      const T* src = h + i * dim;
      for (int d = t; d < dim; d += kBinThreads) row[d] += src[d] * inv;
      ++count;
    }
  }
  const T* mem = memory + static_cast<int64_t>(k) * dim;
  const T inv_count = count > 0 ? T(1) / static_cast<T>(count) : T(0);
  T sq = 0;
  for (int d = t; d < dim; d += kBinThreads) {
    const T v = count > 0 ? row[d] * inv_count : mem[d];
    row[d] = v;
    sq = fma_(v, v, sq);
  }
  const T norm = sqrt_(block_sum(sq, scratch));
  const T inv = T(1) / norm_floor(norm);
  T* out = surrogates + static_cast<int64_t>(k) * dim;
  for (int d = t; d < dim; d += kBinThreads) out[d] = row[d] * inv;
  if (t == 0) {
    mean_norms[k] = norm;
    counts[k] = count;
  }
}

// d loss / d h_i for one sample per warp. With g = d loss / d c_y, the bin's mean m_y =
// ||m_y|| c_y and the sample's z_i = h_i / ||h_i||:
//   d loss / d m_y = (g - c_y <c_y, g>) / ||m_y||   (g / eps below the floor), divided by count_y;
//   d loss / d h_i = (gm - z_i <z_i, gm>) / ||h_i|| (gm / eps below the floor).
// Bins without samples (memory rows) pass no gradient.
template <typename T>
__global__ void table_backward_kernel(
    const T* __restrict__ grad_surrogates, const T* __restrict__ h, const int64_t* __restrict__ bins,
    const T* __restrict__ surrogates, const T* __restrict__ mean_norms, const int64_t* __restrict__ counts,
    T* __restrict__ grad_features, int64_t batch, int num_bins, int dim) {
  const int lane = threadIdx.x & 31;
  const int64_t i = warp_row();
  if (i >= batch) return;
  T* out = grad_features + i * dim;
  const int64_t y = bins[i];
  if (y < 0 || y >= num_bins) {  // no out-of-bounds read; the bad sample shows as NaN
    for (int d = lane; d < dim; d += 32) out[d] = quiet_nan<T>();
    return;
  }
  const int64_t count = counts[y];
  if (count == 0) {  // cannot happen for a sample's own bin, kept for safety
    for (int d = lane; d < dim; d += 32) out[d] = 0;
    return;
  }
  const T eps = static_cast<T>(kNormEps);
  const T* g = grad_surrogates + y * dim;
  const T* c = surrogates + y * dim;
  const T* row = h + i * dim;
  T cg = 0, sq = 0;
  for (int d = lane; d < dim; d += 32) {
    cg = fma_(c[d], g[d], cg);
    sq = fma_(row[d], row[d], sq);
  }
  cg = warp_sum(cg);
  sq = warp_sum(sq);
  const T mean_norm = mean_norms[y];
  const bool mean_above = mean_norm > eps;
  const T inv_count = T(1) / static_cast<T>(count);
  const T norm = sqrt_(sq);
  const T inv = T(1) / norm_floor(norm);
  // gm_d and z_d are recomputed in the second sweep, identically.
  auto grad_mean = [&](int d) { return (mean_above ? (g[d] - c[d] * cg) / mean_norm : g[d] / eps) * inv_count; };
  T zg = 0;
  for (int d = lane; d < dim; d += 32) zg = fma_(row[d] * inv, grad_mean(d), zg);
  zg = warp_sum(zg);
  const bool above = norm > eps;
  for (int d = lane; d < dim; d += 32) {
    const T gm = grad_mean(d);
    out[d] = above ? (gm - row[d] * inv * zg) / norm : gm / eps;
  }
}

}  // namespace

template <typename T>
void launch_surrogate_table(
    const T* features, const int64_t* bins, const T* memory, T* inv_norms, T* surrogates, T* mean_norms,
    int64_t* counts, int64_t batch, int num_bins, int dim, cudaStream_t stream) {
  if (batch > 0) {
    inverse_norms_kernel<T><<<ceil_div(batch, kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
        features, inv_norms, batch, dim);
  }
  if (num_bins > 0) {
    bin_table_kernel<T><<<num_bins, kBinThreads, dim * sizeof(T), stream>>>(
        features, bins, memory, inv_norms, surrogates, mean_norms, counts, batch, dim);
  }
}

template <typename T>
void launch_surrogate_table_backward(
    const T* grad_surrogates, const T* features, const int64_t* bins, const T* surrogates, const T* mean_norms,
    const int64_t* counts, T* grad_features, int64_t batch, int num_bins, int dim, cudaStream_t stream) {
  if (batch == 0) return;
  table_backward_kernel<T><<<ceil_div(batch, kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
      grad_surrogates, features, bins, surrogates, mean_norms, counts, grad_features, batch, num_bins, dim);
}

#define SRL_EXT_INSTANTIATE(T)                                                                                  \
  template void launch_surrogate_table<T>(                                                                     \
      const T*, const int64_t*, const T*, T*, T*, T*, int64_t*, int64_t, int, int, cudaStream_t);              \
  template void launch_surrogate_table_backward<T>(                                                            \
      const T*, const T*, const int64_t*, const T*, const T*, const int64_t*, T*, int64_t, int, int, cudaStream_t);
SRL_EXT_INSTANTIATE(float)
SRL_EXT_INSTANTIATE(double)
#undef SRL_EXT_INSTANTIATE

}  // namespace cuda
}  // namespace srl_ext
