// Enveloping term (docs/method.md, "Enveloping"), CPU, fused forward and backward.
//
// The anchors are cut into tiles. For each tile one GEMM gives its K x tile block of cosines
// (surrogates x anchors: the tile's anchors run along the contiguous axis, so the sweeps over K
// below are vectorised across anchors), which stays in cache. The sweep keeps a running max and
// arg-max per anchor (hard) or turns the block into softmax weights (soft, with ATen's
// vectorised exp), and the gradient is accumulated at once: a scatter of the anchor rows into
// their arg-max rows (hard) or one more GEMM, weights x anchors (soft). Each thread keeps its
// own K x D gradient, summed at the end, so memory is O(threads*K*D + K*tile), linear in K and
// independent of N; the K x N cosine matrix never exists.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace srl_ext {
namespace {

constexpr int64_t kAnchorsPerTile = 128;

std::tuple<at::Tensor, at::Tensor> envelope_cpu(
    const at::Tensor& surrogates, const at::Tensor& anchors, std::optional<double> envelope_temperature) {
  const BelowAutograd below_autograd;
  check_cpu_matrix(surrogates, "surrogates");
  check_cpu_matrix(anchors, "anchors", surrogates.size(1));
  const auto acc = accumulation_type(surrogates.scalar_type());
  const at::Tensor c = surrogates.detach().to(acc).contiguous();
  const at::Tensor a = anchors.detach().to(acc).contiguous();
  const int64_t num_bins = c.size(0), dim = c.size(1), num_anchors = a.size(0);
  check_feature_dim(dim, "surrogates");
  const bool soft = envelope_temperature.has_value();
  if (soft) {
    TORCH_CHECK_VALUE(*envelope_temperature > 0, "srl_ext: argument 'envelope_temperature' must be > 0, got ",
                      *envelope_temperature);
  }

  const int64_t num_tiles = (num_anchors + kAnchorsPerTile - 1) / kAnchorsPerTile;
  const int64_t num_threads = at::get_num_threads();
  at::Tensor tile_coverage = at::zeros({num_tiles}, c.options());
  at::Tensor thread_grads = at::zeros({num_threads, num_bins, dim}, c.options());

  AT_DISPATCH_FLOATING_TYPES(acc, "envelope_cpu", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    scalar_t* coverage = tile_coverage.data_ptr<scalar_t>();
    const scalar_t neg_inv_n = scalar_t(-1) / static_cast<scalar_t>(num_anchors);
    const scalar_t smoothness = soft ? static_cast<scalar_t>(*envelope_temperature) : scalar_t(1);
    const scalar_t inv_smoothness = scalar_t(1) / smoothness;

    at::parallel_for(0, num_tiles, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor grad = thread_grads[at::get_thread_num()];
      scalar_t* gp = grad.data_ptr<scalar_t>();
      at::Tensor cosines = at::empty({num_bins, kAnchorsPerTile}, c.options());
      std::vector<scalar_t> best(kAnchorsPerTile);
      // An index as wide as the values, so the compare-and-select sweep below vectorises.
      using index_t = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
      std::vector<index_t> best_bin(kAnchorsPerTile);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t j0 = t * kAnchorsPerTile, cols = std::min(kAnchorsPerTile, num_anchors - j0);
        const at::Tensor anchor_tile = a.narrow(0, j0, cols);
        // K x cols, row stride cols: the full tile, or a smaller contiguous block for the last.
        at::Tensor cos_tile = cosines.view(-1).narrow(0, 0, num_bins * cols).view({num_bins, cols});
        at::mm_out(cos_tile, c, anchor_tile.t());
        const scalar_t* sp = cos_tile.data_ptr<scalar_t>();
        // Running max over k; strict '>' keeps the lowest k on ties, as torch.max.
        std::copy(sp, sp + cols, best.begin());
        std::fill(best_bin.begin(), best_bin.begin() + cols, index_t(0));
        scalar_t* bv = best.data();
        index_t* bi = best_bin.data();
        for (index_t k = 1; k < num_bins; ++k) {
          const scalar_t* row = sp + k * cols;
          for (int64_t j = 0; j < cols; ++j) {
            const bool better = row[j] > bv[j];
            bv[j] = better ? row[j] : bv[j];
            bi[j] = better ? k : bi[j];
          }
        }
        scalar_t covered = 0;
        if (!soft) {
          for (int64_t j = 0; j < cols; ++j) {
            covered += best[j];
            const scalar_t* anchor = ap + (j0 + j) * dim;
            scalar_t* g = gp + static_cast<int64_t>(best_bin[j]) * dim;
            for (int64_t d = 0; d < dim; ++d) g[d] += neg_inv_n * anchor[d];
          }
        } else {
          // Smooth maximum smoothness * logsumexp(s / smoothness) = best + smoothness * log(sum_k exp((s - best) / smoothness)).
          const at::Tensor top = at::from_blob(best.data(), {1, cols}, c.options());
          cos_tile.sub_(top).mul_(inv_smoothness).exp_();
          const at::Tensor denom = cos_tile.sum(0);
          const scalar_t* dp = denom.data_ptr<scalar_t>();
          for (int64_t j = 0; j < cols; ++j) covered += best[j] + smoothness * std::log(dp[j]);
          cos_tile.div_(denom.unsqueeze(0)).mul_(neg_inv_n);  // d loss / d cosine
          grad.addmm_(cos_tile, anchor_tile);
        }
        coverage[t] = covered;
      }
    });
  });
  at::Tensor loss = 1 - tile_coverage.sum() / static_cast<double>(num_anchors);
  return {loss, thread_grads.sum(0)};
}

}  // namespace

TORCH_LIBRARY_IMPL(srl_ext, CPU, m) {
  m.impl("envelope", &envelope_cpu);
}

}  // namespace srl_ext
