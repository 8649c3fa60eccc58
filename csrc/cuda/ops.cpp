// CUDA kernels of the srl_ext ops: argument checks on metadata only, allocation, dispatch to
// the launchers in the .cu files (launch.h), registration for the CUDA dispatch key.
//
// Nothing here reads device data on the host: no .item(), no data-dependent shapes, no check of
// tensor values, so a whole loss step can be captured in a CUDA graph and runs without a
// host-device synchronisation. The consequences, documented in docs/gpu.md:
//  - bins outside [0, K) are not rejected (the CPU kernels raise): they never index out of
//    bounds; such a sample belongs to no bin in the table and gets a NaN contrastive loss and NaN
//    gradient rows, so the bad input shows in the loss;
//  - non-finite features are not rejected either; they propagate as NaN.
// Every kernel is free of float atomics and reduces in a fixed order, so the results are
// bitwise equal run to run, with or without torch.use_deterministic_algorithms.
//
// This file is compiled by the C++ compiler (the .cu files include no torch header at all,
// which keeps nvcc fast).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <optional>

#include "launch.h"

namespace srl_ext {
namespace {

// The ATen calls below (casts, sums) dispatch through autograd again unless kept below it.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

at::ScalarType accumulation_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

void check_cuda(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.is_cuda(), "srl_ext: argument '", name, "' must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK_VALUE(
      t.device() == like.device(), "srl_ext: argument '", name, "' must be on ", like.device(), ", got ", t.device());
}

void check_bins(const at::Tensor& bins, int64_t batch, const at::Tensor& like) {
  check_cuda(bins, "bins", like);
  TORCH_CHECK_VALUE(bins.scalar_type() == at::kLong, "srl_ext: argument 'bins' must be int64, got ", bins.scalar_type());
  TORCH_CHECK_VALUE(
      bins.dim() == 1 && bins.size(0) == batch, "srl_ext: argument 'bins' must have shape (", batch, ",), got ",
      bins.sizes());
}

void check_matrix(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == 2, "srl_ext: argument '", name, "' must be 2-D, got ", t.dim(), "-D");
  // D = 0 would divide by zero in the envelope's workspace planning (a SIGFPE on the host).
  TORCH_CHECK_VALUE(t.size(1) >= 1, "srl_ext: argument '", name, "' must have D >= 1 columns, got ", t.size(1));
  TORCH_CHECK_VALUE(t.size(1) == dim, "srl_ext: argument '", name, "' must have ", dim, " columns, got ", t.size(1));
  TORCH_CHECK_VALUE(
      at::isFloatingType(t.scalar_type()), "srl_ext: argument '", name, "' must be floating point, got ",
      t.scalar_type());
}

