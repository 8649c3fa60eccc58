// Enveloping term (SPEC section 5), CPU, fused forward and backward.
//
// The anchors are cut into tiles. For each tile one GEMM gives its tile x K block of cosines,
// which stays in cache; a row sweep takes the max and arg-max (hard) or the log-sum-exp and
// softmax (soft), and the gradient is accumulated at once: a scatter of the anchor rows into
// their arg-max rows (hard) or one more GEMM, softmax^T x anchors (soft). Each thread keeps its
// own K x D gradient, summed at the end, so memory is O(threads*K*D + tile*K), linear in K and
// independent of N; the K x N cosine matrix never exists.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace srl_ext {
namespace {

constexpr int64_t kAnchorsPerTile = 128;

std::tuple<at::Tensor, at::Tensor> envelope_cpu(
    const at::Tensor& surrogates, const at::Tensor& anchors, std::optional<double> temperature) {
  const BelowAutograd below_autograd;
  const auto acc = accumulation_type(surrogates.scalar_type());
  const at::Tensor c = surrogates.to(acc).contiguous();
  const at::Tensor a = anchors.to(acc).contiguous();
  const int64_t num_bins = c.size(0), dim = c.size(1), num_anchors = a.size(0);
  const bool soft = temperature.has_value();
  if (soft) {
    TORCH_CHECK_VALUE(*temperature > 0, "srl_ext: argument 'temperature' must be > 0, got ", *temperature);
  }

  const int64_t num_tiles = (num_anchors + kAnchorsPerTile - 1) / kAnchorsPerTile;
  const int64_t num_threads = at::get_num_threads();
  at::Tensor tile_coverage = at::zeros({num_tiles}, c.options());
  at::Tensor thread_grads = at::zeros({num_threads, num_bins, dim}, c.options());

  AT_DISPATCH_FLOATING_TYPES(acc, "envelope_cpu", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    scalar_t* coverage = tile_coverage.data_ptr<scalar_t>();
    const scalar_t neg_inv_n = scalar_t(-1) / static_cast<scalar_t>(num_anchors);
    const scalar_t tau = soft ? static_cast<scalar_t>(*temperature) : scalar_t(1);
    const scalar_t inv_tau = scalar_t(1) / tau;
    const at::Tensor ct = c.t();

    at::parallel_for(0, num_tiles, 1, [&](int64_t t0, int64_t t1) {
      at::Tensor grad = thread_grads[at::get_thread_num()];
      scalar_t* gp = grad.data_ptr<scalar_t>();
      at::Tensor cosines = at::empty({kAnchorsPerTile, num_bins}, c.options());
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t j0 = t * kAnchorsPerTile, rows = std::min(kAnchorsPerTile, num_anchors - j0);
        at::Tensor anchor_tile = a.narrow(0, j0, rows);
        at::Tensor cos_tile = cosines.narrow(0, 0, rows);
        at::mm_out(cos_tile, anchor_tile, ct);
        scalar_t* sp = cosines.data_ptr<scalar_t>();
        scalar_t covered = 0;
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t* s = sp + r * num_bins;
          int64_t best = 0;  // strict '>' keeps the lowest k on ties, as torch.max
          for (int64_t k = 1; k < num_bins; ++k) best = s[k] > s[best] ? k : best;
          if (!soft) {
            covered += s[best];
            const scalar_t* anchor = ap + (j0 + r) * dim;
            scalar_t* g = gp + best * dim;
            for (int64_t d = 0; d < dim; ++d) g[d] += neg_inv_n * anchor[d];
            continue;
          }
          // Smooth maximum: tau * logsumexp(s / tau); the row becomes its softmax weights.
          scalar_t* w = sp + r * num_bins;
          const scalar_t top = s[best];
          scalar_t denom = 0;
          for (int64_t k = 0; k < num_bins; ++k) {
            w[k] = std::exp((w[k] - top) * inv_tau);
            denom += w[k];
          }
          covered += top + tau * std::log(denom);
          const scalar_t scale = neg_inv_n / denom;
          for (int64_t k = 0; k < num_bins; ++k) w[k] *= scale;
        }
        coverage[t] = covered;
        if (soft) grad.addmm_(cos_tile.t(), anchor_tile);  // += (-1/N) softmax^T x anchors
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
