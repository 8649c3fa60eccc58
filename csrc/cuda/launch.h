// Host entry points of the CUDA kernels (defined in the .cu files, instantiated for float and
// double: half-precision inputs are cast to float32 by ops.cpp before they get here, which is
// exact, so the kernels only ever see the accumulation dtype).
//
// All pointers are device pointers to contiguous row-major tensors; every launch goes on
// `stream`, and none of them reads device data on the host (no synchronisation), so the ops can
// be captured in a CUDA graph. Launch errors are checked by the caller (ops.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace srl_ext {
namespace cuda {

// Surrogate table (docs/method.md, "The surrogate table"). inv_norms: B scratch. Bins outside
// [0, K) belong to no bin.
template <typename T>
void launch_surrogate_table(
    const T* features, const int64_t* bins, const T* memory, T* inv_norms, T* surrogates, T* mean_norms,
    int64_t* counts, int64_t batch, int num_bins, int dim, cudaStream_t stream);

// Gradient of the table with respect to the features. A sample whose bin is outside [0, K)
// gets a NaN gradient row.
template <typename T>
void launch_surrogate_table_backward(
    const T* grad_surrogates, const T* features, const int64_t* bins, const T* surrogates, const T* mean_norms,
    const int64_t* counts, T* grad_features, int64_t batch, int num_bins, int dim, cudaStream_t stream);

// Contrastive term (docs/method.md, "Contrastive"): per-row losses and d loss / d features
// (already divided by B).
// max_distance: 1 int of scratch (label weighting). A sample whose bin is outside [0, K) gets
// a NaN loss and a NaN gradient row. dim must be <= kMaxContrastiveDim.
constexpr int kMaxContrastiveDim = 1024;
template <typename T>
void launch_contrastive(
    const T* features, const int64_t* bins, const T* surrogates, int* max_distance, T* row_losses,
    T* grad_features, int64_t batch, int num_bins, int dim, double temperature, bool label_weighting,
    cudaStream_t stream);

// Enveloping term (docs/method.md, "Enveloping"). Scratch sizes come from envelope_workspace().
struct EnvelopeWorkspace {
  int num_chunks;       // anchor chunks: the gradient is summed per chunk, then over chunks in order
  int64_t chunk;        // anchors per chunk
  int rows_per_block;   // surrogate rows per gradient block
  size_t shared_bytes;  // dynamic shared memory of the gradient kernel
  bool fast_soft;       // soft: the register-blocked gradient kernel (float32, D <= 128, enough shared memory)
};
// Queries the current device (the inputs' one: the caller holds a device guard).
EnvelopeWorkspace envelope_workspace(int64_t num_anchors, int num_bins, int dim, bool soft, size_t element_size);
// Largest dim the envelope kernels take (shared-memory bound of the gradient kernels).
int envelope_max_dim(bool soft, size_t element_size);

// coverage: N (max or smooth max per anchor); argmax: N ints (hard); row_max, inv_sum: N (soft);
// partials: num_chunks x K x D; grad: K x D = d loss / d surrogates.
template <typename T>
void launch_envelope(
    const T* surrogates, const T* anchors, T* coverage, int* argmax, T* row_max, T* inv_sum, T* partials, T* grad,
    int64_t num_anchors, int num_bins, int dim, bool soft, double temperature, const EnvelopeWorkspace& ws,
    cudaStream_t stream);

// Homogeneity term (docs/method.md, "Homogeneity"). neighbours: K-1 scratch; stats: 2 scratch;
// loss: 1.
template <typename T>
void launch_homogeneity(
    const T* surrogates, T* neighbours, T* stats, T* loss, T* grad, int num_bins, int dim, double sign, double beta,
    cudaStream_t stream);

}  // namespace cuda
}  // namespace srl_ext
