// Contrastive term (docs/method.md, "Contrastive"), CPU, fused forward and backward.
//
// The batch is cut into tiles of samples. For each tile: normalise the features, one GEMM gives
// the K x tile block of logits (surrogates x samples: the samples run along the contiguous axis,
// so the sweeps over K are vectorised across samples; the block stays in cache, never the B x K
// matrix), the sweeps give the log-sum-exp and turn the block into d loss / d logits (softmax
// minus the one-hot label), and a second GEMM gives d loss / d z, taken back through the
// normalisation. Loss partials are kept per tile and summed in order: deterministic.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace srl_ext {
namespace {

constexpr int64_t kRowsPerTile = 128;

std::tuple<at::Tensor, at::Tensor> contrastive_cpu(
    const at::Tensor& features, const at::Tensor& bins, const at::Tensor& surrogates, double temperature,
    bool label_weighting) {
  const BelowAutograd below_autograd;
  check_cpu_matrix(features, "features");
  check_cpu_vector(bins, "bins", features.size(0), true);
  check_cpu_matrix(surrogates, "surrogates", features.size(1));
  TORCH_CHECK_VALUE(temperature > 0, "srl_ext: argument 'temperature' must be > 0, got ", temperature);
  const auto acc = accumulation_type(features.scalar_type());
  const at::Tensor h = features.detach().to(acc).contiguous();
  const at::Tensor b = bins.detach().contiguous();
  const at::Tensor c = surrogates.detach().to(acc).contiguous();
  const int64_t batch = h.size(0), dim = h.size(1), num_bins = c.size(0);
  check_feature_dim(dim, "features");
  const int64_t* bp = b.data_ptr<int64_t>();
  check_bins_in_range(bp, batch, num_bins);

  // Label-distance weighting: w_ik = (|y_i - k| + 1) / max over the batch-by-K table, whose
  // maximum is max_i max(y_i, K - 1 - y_i) + 1: no table needed.
  int64_t max_distance = 1;
  if (label_weighting) {
    for (int64_t i = 0; i < batch; ++i) max_distance = std::max({max_distance, bp[i] + 1, num_bins - bp[i]});
  }

  const int64_t num_tiles = (batch + kRowsPerTile - 1) / kRowsPerTile;
  at::Tensor tile_losses = at::zeros({num_tiles}, h.options());
  at::Tensor grad = at::empty({batch, dim}, h.options());

  AT_DISPATCH_FLOATING_TYPES(acc, "contrastive_cpu", [&] {
    const scalar_t inv_tau = static_cast<scalar_t>(1.0 / temperature);
    const scalar_t grad_scale = inv_tau / static_cast<scalar_t>(batch);
    const scalar_t eps = static_cast<scalar_t>(kNormEps);
    // log w for each distance |y - k| in 0 .. K-1.
    std::vector<scalar_t> log_weight(label_weighting ? num_bins : 0);
    for (int64_t d = 0; d < static_cast<int64_t>(log_weight.size()); ++d) {
      log_weight[d] = std::log(static_cast<scalar_t>(d + 1) / static_cast<scalar_t>(max_distance));
    }
    const scalar_t* hp = h.data_ptr<scalar_t>();
    scalar_t* gp = grad.data_ptr<scalar_t>();
    scalar_t* lp = tile_losses.data_ptr<scalar_t>();

    at::parallel_for(0, num_tiles, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor z = at::empty({kRowsPerTile, dim}, h.options());
      at::Tensor logits = at::empty({num_bins * kRowsPerTile}, h.options());
      at::Tensor grad_z = at::empty({kRowsPerTile, dim}, h.options());
      std::vector<scalar_t> norms(kRowsPerTile), top(kRowsPerTile), positive(kRowsPerTile);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kRowsPerTile, cols = std::min(kRowsPerTile, batch - r0);
        scalar_t* zp = z.data_ptr<scalar_t>();
        for (int64_t r = 0; r < cols; ++r) {
          const scalar_t* row = hp + (r0 + r) * dim;
          const scalar_t sq = dot(row, row, dim);
          TORCH_CHECK_VALUE(
              std::isfinite(sq), "srl_ext: argument 'features' must be finite, got a non-finite value in row ", r0 + r);
          norms[r] = std::sqrt(sq);
          const scalar_t inv = scalar_t(1) / std::max(norms[r], eps);
          for (int64_t d = 0; d < dim; ++d) zp[r * dim + d] = row[d] * inv;
        }
        const at::Tensor z_tile = z.narrow(0, 0, cols);
        at::Tensor s = logits.narrow(0, 0, num_bins * cols).view({num_bins, cols});  // K x cols
        at::mm_out(s, c, z_tile.t());
        s.mul_(inv_tau);
        scalar_t* sp = s.data_ptr<scalar_t>();
        const int64_t* y = bp + r0;
        for (int64_t j = 0; j < cols; ++j) positive[j] = sp[y[j] * cols + j];  // the numerator carries no weight
        if (label_weighting) {
          for (int64_t k = 0; k < num_bins; ++k) {
            for (int64_t j = 0; j < cols; ++j) sp[k * cols + j] += log_weight[std::abs(y[j] - k)];
          }
        }
        std::copy(sp, sp + cols, top.begin());
        for (int64_t k = 1; k < num_bins; ++k) {
          for (int64_t j = 0; j < cols; ++j) top[j] = std::max(top[j], sp[k * cols + j]);
        }
        s.sub_(at::from_blob(top.data(), {1, cols}, h.options())).exp_();
        const at::Tensor denom = s.sum(0);
        const scalar_t* dp = denom.data_ptr<scalar_t>();
        scalar_t loss_sum = 0;
        for (int64_t j = 0; j < cols; ++j) loss_sum += top[j] + std::log(dp[j]) - positive[j];
        lp[t] = loss_sum;
        // d loss_i / d logit_ik = softmax_ik - [k == y_i], scaled for the mean and the 1/tau.
        s.div_(denom.unsqueeze(0)).mul_(grad_scale);
        for (int64_t j = 0; j < cols; ++j) sp[y[j] * cols + j] -= grad_scale;

        at::Tensor grad_z_tile = grad_z.narrow(0, 0, cols);
        at::mm_out(grad_z_tile, s.t(), c);
        const scalar_t* gzp = grad_z.data_ptr<scalar_t>();
        for (int64_t r = 0; r < cols; ++r) {
          normalize_backward(zp + r * dim, norms[r], gzp + r * dim, gp + (r0 + r) * dim, dim);
        }
      }
    });
  });
  at::Tensor loss = tile_losses.sum() / static_cast<double>(batch);
  return {loss, grad.to(features.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(srl_ext, CPU, m) {
  m.impl("contrastive", &contrastive_cpu);
}

}  // namespace srl_ext
