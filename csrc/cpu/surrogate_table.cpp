// Batch surrogate table (docs/method.md, "The surrogate table"), CPU.
//
// Forward: one sweep over the batch normalises each feature row and adds it to its bin's sum;
// one sweep over the bins turns present bins into means and absent ones into memory rows, and
// normalises. Backward: the gradient of the row normalisation, spread over each bin's samples
// and taken back through the per-sample normalisation. Both are O(B*D + K*D).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace srl_ext {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> surrogate_table_cpu(
    const at::Tensor& features, const at::Tensor& bins, const at::Tensor& memory) {
  const BelowAutograd below_autograd;
  check_cpu_matrix(features, "features");
  check_cpu_vector(bins, "bins", features.size(0), true);
  check_cpu_matrix(memory, "memory", features.size(1));
  const auto acc = accumulation_type(features.scalar_type());
  const at::Tensor h = features.detach().to(acc).contiguous();
  const at::Tensor b = bins.detach().contiguous();
  const at::Tensor mem = memory.detach().to(acc).contiguous();
  const int64_t batch = h.size(0), dim = h.size(1), num_bins = mem.size(0);
  check_feature_dim(dim, "features");
  check_bins_in_range(b.data_ptr<int64_t>(), batch, num_bins);

  at::Tensor surrogates = at::zeros({num_bins, dim}, h.options());
  at::Tensor mean_norms = at::empty({num_bins}, h.options());
  at::Tensor counts = at::zeros({num_bins}, b.options());

  AT_DISPATCH_FLOATING_TYPES(acc, "surrogate_table_cpu", [&] {
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const scalar_t* mp = mem.data_ptr<scalar_t>();
    const int64_t* bp = b.data_ptr<int64_t>();
    scalar_t* sp = surrogates.data_ptr<scalar_t>();  // holds the per-bin sums until normalised
    scalar_t* np = mean_norms.data_ptr<scalar_t>();
    int64_t* cp = counts.data_ptr<int64_t>();
    const scalar_t eps = static_cast<scalar_t>(kNormEps);

    // Serial scatter: deterministic, and O(B*D) is small next to the terms that follow.
    for (int64_t i = 0; i < batch; ++i) {
      const scalar_t* row = hp + i * dim;
      const scalar_t sq = dot(row, row, dim);
      TORCH_CHECK_VALUE(std::isfinite(sq), "srl_ext: argument 'features' must be finite, got a non-finite value in row ", i);
      const scalar_t inv = scalar_t(1) / std::max(std::sqrt(sq), eps);
      scalar_t* sum = sp + bp[i] * dim;
      for (int64_t k = 0; k < dim; ++k) sum[k] += row[k] * inv;
      cp[bp[i]] += 1;
    }
    at::parallel_for(0, num_bins, 64, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        scalar_t* row = sp + k * dim;
        if (cp[k] > 0) {
          const scalar_t inv_count = scalar_t(1) / static_cast<scalar_t>(cp[k]);
          for (int64_t d = 0; d < dim; ++d) row[d] *= inv_count;
        } else {
          std::copy(mp + k * dim, mp + (k + 1) * dim, row);
        }
        const scalar_t norm = std::sqrt(dot(row, row, dim));
        np[k] = norm;
        const scalar_t inv = scalar_t(1) / std::max(norm, eps);
        for (int64_t d = 0; d < dim; ++d) row[d] *= inv;
      }
    });
  });
  return {surrogates, mean_norms, counts};
}

at::Tensor surrogate_table_backward_cpu(
    const at::Tensor& grad_surrogates, const at::Tensor& features, const at::Tensor& bins,
    const at::Tensor& surrogates, const at::Tensor& mean_norms, const at::Tensor& counts) {
  const BelowAutograd below_autograd;
  check_cpu_matrix(features, "features");
  check_cpu_vector(bins, "bins", features.size(0), true);
  check_cpu_matrix(surrogates, "surrogates", features.size(1));
  const int64_t table_rows = surrogates.size(0);
  check_cpu_matrix(grad_surrogates, "grad_surrogates", features.size(1), table_rows);
  check_cpu_vector(mean_norms, "mean_norms", table_rows, false);
  check_cpu_vector(counts, "counts", table_rows, true);
  const auto acc = accumulation_type(features.scalar_type());
  const at::Tensor h = features.detach().to(acc).contiguous();
  const at::Tensor b = bins.detach().contiguous();
  const at::Tensor c = surrogates.detach().to(acc).contiguous();
  const at::Tensor norms = mean_norms.detach().to(acc).contiguous();
  const at::Tensor cnt = counts.detach().contiguous();
  const int64_t batch = h.size(0), dim = h.size(1), num_bins = c.size(0);
  check_feature_dim(dim, "features");
  check_bins_in_range(b.data_ptr<int64_t>(), batch, num_bins);

  // d loss / d mean_b, already divided by the bin's count (zero for absent bins: memory rows
  // are detached).
  at::Tensor grad_means = grad_surrogates.detach().to(acc).contiguous().clone();
  at::Tensor grad_features = at::empty({batch, dim}, h.options());

  AT_DISPATCH_FLOATING_TYPES(acc, "surrogate_table_backward_cpu", [&] {
    const scalar_t* cp = c.data_ptr<scalar_t>();
    const scalar_t* np = norms.data_ptr<scalar_t>();
    const int64_t* countp = cnt.data_ptr<int64_t>();
    scalar_t* gm = grad_means.data_ptr<scalar_t>();
    at::parallel_for(0, num_bins, 64, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        scalar_t* g = gm + k * dim;
        if (countp[k] == 0) {
          std::fill(g, g + dim, scalar_t(0));
          continue;
        }
        normalize_backward(cp + k * dim, np[k], g, g, dim);
        const scalar_t inv_count = scalar_t(1) / static_cast<scalar_t>(countp[k]);
        for (int64_t d = 0; d < dim; ++d) g[d] *= inv_count;
      }
    });
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const int64_t* bp = b.data_ptr<int64_t>();
    scalar_t* gp = grad_features.data_ptr<scalar_t>();
    const scalar_t eps = static_cast<scalar_t>(kNormEps);
    at::parallel_for(0, batch, 64, [&](int64_t i0, int64_t i1) {
      std::vector<scalar_t> z(dim);
      for (int64_t i = i0; i < i1; ++i) {
        const scalar_t* row = hp + i * dim;
        const scalar_t norm = std::sqrt(dot(row, row, dim));
        const scalar_t inv = scalar_t(1) / std::max(norm, eps);
        for (int64_t d = 0; d < dim; ++d) z[d] = row[d] * inv;
        normalize_backward(z.data(), norm, gm + bp[i] * dim, gp + i * dim, dim);
      }
    });
  });
  return grad_features.to(features.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(srl_ext, CPU, m) {
  m.impl("surrogate_table", &surrogate_table_cpu);
  m.impl("surrogate_table_backward", &surrogate_table_backward_cpu);
}

}  // namespace srl_ext
