// Homogeneity term (docs/method.md, "Homogeneity"), CPU, fused forward and backward.
//
// a_k = <c_{k+1}, c_k>;  L = sign * sum_k a_k + beta * Var(a)  (unbiased; 0 when K = 2).
// dL/da_k = sign + 2 beta (a_k - mean(a)) / (K - 2);  dL/dc_k = dL/da_k c_{k+1} + dL/da_{k-1} c_{k-1}.
// O(K*D): one pass for the a_k, one for the gradient.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace srl_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> homogeneity_cpu(const at::Tensor& surrogates, double sign, double beta) {
  const BelowAutograd below_autograd;
  check_cpu_matrix(surrogates, "surrogates");
  const auto acc = accumulation_type(surrogates.scalar_type());
  const at::Tensor c = surrogates.detach().to(acc).contiguous();
  const int64_t num_bins = c.size(0), dim = c.size(1), num_pairs = num_bins - 1;
  check_feature_dim(dim, "surrogates");
  TORCH_CHECK_VALUE(num_bins >= 2, "srl_ext: argument 'surrogates' must have K >= 2 rows, got ", num_bins);
  at::Tensor loss = at::empty({}, c.options());
  at::Tensor grad = at::empty({num_bins, dim}, c.options());

  AT_DISPATCH_FLOATING_TYPES(acc, "homogeneity_cpu", [&] {
    const scalar_t* cp = c.data_ptr<scalar_t>();
    std::vector<scalar_t> a(num_pairs), da(num_pairs);
    at::parallel_for(0, num_pairs, 256, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) a[k] = dot(cp + (k + 1) * dim, cp + k * dim, dim);
    });
    scalar_t sum = 0;
    for (scalar_t v : a) sum += v;
    const scalar_t mean = sum / static_cast<scalar_t>(num_pairs);
    scalar_t value = static_cast<scalar_t>(sign) * sum;
    scalar_t var_scale = 0;  // d Var / d a_k = var_scale * (a_k - mean)
    if (num_pairs > 1) {
      scalar_t squares = 0;
      for (scalar_t v : a) squares += (v - mean) * (v - mean);
      value += static_cast<scalar_t>(beta) * squares / static_cast<scalar_t>(num_pairs - 1);
      var_scale = scalar_t(2) / static_cast<scalar_t>(num_pairs - 1);
    }
    for (int64_t k = 0; k < num_pairs; ++k) {
      da[k] = static_cast<scalar_t>(sign) + static_cast<scalar_t>(beta) * var_scale * (a[k] - mean);
    }
    loss.fill_(value);
    scalar_t* gp = grad.data_ptr<scalar_t>();
    at::parallel_for(0, num_bins, 256, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        scalar_t* g = gp + k * dim;
        const scalar_t up = k < num_pairs ? da[k] : scalar_t(0);   // pair (k, k+1)
        const scalar_t down = k > 0 ? da[k - 1] : scalar_t(0);      // pair (k-1, k)
        const scalar_t* next = cp + std::min(k + 1, num_bins - 1) * dim;
        const scalar_t* prev = cp + std::max(k - 1, int64_t(0)) * dim;
        for (int64_t d = 0; d < dim; ++d) g[d] = up * next[d] + down * prev[d];
      }
    });
  });
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(srl_ext, CPU, m) {
  m.impl("homogeneity", &homogeneity_cpu);
}

}  // namespace srl_ext
