// Homogeneity term (docs/method.md, "Homogeneity"), CUDA, fused forward and backward.
//
// a_k = <c_{k+1}, c_k>;  L = sign * sum_k a_k + beta * Var(a)  (unbiased; 0 when K = 2).
// dL/da_k = sign + 2 beta (a_k - mean(a)) / (K - 2);  dL/dc_k = dL/da_k c_{k+1} + dL/da_{k-1} c_{k-1}.
// Three small launches: one warp per neighbour pair for a_k; one block for the sum, mean and
// variance (fixed reduction order: deterministic); one thread per gradient entry.
#include "device_utils.cuh"
#include "launch.h"

namespace srl_ext {
namespace cuda {
namespace {

constexpr int kStatsThreads = 256;

template <typename T>
__global__ void neighbour_cosines_kernel(const T* __restrict__ c, T* __restrict__ a, int num_pairs, int dim) {
  const int lane = threadIdx.x & 31;
  const int64_t k = warp_row();
  if (k >= num_pairs) return;
  const T* lower = c + k * dim;
  const T s = warp_dot(lower + dim, lower, dim);
  if (lane == 0) a[k] = s;
}

// stats = (mean(a), 2 beta / (K - 2) or 0); loss = sign * sum(a) + beta * Var(a).
template <typename T>
__global__ void __launch_bounds__(kStatsThreads) homogeneity_stats_kernel(
    const T* __restrict__ a, T* __restrict__ stats, T* __restrict__ loss, int num_pairs, T sign, T beta) {
  __shared__ T scratch[32];
  T partial = 0;
  for (int k = threadIdx.x; k < num_pairs; k += kStatsThreads) partial += a[k];
  const T sum = block_sum(partial, scratch);
  const T mean = sum / static_cast<T>(num_pairs);
  T value = sign * sum;
  T var_scale = 0;  // d Var / d a_k = var_scale * (a_k - mean)
  if (num_pairs > 1) {
    T squares = 0;
    for (int k = threadIdx.x; k < num_pairs; k += kStatsThreads) squares += (a[k] - mean) * (a[k] - mean);
    squares = block_sum(squares, scratch);
    value += beta * squares / static_cast<T>(num_pairs - 1);
    var_scale = T(2) / static_cast<T>(num_pairs - 1);
  }
  if (threadIdx.x == 0) {
    stats[0] = mean;
    stats[1] = var_scale;
    *loss = value;
  }
}

template <typename T>
__global__ void homogeneity_grad_kernel(const T* __restrict__ c, const T* __restrict__ a, const T* __restrict__ stats,
                                        T* __restrict__ grad, int num_bins, int dim, T sign, T beta) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= static_cast<int64_t>(num_bins) * dim) return;
  const int k = static_cast<int>(e / dim);
  const int num_pairs = num_bins - 1;
  const T mean = stats[0], var_scale = stats[1];
  const T up = k < num_pairs ? sign + beta * var_scale * (a[k] - mean) : T(0);        // pair (k, k+1)
  const T down = k > 0 ? sign + beta * var_scale * (a[k - 1] - mean) : T(0);          // pair (k-1, k)
  const T next = k < num_pairs ? c[e + dim] : T(0);
  const T prev = k > 0 ? c[e - dim] : T(0);
  grad[e] = up * next + down * prev;
}

}  // namespace

template <typename T>
void launch_homogeneity(
    const T* surrogates, T* neighbours, T* stats, T* loss, T* grad, int num_bins, int dim, double sign, double beta,
    cudaStream_t stream) {
  const int num_pairs = num_bins - 1;  // >= 1, checked by the caller
  const T sign_t = static_cast<T>(sign), beta_t = static_cast<T>(beta);
  neighbour_cosines_kernel<T><<<ceil_div(num_pairs, kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
      surrogates, neighbours, num_pairs, dim);
  homogeneity_stats_kernel<T><<<1, kStatsThreads, 0, stream>>>(neighbours, stats, loss, num_pairs, sign_t, beta_t);
  const int64_t size = static_cast<int64_t>(num_bins) * dim;
  if (size > 0) {
    homogeneity_grad_kernel<T><<<ceil_div(size, 256), 256, 0, stream>>>(surrogates, neighbours, stats, grad, num_bins,
                                                                        dim, sign_t, beta_t);
  }
}

template void launch_homogeneity<float>(const float*, float*, float*, float*, float*, int, int, double, double,
                                        cudaStream_t);
template void launch_homogeneity<double>(const double*, double*, double*, double*, double*, int, int, double, double,
                                         cudaStream_t);

}  // namespace cuda
}  // namespace srl_ext