int to_int(int64_t v, const char* what) {
  TORCH_CHECK_VALUE(v <= std::numeric_limits<int>::max(), "srl_ext: ", what, " must be < 2^31, got ", v);
  return static_cast<int>(v);
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> surrogate_table_cuda(
    const at::Tensor& features, const at::Tensor& bins, const at::Tensor& memory) {
  const BelowAutograd below_autograd;
  check_matrix(features, "features", features.size(1));
  check_cuda(features, "features", features);
  check_cuda(memory, "memory", features);
  check_matrix(memory, "memory", features.size(1));
  check_bins(bins, features.size(0), features);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto acc = accumulation_type(features.scalar_type());
  const at::Tensor h = features.to(acc).contiguous();
  const at::Tensor b = bins.contiguous();
  const at::Tensor mem = memory.to(acc).contiguous();
  const int64_t batch = h.size(0);
  const int dim = to_int(h.size(1), "the feature dimension"), num_bins = to_int(mem.size(0), "the number of bins");
  TORCH_CHECK_VALUE(
      static_cast<size_t>(dim) * h.element_size() <= 40 * 1024, "srl_ext: the CUDA surrogate table takes D <= ",
      40 * 1024 / h.element_size(), " for ", acc, ", got ", dim);
  at::Tensor surrogates = at::empty({num_bins, dim}, h.options());
  at::Tensor mean_norms = at::empty({num_bins}, h.options());
  at::Tensor counts = at::empty({num_bins}, b.options());
  at::Tensor inv_norms = at::empty({batch}, h.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "surrogate_table_cuda", [&] {
    cuda::launch_surrogate_table<scalar_t>(
        h.data_ptr<scalar_t>(), b.data_ptr<int64_t>(), mem.data_ptr<scalar_t>(), inv_norms.data_ptr<scalar_t>(),
        surrogates.data_ptr<scalar_t>(), mean_norms.data_ptr<scalar_t>(), counts.data_ptr<int64_t>(), batch, num_bins,
        dim, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {surrogates, mean_norms, counts};
}

at::Tensor surrogate_table_backward_cuda(
    const at::Tensor& grad_surrogates, const at::Tensor& features, const at::Tensor& bins,
    const at::Tensor& surrogates, const at::Tensor& mean_norms, const at::Tensor& counts) {
  const BelowAutograd below_autograd;
  check_cuda(features, "features", features);
  for (const auto& [t, name] : {std::pair{grad_surrogates, "grad_surrogates"}, std::pair{surrogates, "surrogates"},
                                std::pair{mean_norms, "mean_norms"}, std::pair{counts, "counts"}}) {
    check_cuda(t, name, features);
  }
  check_matrix(features, "features", features.size(1));
  check_matrix(surrogates, "surrogates", features.size(1));
  check_bins(bins, features.size(0), features);
  const int64_t num_bins_64 = surrogates.size(0);
  TORCH_CHECK_VALUE(grad_surrogates.sizes() == surrogates.sizes(), "srl_ext: argument 'grad_surrogates' must have shape ",
                    surrogates.sizes(), ", got ", grad_surrogates.sizes());
  TORCH_CHECK_VALUE(mean_norms.numel() == num_bins_64 && counts.numel() == num_bins_64,
                    "srl_ext: arguments 'mean_norms' and 'counts' must have ", num_bins_64, " entries");
  TORCH_CHECK_VALUE(counts.scalar_type() == at::kLong, "srl_ext: argument 'counts' must be int64, got ",
                    counts.scalar_type());
  const c10::cuda::CUDAGuard guard(features.device());
  const auto acc = accumulation_type(features.scalar_type());
  const at::Tensor h = features.to(acc).contiguous();
  const at::Tensor b = bins.contiguous();
  const at::Tensor c = surrogates.to(acc).contiguous();
  const at::Tensor norms = mean_norms.to(acc).contiguous();
  const at::Tensor cnt = counts.contiguous();
  const at::Tensor g = grad_surrogates.to(acc).contiguous();
  const int64_t batch = h.size(0);
  const int dim = to_int(h.size(1), "the feature dimension"), num_bins = to_int(num_bins_64, "the number of bins");
  at::Tensor grad_features = at::empty({batch, dim}, h.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "surrogate_table_backward_cuda", [&] {
    cuda::launch_surrogate_table_backward<scalar_t>(
        g.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), b.data_ptr<int64_t>(), c.data_ptr<scalar_t>(),
        norms.data_ptr<scalar_t>(), cnt.data_ptr<int64_t>(), grad_features.data_ptr<scalar_t>(), batch, num_bins, dim,
        current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_features.to(features.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> contrastive_cuda(
    const at::Tensor& features, const at::Tensor& bins, const at::Tensor& surrogates, double temperature,
    bool label_weighting) {
  const BelowAutograd below_autograd;
  check_cuda(features, "features", features);
  check_cuda(surrogates, "surrogates", features);
  check_matrix(features, "features", features.size(1));
  check_matrix(surrogates, "surrogates", features.size(1));
  check_bins(bins, features.size(0), features);
  TORCH_CHECK_VALUE(temperature > 0, "srl_ext: argument 'temperature' must be > 0, got ", temperature);
  TORCH_CHECK_VALUE(
      features.size(1) <= cuda::kMaxContrastiveDim, "srl_ext: the CUDA contrastive kernel takes D <= ",
      cuda::kMaxContrastiveDim, ", got ", features.size(1), " (use backend 'triton' or 'reference')");
  const c10::cuda::CUDAGuard guard(features.device());
  const auto acc = accumulation_type(features.scalar_type());
  const at::Tensor h = features.to(acc).contiguous();
  const at::Tensor b = bins.contiguous();
  const at::Tensor c = surrogates.to(acc).contiguous();
  const int64_t batch = h.size(0);
  const int dim = to_int(h.size(1), "the feature dimension"), num_bins = to_int(c.size(0), "the number of bins");
  at::Tensor row_losses = at::empty({batch}, h.options());
  at::Tensor grad = at::empty({batch, dim}, h.options());
  at::Tensor max_distance = at::empty({1}, h.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(acc, "contrastive_cuda", [&] {
    cuda::launch_contrastive<scalar_t>(
        h.data_ptr<scalar_t>(), b.data_ptr<int64_t>(), c.data_ptr<scalar_t>(), max_distance.data_ptr<int>(),
        row_losses.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), batch, num_bins, dim, temperature,
        label_weighting, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor loss = row_losses.sum() / static_cast<double>(batch);
  return {loss, grad.to(features.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> envelope_cuda(
    const at::Tensor& surrogates, const at::Tensor& anchors, std::optional<double> envelope_temperature) {
  const BelowAutograd below_autograd;
  check_cuda(surrogates, "surrogates", surrogates);
  check_cuda(anchors, "anchors", surrogates);
  check_matrix(surrogates, "surrogates", surrogates.size(1));
  check_matrix(anchors, "anchors", surrogates.size(1));
  const bool soft = envelope_temperature.has_value();
  if (soft) {
    TORCH_CHECK_VALUE(*envelope_temperature > 0, "srl_ext: argument 'envelope_temperature' must be > 0, got ",
                      *envelope_temperature);
  }
  const c10::cuda::CUDAGuard guard(surrogates.device());
  const auto acc = accumulation_type(surrogates.scalar_type());
  const at::Tensor c = surrogates.to(acc).contiguous();
  const at::Tensor a = anchors.to(acc).contiguous();
  const int64_t num_anchors = a.size(0);
  const int dim = to_int(c.size(1), "the feature dimension"), num_bins = to_int(c.size(0), "the number of bins");
  TORCH_CHECK_VALUE(
      dim <= cuda::envelope_max_dim(soft, c.element_size()), "srl_ext: the CUDA envelope kernel takes D <= ",
      cuda::envelope_max_dim(soft, c.element_size()), " for ", acc, ", got ", dim);
  const cuda::EnvelopeWorkspace ws =
      cuda::envelope_workspace(num_anchors, num_bins, dim, soft, static_cast<size_t>(c.element_size()));
  at::Tensor coverage = at::empty({num_anchors}, c.options());
  at::Tensor argmax = at::empty({soft ? 0 : num_anchors}, c.options().dtype(at::kInt));
  at::Tensor row_max = at::empty({soft ? num_anchors : 0}, c.options());
  at::Tensor inv_sum = at::empty({soft ? num_anchors : 0}, c.options());
  at::Tensor partials = num_anchors > 0 ? at::empty({ws.num_chunks, num_bins, dim}, c.options())
                                        : at::zeros({ws.num_chunks, num_bins, dim}, c.options());
  at::Tensor grad = at::empty({num_bins, dim}, c.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "envelope_cuda", [&] {
    cuda::launch_envelope<scalar_t>(
        c.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), coverage.data_ptr<scalar_t>(),
        soft ? nullptr : argmax.data_ptr<int>(), soft ? row_max.data_ptr<scalar_t>() : nullptr,
        soft ? inv_sum.data_ptr<scalar_t>() : nullptr, partials.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
        num_anchors, num_bins, dim, soft, soft ? *envelope_temperature : 1.0, ws, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor loss = 1 - coverage.sum() / static_cast<double>(num_anchors);
  return {loss, grad};
}

std::tuple<at::Tensor, at::Tensor> homogeneity_cuda(const at::Tensor& surrogates, double sign, double beta) {
  const BelowAutograd below_autograd;
  check_cuda(surrogates, "surrogates", surrogates);
  check_matrix(surrogates, "surrogates", surrogates.size(1));
  TORCH_CHECK_VALUE(surrogates.size(0) >= 2, "srl_ext: argument 'surrogates' must have K >= 2 rows, got ",
                    surrogates.size(0));
  const c10::cuda::CUDAGuard guard(surrogates.device());
  const auto acc = accumulation_type(surrogates.scalar_type());
  const at::Tensor c = surrogates.to(acc).contiguous();
  const int dim = to_int(c.size(1), "the feature dimension"), num_bins = to_int(c.size(0), "the number of bins");
  at::Tensor loss = at::empty({}, c.options());
  at::Tensor grad = at::empty({num_bins, dim}, c.options());
  at::Tensor neighbours = at::empty({num_bins - 1}, c.options());
  at::Tensor stats = at::empty({2}, c.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "homogeneity_cuda", [&] {
    cuda::launch_homogeneity<scalar_t>(
        c.data_ptr<scalar_t>(), neighbours.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(),
        loss.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), num_bins, dim, sign, beta, current_stream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(srl_ext, CUDA, m) {
  m.impl("surrogate_table", &surrogate_table_cuda);
  m.impl("surrogate_table_backward", &surrogate_table_backward_cuda);
  m.impl("contrastive", &contrastive_cuda);
  m.impl("envelope", &envelope_cuda);
  m.impl("homogeneity", &homogeneity_cuda);
}

}  // namespace srl_ext
