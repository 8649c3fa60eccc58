// Contrastive term (docs/method.md, "Contrastive"), CUDA, fused forward and backward.
//
// One warp per sample; the normalised feature z_i and its gradient live in registers (V values
// per lane, D <= 32 V). Sweep 1 over the K surrogates: logits <z_i, c_k>/tau (+ log w_ik) and an
// online log-sum-exp. Sweep 2 recomputes the same logits and accumulates
// sum_k (softmax_ik - [k = y_i]) c_k, which is d loss_i / d z_i up to 1/(tau B); then the
// gradient goes back through the normalisation. Nothing B x K is stored; the surrogates (K x D)
// are read from L1/L2. The per-row losses are summed by the caller in a fixed order.
#include <type_traits>

#include "device_utils.cuh"
#include "launch.h"

namespace srl_ext {
namespace cuda {
namespace {

// max over the batch of max(y_i + 1, K - y_i): the largest |y_i - k| + 1 (the label-distance
// weighting of docs/method.md, "Contrastive").
__global__ void max_label_distance_kernel(const int64_t* __restrict__ bins, int* __restrict__ out, int64_t batch,
                                          int num_bins) {
  __shared__ int scratch[32];
  int best = 1;
  for (int64_t i = threadIdx.x; i < batch; i += blockDim.x) {
    const int64_t y = bins[i];
    if (y < 0 || y >= num_bins) continue;  // such rows come out NaN anyway
    const int far = static_cast<int>(y + 1 > num_bins - y ? y + 1 : num_bins - y);
    best = far > best ? far : best;
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const int other = __shfl_xor_sync(kFullMask, best, offset);
    best = other > best ? other : best;
  }
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) best = scratch[w] > best ? scratch[w] : best;
    *out = best;
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) contrastive_kernel(
    const T* __restrict__ h, const int64_t* __restrict__ bins, const T* __restrict__ surrogates,
    const int* __restrict__ max_distance, T* __restrict__ row_losses, T* __restrict__ grad, int64_t batch,
    int num_bins, int dim, T inv_tau, T grad_scale, bool label_weighting) {
  const int lane = threadIdx.x & 31;
  const int64_t i = warp_row();
  if (i >= batch) return;  // the whole warp leaves together
  const T eps = static_cast<T>(kNormEps);
  const T* row = h + i * dim;
  T* out = grad + i * dim;
  const int64_t y = bins[i];
  if (y < 0 || y >= num_bins) {  // no out-of-bounds read: the bad sample shows as a NaN loss
    if (lane == 0) row_losses[i] = quiet_nan<T>();
    for (int d = lane; d < dim; d += 32) out[d] = quiet_nan<T>();
    return;
  }

  T z[V];
  T sq = 0;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int d = lane + 32 * v;
    z[v] = d < dim ? row[d] : T(0);
    sq = fma_(z[v], z[v], sq);
  }
  const T norm = sqrt_(warp_sum(sq));
  const T inv = T(1) / norm_floor(norm);
#pragma unroll
  for (int v = 0; v < V; ++v) z[v] *= inv;

  const T max_label_distance = label_weighting ? static_cast<T>(*max_distance) : T(1);
  // The logit of the denominator for bin k (identical in both sweeps), and the plain one.
  auto logit = [&](int k, T& plain) {
    const T* c = surrogates + static_cast<int64_t>(k) * dim;
    T s = 0;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int d = lane + 32 * v;
      if (d < dim) s = fma_(z[v], __ldg(c + d), s);
    }
    plain = warp_sum(s) * inv_tau;
    if (!label_weighting) return plain;
    const int64_t distance = y > k ? y - k : k - y;
    return plain + log_(static_cast<T>(distance + 1) / max_label_distance);  // log w_ik, as the CPU kernel
  };

  T top = neg_inf<T>(), sum = 0, positive = 0;
  for (int k = 0; k < num_bins; ++k) {
    T plain;
    const T s = logit(k, plain);
    if (k == y) positive = plain;  // the numerator carries no weight
    if (s > top) {
      sum = sum * exp_(top - s) + T(1);
      top = s;
    } else {
      sum += exp_(s - top);
    }
  }
  if (lane == 0) row_losses[i] = top + log_(sum) - positive;

  // d loss_i / d logit_ik = softmax_ik - [k = y], times 1/(tau B) for the mean and the 1/tau.
  const T scale = grad_scale / sum;
  T g[V];
#pragma unroll
  for (int v = 0; v < V; ++v) g[v] = 0;
  for (int k = 0; k < num_bins; ++k) {
    T plain;
    T p = exp_(logit(k, plain) - top) * scale;
    if (k == y) p -= grad_scale;
    const T* c = surrogates + static_cast<int64_t>(k) * dim;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int d = lane + 32 * v;
      if (d < dim) g[v] = fma_(p, __ldg(c + d), g[v]);
    }
  }
  // Back through z = h / max(||h||, eps).
  T zg = 0;
#pragma unroll
  for (int v = 0; v < V; ++v) zg = fma_(z[v], g[v], zg);
  zg = warp_sum(zg);
  const bool above = norm > eps;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    const int d = lane + 32 * v;
    if (d < dim) out[d] = above ? (g[v] - z[v] * zg) / norm : g[v] / eps;
  }
}

template <typename T, int V>
void launch_rows(const T* h, const int64_t* bins, const T* surrogates, const int* max_distance, T* row_losses, T* grad,
                 int64_t batch, int num_bins, int dim, T inv_tau, T grad_scale, bool label_weighting,
                 cudaStream_t stream) {
  contrastive_kernel<T, V><<<ceil_div(batch, kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
      h, bins, surrogates, max_distance, row_losses, grad, batch, num_bins, dim, inv_tau, grad_scale,
      label_weighting);
}

}  // namespace

template <typename T>
void launch_contrastive(
    const T* features, const int64_t* bins, const T* surrogates, int* max_distance, T* row_losses,
    T* grad_features, int64_t batch, int num_bins, int dim, double temperature, bool label_weighting,
    cudaStream_t stream) {
  if (batch == 0) return;
  if (label_weighting) max_label_distance_kernel<<<1, 256, 0, stream>>>(bins, max_distance, batch, num_bins);
  const T inv_tau = static_cast<T>(1.0 / temperature);
  const T grad_scale = inv_tau / static_cast<T>(batch);
  // Registers per lane: the smallest V with 32 V >= dim (dim <= kMaxContrastiveDim, checked by the caller).
  const auto run = [&](auto values_per_lane) {
    launch_rows<T, decltype(values_per_lane)::value>(features, bins, surrogates, max_distance, row_losses,
                                                     grad_features, batch, num_bins, dim, inv_tau, grad_scale,
                                                     label_weighting, stream);
  };
  if (dim <= 32) run(std::integral_constant<int, 1>{});
  else if (dim <= 64) run(std::integral_constant<int, 2>{});
  else if (dim <= 128) run(std::integral_constant<int, 4>{});
  else if (dim <= 256) run(std::integral_constant<int, 8>{});
  else if (dim <= 512) run(std::integral_constant<int, 16>{});
  else run(std::integral_constant<int, 32>{});
}

template void launch_contrastive<float>(const float*, const int64_t*, const float*, int*, float*, float*, int64_t,
                                        int, int, double, bool, cudaStream_t);
template void launch_contrastive<double>(const double*, const int64_t*, const double*, int*, double*, double*,
                                         int64_t, int, int, double, bool, cudaStream_t);

}  // namespace cuda
}  // namespace srl_ext
