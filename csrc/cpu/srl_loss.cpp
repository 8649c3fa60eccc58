// The whole SRL loss in one call (docs/method.md, "The loss"), CPU: the surrogate table, the
// three terms, their weighted total and the gradient of each with respect to the features.
//
// One op instead of four (table, contrastive, envelope, homogeneity and the table's backward)
// saves the per-call costs that dominate at small sizes: each op's checks, output allocations,
// thread-pool wake-ups and autograd node. The work goes in three phases, each split into P parts
// (P = the thread count, fewer for small problems; one part runs on the calling thread):
//
//  1. Table, O(B*D + K*D) (docs/method.md, "The surrogate table"). On the calling thread the bins
//     are checked (in [0, K)), counted and the samples sorted by bin (stably); then each part
//     takes a run of bins holding about (B + K)/P samples and bins: each of its bins' feature
//     rows is checked (finite, a norm that fits), normalised and added to the bin's sum in sample
//     order; present bins become normalised means, absent ones their memory rows (checked as the
//     features), normalised. A bad row is reported after the parts, the first in sample order
//     (then the first bad memory row), as a serial sweep would.
//  2. Terms: part p takes B/P samples and N/P anchors, so the parts cost the same whatever the
//     tiles. It normalises its samples (z, kept for phase 3 in the cache of the thread that wrote
//     it) and takes (K-1)/P of the homogeneity term's neighbour cosines.
//     - Its samples (docs/method.md, "Contrastive"): one GEMM gives their K x rows block of
//       logits (samples along the contiguous axis, so the sweeps over K are vectorised across
//       samples); the sweeps turn it into d loss / d logits (softmax minus the one-hot label); a
//       second GEMM gives d loss / d z, taken back through the normalisation into the output.
//     - Its anchors (docs/method.md, "Enveloping"), in tiles whose K x cols block of cosines
//       stays in L2: one GEMM, each column divided by its anchor's norm (the anchors count as
//       unit vectors whatever their scale, as the public API normalises them, here without a
//       copy of the N x D anchors), a running (arg)max (hard) or softmax (soft) sweep, and the
//       gradient w.r.t. the table into the part's own K x D buffer: a scatter of the anchor
//       rows into their arg-max rows (hard) or one more GEMM (soft). The K x N matrix never
//       exists.
//  3. Gradients, O(P*K*D + B*D). On the calling thread the losses and the homogeneity term
//     (docs/method.md, "Homogeneity"), O(K); then, by the bins of phase 1, each present bin's
//     table gradients (the parts' buffers summed in part order, deterministic for a given
//     thread count, and the homogeneity term's) taken back through the table to the bin mean;
//     then, by the samples of phase 2, each sample's through its normalisation, and the
//     weighted total.
// Phases 1 and 3 run in parts only where (B + K) * D is large enough to pay for the wake-ups;
// either way every sum has the order of a serial sweep, so the numbers do not depend on it.
//
// Returns (total, contrastive, enveloping, homogeneity, grads): four 0-d losses, and grads,
// 4 x B x D: the gradients of the total and of each term w.r.t. the features. The autograd,
// registered here in C++ (the end of this file), combines them with the incoming gradients, so
// each loss is differentiable on its own and a plain total.backward() costs one multiplication.
//
// Buffers are kept by the calling thread between calls (grown, never shrunk: O(B*D + P*K*D +
// P*block)), so a training step allocates only its outputs. The loops are compiled for AVX-512
// and AVX2 besides the baseline ISA; the CPU's best runs unless SRL_EXT_CPU_ISA (or
// srl_ext::cpu_isa) picks another. Each call records how long its phases took on the calling
// thread (srl_ext::srl_loss_phase_times; a few clock reads per call), so that the time above the
// K x N product can be placed on any host (python -m bench.floor).
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "common.h"
#include "srl_loss.h"

namespace srl_ext {
namespace {

// A part's K x cols block of cosines (or K x rows block of logits) is cut to at most this many
// bytes. Fewer, larger GEMM calls win over blocks that fit in L2: each BLAS call packs the K x D
// table again, and the sweeps stream the block (measured on a 2-core AMD EPYC: 256 KiB blocks
// took 1.43x the K x N product at (B, K, N) = (256, 187, 2000), 1 MiB blocks 1.36x).
constexpr int64_t kBlockBytes = 1024 * 1024;
constexpr int64_t kMinBlockCols = 16;
// A part gets at least this many multiply-adds: below, waking a thread costs more than it saves.
constexpr int64_t kMinPartWork = int64_t(1) << 18;
// The table and the gradients (phases 1 and 3) go in parts from this many row elements,
// (B + K) * D: below, the regions' starts and joins (about a us each) eat the gain. Measured on a
// 2-core AMD EPYC, the two phases' minima serial -> in 2 parts: IMDB-WIKI's size (56,704) 51 ->
// 31 us, AgeDB's (21,248) 17 -> 15 us, STS-B's (8,448) 7.0 -> 6.6 us.
constexpr int64_t kMinRowPartWork = int64_t(1) << 14;

#if defined(__GNUC__) || defined(__clang__)
#define SRL_INLINE inline __attribute__((always_inline))
#define SRL_RESTRICT __restrict__
#else
#define SRL_INLINE inline
#define SRL_RESTRICT
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SRL_X86_DISPATCH 1
#if defined(__clang__)
#define SRL_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#else
#define SRL_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,prefer-vector-width=512")))
#endif
#define SRL_TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

// ------------------------------------------------------------------------------------------
// Vectorisable helpers. Reductions keep one partial sum per lane of a 512-bit register and
// add them pairwise at the end: the compiler vectorises them without reassociating (no
// -ffast-math), and the order is fixed, so results do not depend on the ISA picked.

template <typename T>
SRL_INLINE T dot(const T* SRL_RESTRICT a, const T* SRL_RESTRICT b, int64_t d) {
  constexpr int kLanes = 64 / sizeof(T);
  T acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= d; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += a[k + l] * b[k + l];
  }
  for (int l = 0; k < d; ++k, ++l) acc[l] += a[k] * b[k];
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0];
}

// out = d(y / max(|x|, eps)) / dx applied to g, given y = x / max(|x|, eps) and |x| (out may
// alias g).
template <typename T>
SRL_INLINE void normalize_backward_into(const T* y, T norm, const T* g, T* out, int64_t d) {
  if (norm > static_cast<T>(kNormEps)) {
    const T yg = dot(y, g, d);
    const T inv = T(1) / norm;
    for (int64_t k = 0; k < d; ++k) out[k] = (g[k] - y[k] * yg) * inv;
  } else {
    const T inv = T(1) / static_cast<T>(kNormEps);
    for (int64_t k = 0; k < d; ++k) out[k] = g[k] * inv;
  }
}

// exp(x) for float, a few ulp from std::exp, written so that loops over it vectorise (Cody-Waite
// reduction to r in [-ln2/2, ln2/2], the Cephes polynomial, 2^n from the exponent bits). Inputs
// are clamped to [-87.3, 88.3] (the float range): exp of a large negative number gives ~1e-38
// instead of 0, which no sum of softmax terms can tell apart. double goes to std::exp.
template <bool kFma>
SRL_INLINE float madd(float a, float b, float c) {
  if constexpr (kFma) {
    return __builtin_fmaf(a, b, c);
  } else {
    return a * b + c;
  }
}

template <typename T, bool kFma>
SRL_INLINE T exp_approx(T x) {
  if constexpr (std::is_same_v<T, double>) {
    return std::exp(x);
  } else {
    constexpr float kShift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
    x = std::min(std::max(x, -87.3f), 88.3f);
    const float t = madd<kFma>(x, 1.44269504088896341f, kShift);
    const float n = t - kShift;
    int32_t t_bits;
    std::memcpy(&t_bits, &t, sizeof(t_bits));
    const int32_t exponent = t_bits - 0x4B400000;  // n as an integer
    float r = madd<kFma>(n, -0.693359375f, x);
    r = madd<kFma>(n, 2.12194440e-4f, r);
    float y = 1.9875691500e-4f;
    y = madd<kFma>(y, r, 1.3981999507e-3f);
    y = madd<kFma>(y, r, 8.3334519073e-3f);
    y = madd<kFma>(y, r, 4.1665795894e-2f);
    y = madd<kFma>(y, r, 1.6666665459e-1f);
    y = madd<kFma>(y, r, 5.0000001201e-1f);
    y = madd<kFma>(y, r * r, r + 1.0f);
    const int32_t scale_bits = (exponent + 127) << 23;
    float scale;
    std::memcpy(&scale, &scale_bits, sizeof(scale));
    return y * scale;
  }
}

// Index of the running arg-max: as wide as the values, so the compare-and-select vectorises.
template <typename T>
using index_t = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;

// best[j] = max_k block[k][j] and (if bin) its lowest arg-max k, for a K x cols row-major block.
// Strict '>' keeps the lowest k on ties, as torch.max.
template <typename T>
SRL_INLINE void column_max(const T* SRL_RESTRICT block, int64_t num_bins, int64_t cols, T* SRL_RESTRICT best,
                           index_t<T>* SRL_RESTRICT bin) {
  std::copy(block, block + cols, best);
  if (bin != nullptr) {
    std::fill(bin, bin + cols, index_t<T>(0));
    for (index_t<T> k = 1; k < num_bins; ++k) {
      const T* row = block + k * cols;
      for (int64_t j = 0; j < cols; ++j) {
        const bool better = row[j] > best[j];
        best[j] = better ? row[j] : best[j];
        bin[j] = better ? k : bin[j];
      }
    }
  } else {
    for (int64_t k = 1; k < num_bins; ++k) {
      const T* row = block + k * cols;
      for (int64_t j = 0; j < cols; ++j) best[j] = std::max(best[j], row[j]);
    }
  }
}

// block[k][j] = exp((block[k][j] - top[j]) * scale), denom[j] = sum_k of them.
template <typename T, bool kFma>
SRL_INLINE void exp_columns(T* SRL_RESTRICT block, int64_t num_bins, int64_t cols, const T* SRL_RESTRICT top,
                            T scale, T* SRL_RESTRICT denom) {
  std::fill(denom, denom + cols, T(0));
  for (int64_t k = 0; k < num_bins; ++k) {
    T* row = block + k * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const T e = exp_approx<T, kFma>((row[j] - top[j]) * scale);
      row[j] = e;
      denom[j] += e;
    }
  }
}

// block[k][j] *= column_scale[j].
template <typename T>
SRL_INLINE void scale_columns(T* SRL_RESTRICT block, int64_t num_bins, int64_t cols,
                              const T* SRL_RESTRICT column_scale) {
  for (int64_t k = 0; k < num_bins; ++k) {
    T* row = block + k * cols;
    for (int64_t j = 0; j < cols; ++j) row[j] *= column_scale[j];
  }
}

// ------------------------------------------------------------------------------------------
// The problem and its buffers.

template <typename T>
struct Problem {
  const T* features;      // B x D
  const int64_t* bins;    // B
  const T* memory;        // K x D
  const T* anchors;       // N x D
  int64_t batch, num_bins, num_anchors, dim;
  int64_t parts;          // P: of the terms (phase 2)
  int64_t row_parts;      // of the table and the gradients (phases 1 and 3): P or 1
  int64_t rows_cap, cols_cap;  // largest tile of samples, of anchors, per part
  T temperature, envelope_temperature;  // envelope_temperature: 0 for the hard envelope
  bool label_weighting;
  double w1, w2, w3, homogeneity_sign, homogeneity_beta;
  int64_t max_distance;   // label weighting: max over the batch of the largest |y_i - k| + 1
};

template <typename T>
struct Buffers {
  // Shared.
  T* z;              // B x D normalised features
  T* norms;          // B
  T* table;          // K x D surrogates (bin sums until normalised)
  T* mean_norms;     // K
  int64_t* counts;   // K
  int64_t* bin_start;  // K + 1: where each bin's samples begin in `order`
  int64_t* order;    // B: the samples sorted by bin, in sample order within a bin
  int64_t* cursor;   // K: the counting sort's next free place of each bin
  int64_t* part_bins;     // row_parts + 1: the first bin of each part of phases 1 and 3
  int64_t* bad_feature;   // row_parts: the part's first non-finite feature row (B if none)
  int64_t* bad_memory;    // row_parts: the part's first non-finite memory row used (K if none)
  T* log_weight;     // K: log w for each label distance 0 .. K-1 (label weighting)
  T* grad_env;       // K x D: d enveloping / d table, then d / d bin mean
  T* grad_homo;      // K x D: the same for the homogeneity term
  T* pair_cos;       // K - 1: <c_{k+1}, c_k>
  double* part_contrastive;  // P: sum of the part's sample losses
  double* part_coverage;     // P: sum of the part's anchor coverages
  double* part_start;        // P: when the part began and ended (seconds, steady clock)
  double* part_end;
  // Per part, `part` apart.
  T* block;          // K x max(rows_cap, cols_cap)
  T* vec_a;          // max(rows_cap, cols_cap) each
  T* vec_b;
  T* vec_c;
  index_t<T>* best_bin;  // cols_cap
  T* grad_z;         // rows_cap x D
  T* grad_table;     // K x D: d enveloping / d table of the part's anchors
  // Strides of the per-part buffers.
  int64_t block_stride, vec_stride, bin_stride, grad_z_stride, grad_table_stride;
  // Outputs.
  T* grads;          // 4 x B x D

  // Part p's scratch: the K x (rows or cols) block and its three vectors.
  std::tuple<T*, T*, T*, T*> scratch(int64_t p) const {
    return {block + p * block_stride, vec_a + p * vec_stride, vec_b + p * vec_stride, vec_c + p * vec_stride};
  }
};

// A bump allocator over one 64-byte aligned buffer; with base == 0 it only counts the bytes.
struct Arena {
  uintptr_t base = 0;
  size_t offset = 0;
  template <typename U>
  U* take(int64_t count) {
    const size_t at = offset;
    offset += (static_cast<size_t>(count) * sizeof(U) + 63) & ~size_t(63);
    return reinterpret_cast<U*>(base + at);
  }
};

template <typename T>
void carve(Arena& arena, const Problem<T>& pr, Buffers<T>& buf) {
  const int64_t B = pr.batch, K = pr.num_bins, D = pr.dim, P = pr.parts;
  const int64_t block_cols = std::max(pr.rows_cap, pr.cols_cap);
  buf.z = arena.take<T>(B * D);
  buf.norms = arena.take<T>(B);
  buf.table = arena.take<T>(K * D);
  buf.mean_norms = arena.take<T>(K);
  buf.counts = arena.take<int64_t>(K);
  buf.bin_start = arena.take<int64_t>(K + 1);
  buf.order = arena.take<int64_t>(B);
  buf.cursor = arena.take<int64_t>(K);
  buf.part_bins = arena.take<int64_t>(pr.row_parts + 1);
  buf.bad_feature = arena.take<int64_t>(pr.row_parts);
  buf.bad_memory = arena.take<int64_t>(pr.row_parts);
  buf.log_weight = arena.take<T>(K);
  buf.grad_env = arena.take<T>(K * D);
  buf.grad_homo = arena.take<T>(K * D);
  buf.pair_cos = arena.take<T>(K);
  buf.part_contrastive = arena.take<double>(P);
  buf.part_coverage = arena.take<double>(P);
  buf.part_start = arena.take<double>(P);
  buf.part_end = arena.take<double>(P);
  // Per-part strides rounded to 64 bytes, so that parts never share a cache line.
  const auto padded = [](int64_t count) { return (count * int64_t(sizeof(T)) + 63) / 64 * 64 / int64_t(sizeof(T)); };
  buf.block_stride = padded(K * block_cols);
  buf.vec_stride = padded(block_cols);
  buf.bin_stride = (pr.cols_cap * int64_t(sizeof(index_t<T>)) + 63) / 64 * 64 / int64_t(sizeof(index_t<T>));
  buf.grad_z_stride = padded(pr.rows_cap * D);
  buf.grad_table_stride = padded(K * D);
  buf.block = arena.take<T>(P * buf.block_stride);
  buf.vec_a = arena.take<T>(P * buf.vec_stride);
  buf.vec_b = arena.take<T>(P * buf.vec_stride);
  buf.vec_c = arena.take<T>(P * buf.vec_stride);
  buf.best_bin = arena.take<index_t<T>>(P * buf.bin_stride);
  buf.grad_z = arena.take<T>(P * buf.grad_z_stride);
  buf.grad_table = arena.take<T>(P * buf.grad_table_stride);
}

// The calling thread's buffer, kept between calls.
class Workspace {
 public:
  char* reserve(size_t bytes) {
    if (bytes > capacity_) {
      const size_t rounded = (bytes + 4095) & ~size_t(4095);
      data_.reset(static_cast<char*>(std::aligned_alloc(64, rounded)));
      TORCH_CHECK(data_ != nullptr, "srl_ext: could not allocate ", rounded, " bytes of workspace");
      capacity_ = rounded;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> data_;
  size_t capacity_ = 0;
};

Workspace& thread_workspace() {
  thread_local Workspace workspace;
  return workspace;
}

// ------------------------------------------------------------------------------------------
// Where a call's time goes, along its critical path (they add up to the call's time): the checks,
// input views, output and workspace allocation; the table; the parallel region until the part
// that ended last began (a worker's wake-up), that part's work, and the region's join; the
// gradients and sums; writing the losses. The names are srl_ext.ops.SRL_LOSS_PHASES.
enum Phase : int { kSetup, kTable, kRegionStart, kParts, kJoin, kFinish, kOutputs, kNumPhases };

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::array<double, kNumPhases>& last_phase_times() {
  thread_local std::array<double, kNumPhases> times{};
  return times;
}

std::vector<double> srl_loss_phase_times() {
  const auto& times = last_phase_times();
  return {times.begin(), times.end()};
}

// ------------------------------------------------------------------------------------------
// Phase 1: the surrogate table.

// A row whose squared norm is not finite: a non-finite value, or finite values whose norm
// overflows; the errors of the Python checks (srl_ext/validation.py, finite_rows).
template <typename T>
[[noreturn]] __attribute__((noinline, cold)) void refuse_row(const T* row, int64_t dim, const char* name, int64_t index) {
  T largest = 0;
  for (int64_t d = 0; d < dim; ++d) {
    TORCH_CHECK_VALUE(
        std::isfinite(row[d]), "srl_ext: argument '", name, "' must be finite, got a non-finite value in row ", index);
    largest = std::max(largest, std::abs(row[d]));
  }
  char shown[32];
  std::snprintf(shown, sizeof(shown), "%.3g", static_cast<double>(largest));
  TORCH_CHECK_VALUE(
      false, "srl_ext: argument '", name, "' must be rows whose norm fits in ",
      sizeof(T) == 4 ? "torch.float32" : "torch.float64",
      " (the values are finite but the norm overflows), got row ", index, " with values up to ", shown,
      "; scale the inputs down");
  std::abort();  // not reached
}

// On the calling thread: the bins checked, counted and sorted (stably), the bins cut into
// `row_parts` runs of about (B + K) / row_parts samples and bins each, and the label weights.
// A bin out of range is reported as a serial sweep would: a non-finite feature row before it
// first.
template <typename T>
void sort_bins(const Problem<T>& pr, const Buffers<T>& buf) {
  const int64_t B = pr.batch, K = pr.num_bins, D = pr.dim, R = pr.row_parts;
  std::fill(buf.counts, buf.counts + K, int64_t(0));
  for (int64_t i = 0; i < B; ++i) {
    const int64_t b = pr.bins[i];
    if (b < 0 || b >= K) [[unlikely]] {
      for (int64_t j = 0; j < i; ++j) {
        const T* row = pr.features + j * D;
        if (!std::isfinite(dot(row, row, D))) refuse_row(row, D, "features", j);
      }
      TORCH_CHECK_VALUE(false, "srl_ext: argument 'bins' must hold bin indices in [0, ", K, "), got ", b, " at position ", i);
    }
    buf.counts[b] += 1;
  }
  buf.bin_start[0] = 0;
  for (int64_t k = 0; k < K; ++k) {
    buf.bin_start[k + 1] = buf.bin_start[k] + buf.counts[k];
    buf.cursor[k] = buf.bin_start[k];
  }
  for (int64_t i = 0; i < B; ++i) buf.order[buf.cursor[pr.bins[i]]++] = i;
  // Part q's bins begin where the running cost (a bin's samples, and the bin) reaches q / R of the whole.
  const int64_t whole = B + K;
  int64_t q = 1, cost = 0;
  buf.part_bins[0] = 0;
  for (int64_t k = 0; k < K && q < R; ++k) {
    cost += buf.counts[k] + 1;
    while (q < R && cost * R >= q * whole) buf.part_bins[q++] = k + 1;
  }
  while (q <= R) buf.part_bins[q++] = K;
  if (pr.label_weighting) {
    for (int64_t d = 0; d < K; ++d) {
      buf.log_weight[d] = std::log(static_cast<T>(d + 1) / static_cast<T>(pr.max_distance));
    }
  }
}

// Part q's bins of the table: each bin's samples normalised and summed in sample order, then
// the mean (or, for an absent bin, its memory row) normalised. The normalised rows themselves (z)
// are written by the parts of phase 2, each for its own samples, so that they stay in the cache
// of the thread that reads them. Non-finite rows are noted, not raised (an exception must not
// leave a parallel region); `refuse_bad_rows` raises them after.
template <typename T, bool kFma>
SRL_INLINE void build_table_part(const Problem<T>& pr, const Buffers<T>& buf, int64_t q) {
  const int64_t B = pr.batch, K = pr.num_bins, D = pr.dim;
  const T eps = static_cast<T>(kNormEps);
  int64_t bad_feature = B, bad_memory = K;
  for (int64_t k = buf.part_bins[q]; k < buf.part_bins[q + 1]; ++k) {
    T* row = buf.table + k * D;
    if (buf.counts[k] > 0) {
      std::fill(row, row + D, T(0));
      for (int64_t m = buf.bin_start[k]; m < buf.bin_start[k + 1]; ++m) {
        const int64_t i = buf.order[m];
        const T* feature = pr.features + i * D;
        const T sq = dot(feature, feature, D);
        if (!std::isfinite(sq)) [[unlikely]] {
          bad_feature = std::min(bad_feature, i);
          continue;
        }
        const T inv = T(1) / std::max(std::sqrt(sq), eps);
        for (int64_t d = 0; d < D; ++d) row[d] += feature[d] * inv;
      }
      const T inv_count = T(1) / static_cast<T>(buf.counts[k]);
      for (int64_t d = 0; d < D; ++d) row[d] *= inv_count;
    } else {
      const T* memory_row = pr.memory + k * D;
      if (!std::isfinite(dot(memory_row, memory_row, D))) [[unlikely]] {
        bad_memory = std::min(bad_memory, k);
        continue;
      }
      std::copy(memory_row, memory_row + D, row);
    }
    const T norm = std::sqrt(dot(row, row, D));
    buf.mean_norms[k] = norm;
    const T inv = T(1) / std::max(norm, eps);
    for (int64_t d = 0; d < D; ++d) row[d] *= inv;
  }
  buf.bad_feature[q] = bad_feature;
  buf.bad_memory[q] = bad_memory;
}

// After the table's parts: the first non-finite feature row, else the first non-finite memory
// row used, raised on the calling thread.
template <typename T>
void refuse_bad_rows(const Problem<T>& pr, const Buffers<T>& buf) {
  const int64_t feature = *std::min_element(buf.bad_feature, buf.bad_feature + pr.row_parts);
  if (feature < pr.batch) [[unlikely]] refuse_row(pr.features + feature * pr.dim, pr.dim, "features", feature);
  const int64_t memory = *std::min_element(buf.bad_memory, buf.bad_memory + pr.row_parts);
  if (memory < pr.num_bins) [[unlikely]] refuse_row(pr.memory + memory * pr.dim, pr.dim, "memory", memory);
}

// ------------------------------------------------------------------------------------------
// Phase 2: one part's samples and anchors.

template <typename T, bool kFma>
SRL_INLINE double contrastive_tile(const Problem<T>& pr, const Buffers<T>& buf, int64_t p, int64_t r0, int64_t rows) {
  const int64_t K = pr.num_bins, D = pr.dim;
  const auto [s, positive, top, denom] = buf.scratch(p);  // s: K x rows
  T* grad_z = buf.grad_z + p * buf.grad_z_stride;
  const int64_t* y = pr.bins + r0;
  const T* z = buf.z + r0 * D;

  // s = C z^T / tau: the logits of the tile's samples, K x rows.
  gemm<T>(false, true, K, rows, D, T(1) / pr.temperature, buf.table, D, z, D, T(0), s, rows);
  for (int64_t j = 0; j < rows; ++j) positive[j] = s[y[j] * rows + j];  // the numerator carries no weight
  if (pr.label_weighting) {
    for (int64_t k = 0; k < K; ++k) {
      T* row = s + k * rows;
      for (int64_t j = 0; j < rows; ++j) row[j] += buf.log_weight[std::abs(y[j] - k)];
    }
  }
  column_max<T>(s, K, rows, top, nullptr);
  exp_columns<T, kFma>(s, K, rows, top, T(1), denom);
  double loss = 0;
  const T grad_scale = T(1) / (pr.temperature * static_cast<T>(pr.batch));  // the mean and the 1/tau
  for (int64_t j = 0; j < rows; ++j) {
    loss += static_cast<double>(top[j] + std::log(denom[j]) - positive[j]);
    denom[j] = grad_scale / denom[j];
  }
  // d loss / d logit_kj = softmax_kj - [k == y_j], scaled.
  scale_columns<T>(s, K, rows, denom);
  for (int64_t j = 0; j < rows; ++j) s[y[j] * rows + j] -= grad_scale;
  // d loss / d z = (d loss / d logits)^T C: rows x D.
  gemm<T>(true, false, rows, D, K, T(1), s, rows, buf.table, D, T(0), grad_z, D);
  T* out = buf.grads + (pr.batch + r0) * D;  // grads[1]: the contrastive term's
  for (int64_t r = 0; r < rows; ++r) {
    normalize_backward_into(z + r * D, buf.norms[r0 + r], grad_z + r * D, out + r * D, D);
  }
  return loss;
}

template <typename T, bool kFma>
SRL_INLINE double envelope_tile(const Problem<T>& pr, const Buffers<T>& buf, int64_t p, int64_t j0, int64_t cols) {
  const int64_t K = pr.num_bins, D = pr.dim;
  const auto [s, best, denom, inv_norm] = buf.scratch(p);  // s: K x cols
  T* grad_table = buf.grad_table + p * buf.grad_table_stride;
  const T* anchors = pr.anchors + j0 * D;
  const T neg_inv_n = T(-1) / static_cast<T>(pr.num_anchors);
  const T eps = static_cast<T>(kNormEps);

  // s = C A^T: K x cols; divided by the anchors' norms, the cosines.
  gemm<T>(false, true, K, cols, D, T(1), buf.table, D, anchors, D, T(0), s, cols);
  for (int64_t j = 0; j < cols; ++j) {
    const T* anchor = anchors + j * D;
    inv_norm[j] = T(1) / std::max(std::sqrt(dot(anchor, anchor, D)), eps);
  }
  double covered = 0;
  if (pr.envelope_temperature == T(0)) {
    // A positive scale per column leaves each column's arg-max where it is: the sweep runs on
    // the products, and only the maxima and the gradient are scaled.
    index_t<T>* bin = buf.best_bin + p * buf.bin_stride;
    column_max<T>(s, K, cols, best, bin);
    for (int64_t j = 0; j < cols; ++j) {
      covered += static_cast<double>(best[j] * inv_norm[j]);
      const T* anchor = anchors + j * D;
      const T scale = neg_inv_n * inv_norm[j];
      T* g = grad_table + static_cast<int64_t>(bin[j]) * D;
      for (int64_t d = 0; d < D; ++d) g[d] += scale * anchor[d];
    }
  } else {
    // Smooth maximum s_env * logsumexp(cos / s_env) = best + s_env * log(sum_k exp((cos - best) / s_env)).
    const T smooth = pr.envelope_temperature;
    scale_columns<T>(s, K, cols, inv_norm);
    column_max<T>(s, K, cols, best, nullptr);
    exp_columns<T, kFma>(s, K, cols, best, T(1) / smooth, denom);
    for (int64_t j = 0; j < cols; ++j) {
      covered += static_cast<double>(best[j] + smooth * std::log(denom[j]));
      denom[j] = neg_inv_n * inv_norm[j] / denom[j];  // and d cosine / d c = anchor / |anchor|
    }
    scale_columns<T>(s, K, cols, denom);  // d loss / d product
    gemm<T>(false, false, K, D, cols, T(1), s, cols, anchors, D, T(1), grad_table, D);
  }
  return covered;
}

// The sum of tile(first, count) over part p of P even parts of [0, n), swept in order in the
// fewest even tiles of at most `cap` items (so each part's sum has a fixed order). The tile is a
// template argument, not a lambda: a lambda's body is a function of its own, outside the target
// (AVX2/AVX-512, FMA) of the kernel set it is called from, and would be compiled without it.
template <typename T, double (*tile)(const Problem<T>&, const Buffers<T>&, int64_t, int64_t, int64_t)>
SRL_INLINE double sum_over_part_tiles(const Problem<T>& pr, const Buffers<T>& buf, int64_t p, int64_t n,
                                      int64_t cap) {
  const int64_t begin = p * n / pr.parts, end = (p + 1) * n / pr.parts;
  double sum = 0;
  if (end > begin) {
    const int64_t tiles = (end - begin + cap - 1) / cap;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t first = begin + t * (end - begin) / tiles, last = begin + (t + 1) * (end - begin) / tiles;
      sum += tile(pr, buf, p, first, last - first);
    }
  }
  return sum;
}

template <typename T, bool kFma>
SRL_INLINE void run_part(const Problem<T>& pr, const Buffers<T>& buf, int64_t p) {
  // Its samples normalised (their norms checked finite by phase 1): z and the norms.
  const int64_t D = pr.dim;
  const T eps = static_cast<T>(kNormEps);
  for (int64_t i = p * pr.batch / pr.parts; i < (p + 1) * pr.batch / pr.parts; ++i) {
    const T* feature = pr.features + i * D;
    const T norm = std::sqrt(dot(feature, feature, D));
    buf.norms[i] = norm;
    const T inv = T(1) / std::max(norm, eps);
    T* z = buf.z + i * D;
    for (int64_t d = 0; d < D; ++d) z[d] = feature[d] * inv;
  }
  buf.part_contrastive[p] = sum_over_part_tiles<T, contrastive_tile<T, kFma>>(pr, buf, p, pr.batch, pr.rows_cap);
  T* grad_table = buf.grad_table + p * buf.grad_table_stride;
  std::fill(grad_table, grad_table + pr.num_bins * pr.dim, T(0));
  buf.part_coverage[p] = sum_over_part_tiles<T, envelope_tile<T, kFma>>(pr, buf, p, pr.num_anchors, pr.cols_cap);
  // Its share of the homogeneity term's neighbour cosines a_k = <c_{k+1}, c_k>.
  const int64_t pairs = pr.num_bins - 1;
  for (int64_t k = p * pairs / pr.parts; k < (p + 1) * pairs / pr.parts; ++k) {
    buf.pair_cos[k] = dot(buf.table + (k + 1) * D, buf.table + k * D, D);
  }
}

// ------------------------------------------------------------------------------------------
// Phase 3: the homogeneity term, and every table gradient back to the features.

struct Losses {
  double total, contrastive, enveloping, homogeneity;
};

// On the calling thread: the losses from the parts' sums and the neighbour cosines, and
// pair_cos turned into d homogeneity / d a_k.
template <typename T>
SRL_INLINE Losses term_losses(const Problem<T>& pr, const Buffers<T>& buf) {
  const int64_t B = pr.batch, K = pr.num_bins, P = pr.parts;
  Losses out{};
  for (int64_t p = 0; p < P; ++p) {
    out.contrastive += buf.part_contrastive[p];
    out.enveloping += buf.part_coverage[p];
  }
  out.contrastive /= static_cast<double>(B);
  out.enveloping = 1.0 - out.enveloping / static_cast<double>(pr.num_anchors);

  // Homogeneity: L = sign * sum_k a_k + beta * Var(a) (unbiased; 0 for one pair).
  const int64_t pairs = K - 1;
  double sum = 0;
  for (int64_t k = 0; k < pairs; ++k) sum += static_cast<double>(buf.pair_cos[k]);
  const double mean = sum / static_cast<double>(pairs);
  out.homogeneity = pr.homogeneity_sign * sum;
  double var_scale = 0;  // d Var / d a_k = var_scale * (a_k - mean)
  if (pairs > 1) {
    double squares = 0;
    for (int64_t k = 0; k < pairs; ++k) {
      const double centred = static_cast<double>(buf.pair_cos[k]) - mean;
      squares += centred * centred;
    }
    out.homogeneity += pr.homogeneity_beta * squares / static_cast<double>(pairs - 1);
    var_scale = 2.0 / static_cast<double>(pairs - 1);
  }
  for (int64_t k = 0; k < pairs; ++k) {
    buf.pair_cos[k] = static_cast<T>(
        pr.homogeneity_sign + pr.homogeneity_beta * var_scale * (static_cast<double>(buf.pair_cos[k]) - mean));
  }
  out.total = pr.w1 * out.contrastive + pr.w2 * out.enveloping + pr.w3 * out.homogeneity;
  return out;
}

// Part q's bins (those of its table part): for each present bin, d enveloping / d c_k (the
// parts' buffers summed in part order) and d homogeneity / d c_k = da_k c_{k+1} + da_{k-1} c_{k-1},
// taken back through the table to the bin mean (normalisation backward / count). Absent bins
// have no samples (their rows come from the detached memory): nothing to take back.
template <typename T, bool kFma>
SRL_INLINE void bin_gradients_part(const Problem<T>& pr, const Buffers<T>& buf, int64_t q) {
  const int64_t K = pr.num_bins, D = pr.dim, P = pr.parts, pairs = K - 1;
  const T* c = buf.table;
  for (int64_t k = buf.part_bins[q]; k < buf.part_bins[q + 1]; ++k) {
    if (buf.counts[k] == 0) continue;
    T* env = buf.grad_env + k * D;
    std::copy(buf.grad_table + k * D, buf.grad_table + (k + 1) * D, env);
    for (int64_t p = 1; p < P; ++p) {
      const T* part = buf.grad_table + p * buf.grad_table_stride + k * D;
      for (int64_t d = 0; d < D; ++d) env[d] += part[d];
    }
    T* homo = buf.grad_homo + k * D;
    const T up = k < pairs ? buf.pair_cos[k] : T(0);   // pair (k, k+1)
    const T down = k > 0 ? buf.pair_cos[k - 1] : T(0);  // pair (k-1, k)
    const T* next = c + std::min(k + 1, K - 1) * D;
    const T* prev = c + std::max(k - 1, int64_t(0)) * D;
    for (int64_t d = 0; d < D; ++d) homo[d] = up * next[d] + down * prev[d];
    const T inv_count = T(1) / static_cast<T>(buf.counts[k]);
    for (T* g : {env, homo}) {
      normalize_backward_into(c + k * D, buf.mean_norms[k], g, g, D);
      for (int64_t d = 0; d < D; ++d) g[d] *= inv_count;
    }
  }
}

// Part q of the samples (B/R each, as phase 2 splits them, so that z and the contrastive
// gradient are read where phase 2 wrote them): its bin's two gradients through the sample's
// normalisation, and the weighted total.
template <typename T, bool kFma>
SRL_INLINE void sample_gradients_part(const Problem<T>& pr, const Buffers<T>& buf, int64_t q) {
  const int64_t B = pr.batch, D = pr.dim, R = pr.row_parts;
  T* grad_total = buf.grads;
  const T* grad_contrastive = buf.grads + B * D;
  T* grad_enveloping = buf.grads + 2 * B * D;
  T* grad_homogeneity = buf.grads + 3 * B * D;
  const T w1 = static_cast<T>(pr.w1), w2 = static_cast<T>(pr.w2), w3 = static_cast<T>(pr.w3);
  for (int64_t i = q * B / R; i < (q + 1) * B / R; ++i) {
    const int64_t b = pr.bins[i];
    const T* z = buf.z + i * D;
    T* env = grad_enveloping + i * D;
    T* homo = grad_homogeneity + i * D;
    normalize_backward_into(z, buf.norms[i], buf.grad_env + b * D, env, D);
    normalize_backward_into(z, buf.norms[i], buf.grad_homo + b * D, homo, D);
    const T* con = grad_contrastive + i * D;
    T* total = grad_total + i * D;
    for (int64_t d = 0; d < D; ++d) total[d] = w1 * con[d] + w2 * env[d] + w3 * homo[d];
  }
}

// ------------------------------------------------------------------------------------------
// The phases for each ISA, picked once.

template <typename T>
struct Kernels {
  void (*build_table_part)(const Problem<T>&, const Buffers<T>&, int64_t);
  void (*run_part)(const Problem<T>&, const Buffers<T>&, int64_t);
  Losses (*term_losses)(const Problem<T>&, const Buffers<T>&);
  void (*bin_gradients_part)(const Problem<T>&, const Buffers<T>&, int64_t);
  void (*sample_gradients_part)(const Problem<T>&, const Buffers<T>&, int64_t);
};

#define SRL_DEFINE_KERNELS(NAME, ATTRIBUTE, FMA)                                                             \
  template <typename T>                                                                                      \
  ATTRIBUTE void NAME##_build_table_part(const Problem<T>& pr, const Buffers<T>& buf, int64_t q) {           \
    build_table_part<T, FMA>(pr, buf, q);                                                                    \
  }                                                                                                          \
  template <typename T>                                                                                      \
  ATTRIBUTE void NAME##_run_part(const Problem<T>& pr, const Buffers<T>& buf, int64_t p) {                   \
    run_part<T, FMA>(pr, buf, p);                                                                            \
  }                                                                                                          \
  template <typename T>                                                                                      \
  ATTRIBUTE Losses NAME##_term_losses(const Problem<T>& pr, const Buffers<T>& buf) {                         \
    return term_losses<T>(pr, buf);                                                                          \
  }                                                                                                          \
  template <typename T>                                                                                      \
  ATTRIBUTE void NAME##_bin_gradients_part(const Problem<T>& pr, const Buffers<T>& buf, int64_t q) {         \
    bin_gradients_part<T, FMA>(pr, buf, q);                                                                  \
  }                                                                                                          \
  template <typename T>                                                                                      \
  ATTRIBUTE void NAME##_sample_gradients_part(const Problem<T>& pr, const Buffers<T>& buf, int64_t q) {      \
    sample_gradients_part<T, FMA>(pr, buf, q);                                                               \
  }                                                                                                          \
  template <typename T>                                                                                      \
  Kernels<T> NAME##_kernels() {                                                                              \
    return {&NAME##_build_table_part<T>, &NAME##_run_part<T>, &NAME##_term_losses<T>,                      \
            &NAME##_bin_gradients_part<T>, &NAME##_sample_gradients_part<T>};                                \
  }

SRL_DEFINE_KERNELS(baseline, , false)
#ifdef SRL_X86_DISPATCH
SRL_DEFINE_KERNELS(avx2, SRL_TARGET_AVX2, true)
SRL_DEFINE_KERNELS(avx512, SRL_TARGET_AVX512, true)
#endif

// The kernel sets by name, in the order of preference. The default is the best the CPU supports
// (AVX-512 where it has it); SRL_EXT_CPU_ISA=avx512|avx2|baseline, or srl_ext::cpu_isa at run
// time, picks another, e.g. where AVX-512's lower clock makes AVX2 faster (the sweeps are the
// only code this picks; the BLAS chooses its own). bench/isa.py times the sets on this CPU. The
// sets give the same numbers: the reductions have a fixed order and every set uses FMA but the
// baseline.
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr const char* kIsaNames[] = {"baseline", "avx2", "avx512"};
constexpr const char* kIsaEnv = "SRL_EXT_CPU_ISA";

bool cpu_supports(Isa isa) {
#ifdef SRL_X86_DISPATCH
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kBaseline:
      return true;
  }
  return false;
#else
  return isa == Isa::kBaseline;
#endif
}

Isa best_supported_isa() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (cpu_supports(isa)) return isa;
  }
  return Isa::kBaseline;
}

// "auto" or a set's name -> the set; a name the CPU cannot run, or an unknown one, is refused
// naming where it came from (`source`: the environment variable or the argument).
Isa parse_isa(const std::string& name, const char* source) {
  if (name == "auto") return best_supported_isa();
  for (int i = 0; i < 3; ++i) {
    if (name != kIsaNames[i]) continue;
    const Isa isa = static_cast<Isa>(i);
    TORCH_CHECK_VALUE(
        cpu_supports(isa), "srl_ext: ", source, " asks for the ", name,
        " kernels, which this CPU cannot run; supported: ", best_supported_isa() == Isa::kAvx512 ? "avx512, " : "",
        cpu_supports(Isa::kAvx2) ? "avx2, " : "", "baseline (or auto)");
    return isa;
  }
  TORCH_CHECK_VALUE(false, "srl_ext: ", source, " must be one of auto, avx512, avx2, baseline, got '", name, "'");
  std::abort();  // not reached
}

// -1 until the first call reads SRL_EXT_CPU_ISA (an error there is raised by that call, and
// again by the next one until the variable is fixed).
std::atomic<int> active_isa{-1};

Isa current_isa() {
  int isa = active_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    const char* chosen = std::getenv(kIsaEnv);
    isa = static_cast<int>(chosen == nullptr ? best_supported_isa() : parse_isa(chosen, "the environment variable SRL_EXT_CPU_ISA"));
    active_isa.store(isa, std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

template <typename T>
Kernels<T> kernels(Isa isa) {
#ifdef SRL_X86_DISPATCH
  if (isa == Isa::kAvx512) return avx512_kernels<T>();
  if (isa == Isa::kAvx2) return avx2_kernels<T>();
#endif
  return baseline_kernels<T>();
}

// srl_ext::cpu_isa(isa=None): the kernel set the whole-loss op runs, after switching to `isa`
// ("auto", "avx512", "avx2", "baseline") when given. For every thread of the process.
std::string cpu_isa(std::optional<std::string> isa) {
  if (isa.has_value()) {
    active_isa.store(static_cast<int>(parse_isa(*isa, "argument 'isa'")), std::memory_order_relaxed);
  }
  return kIsaNames[static_cast<int>(current_isa())];
}

// run(p) for p in [0, parts): on the calling thread for one part, else in one parallel region.
template <typename F>
void in_parts(int64_t parts, const F& run) {
  if (parts == 1) {
    run(0);
    return;
  }
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) run(p);
  });
}

// ------------------------------------------------------------------------------------------
// The op.

void check_table(const at::Tensor& t, const char* name, int64_t dim, const char* rows_name, int64_t min_rows) {
  TORCH_CHECK_VALUE(t.dim() == 2, "srl_ext: argument '", name, "' must be 2-D, got ", t.dim(), "-D");
  TORCH_CHECK_VALUE(
      t.size(1) == dim, "srl_ext: argument '", name, "' must have ", dim, " columns (D of 'features'), got ", t.size(1));
  TORCH_CHECK_VALUE(
      t.size(0) >= min_rows, "srl_ext: argument '", name, "' must have ", rows_name, " >= ", min_rows, " rows, got ",
      t.size(0));
  TORCH_CHECK_VALUE(
      at::isFloatingType(t.scalar_type()), "srl_ext: argument '", name, "' must be floating point, got ",
      t.scalar_type());
}

// `t` itself when it has `dtype` and is contiguous (the usual case), else a contiguous copy in it.
c10::MaybeOwned<at::Tensor> contiguous_as(const at::Tensor& t, at::ScalarType dtype) {
  if (t.scalar_type() == dtype && t.is_contiguous()) return c10::MaybeOwned<at::Tensor>::borrowed(t);
  return c10::MaybeOwned<at::Tensor>::owned(t.to(dtype).contiguous());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> srl_loss_cpu(
    const at::Tensor& features, const at::Tensor& bins, const at::Tensor& memory, const at::Tensor& anchors,
    double w1, double w2, double w3, double temperature, double homogeneity_sign, double homogeneity_beta,
    std::optional<double> envelope_temperature, bool label_weighting) {
  const double called = seconds_now();
  const BelowAutograd below_autograd;
  // Metadata checks only: they cost nothing next to the sweeps. Bins and finite features are
  // checked in the table's sweep, which reads them anyway.
  for (const auto& [t, name] : {std::pair{features, "features"}, std::pair{bins, "bins"}, std::pair{memory, "memory"},
                                std::pair{anchors, "anchors"}}) {
    TORCH_CHECK_VALUE(t.device().is_cpu(), "srl_ext: argument '", name, "' must be a CPU tensor, got one on ", t.device());
  }
  TORCH_CHECK_VALUE(features.dim() == 2, "srl_ext: argument 'features' must be 2-D, got ", features.dim(), "-D");
  TORCH_CHECK_VALUE(
      at::isFloatingType(features.scalar_type()), "srl_ext: argument 'features' must be floating point, got ",
      features.scalar_type());
  const int64_t batch = features.size(0), dim = features.size(1);
  check_feature_dim(dim, "features");
  TORCH_CHECK_VALUE(batch >= 1, "srl_ext: argument 'features' must have B >= 1 rows, got ", batch);
  TORCH_CHECK_VALUE(
      bins.dim() == 1 && bins.size(0) == batch && bins.scalar_type() == at::kLong,
      "srl_ext: argument 'bins' must be an int64 tensor of shape (", batch, ",), got ", bins.scalar_type(), " of shape ",
      bins.sizes());
  check_table(memory, "memory", dim, "K", 2);
  check_table(anchors, "anchors", dim, "N", 1);
  TORCH_CHECK_VALUE(temperature > 0, "srl_ext: argument 'temperature' must be > 0, got ", temperature);
  if (envelope_temperature.has_value()) {
    TORCH_CHECK_VALUE(
        *envelope_temperature > 0, "srl_ext: argument 'envelope_temperature' must be > 0, got ", *envelope_temperature);
  }

  const auto acc = accumulation_type(features.scalar_type());
  // No copies for contiguous inputs of the accumulation dtype (the usual case): the anchors,
  // the largest input, are read where they are.
  // Borrowed, not detached views: only their data is read, below the autograd (saves a tensor
  // per input, per call).
  const auto h_owned = contiguous_as(features, acc), b_owned = contiguous_as(bins, at::kLong);
  const auto mem_owned = contiguous_as(memory, acc), a_owned = contiguous_as(anchors, acc);
  const at::Tensor &h = *h_owned, &b = *b_owned, &mem = *mem_owned, &a = *a_owned;
  const int64_t num_bins = mem.size(0), num_anchors = a.size(0);

  const auto options = h.options();
  at::Tensor total = at::empty({}, options), contrastive = at::empty({}, options);
  at::Tensor enveloping = at::empty({}, options), homogeneity = at::empty({}, options);
  at::Tensor grads = at::empty({4, batch, dim}, options);

  AT_DISPATCH_FLOATING_TYPES(acc, "srl_loss_cpu", [&] {
    using T = scalar_t;
    Problem<T> pr{};
    pr.features = h.data_ptr<T>();
    pr.bins = b.data_ptr<int64_t>();
    pr.memory = mem.data_ptr<T>();
    pr.anchors = a.data_ptr<T>();
    pr.batch = batch;
    pr.num_bins = num_bins;
    pr.num_anchors = num_anchors;
    pr.dim = dim;
    // Parts: one per thread, fewer when the work is small (a part's multiply-adds: its samples'
    // two K x D products and its anchors' one).
    const int64_t work = (2 * batch + num_anchors) * num_bins * dim;
    const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
    pr.parts = std::max<int64_t>(1, std::min<int64_t>(threads, work / kMinPartWork));
    pr.row_parts = (batch + num_bins) * dim >= kMinRowPartWork ? pr.parts : 1;
    const int64_t block_cols = std::max(kMinBlockCols, kBlockBytes / (num_bins * int64_t(sizeof(T))));
    pr.rows_cap = std::min(block_cols, (batch + pr.parts - 1) / pr.parts);
    pr.cols_cap = std::min(block_cols, (num_anchors + pr.parts - 1) / pr.parts);
    pr.temperature = static_cast<T>(temperature);
    pr.envelope_temperature = envelope_temperature.has_value() ? static_cast<T>(*envelope_temperature) : T(0);
    pr.label_weighting = label_weighting;
    pr.w1 = w1;
    pr.w2 = w2;
    pr.w3 = w3;
    pr.homogeneity_sign = homogeneity_sign;
    pr.homogeneity_beta = homogeneity_beta;
    // Label weighting: w_ik = (|y_i - k| + 1) / max over the batch-by-K table, whose maximum is
    // max_i max(y_i, K - 1 - y_i) + 1 (bins out of range are refused before it is used).
    pr.max_distance = 1;
    if (label_weighting) {
      for (int64_t i = 0; i < batch; ++i) {
        pr.max_distance = std::max({pr.max_distance, pr.bins[i] + 1, num_bins - pr.bins[i]});
      }
    }

    Buffers<T> buf{};
    Arena counting;
    carve(counting, pr, buf);
    Arena arena{reinterpret_cast<uintptr_t>(thread_workspace().reserve(counting.offset))};
    carve(arena, pr, buf);
    buf.grads = grads.data_ptr<T>();

    const Kernels<T> k = kernels<T>(current_isa());
    const double table_begins = seconds_now();
    sort_bins(pr, buf);
    in_parts(pr.row_parts, [&](int64_t q) { k.build_table_part(pr, buf, q); });
    refuse_bad_rows(pr, buf);
    const double region_begins = seconds_now();
    in_parts(pr.parts, [&](int64_t p) {
      buf.part_start[p] = seconds_now();
      k.run_part(pr, buf, p);
      buf.part_end[p] = seconds_now();
    });
    const double region_ends = seconds_now();
    const Losses losses = k.term_losses(pr, buf);
    in_parts(pr.row_parts, [&](int64_t q) { k.bin_gradients_part(pr, buf, q); });
    in_parts(pr.row_parts, [&](int64_t q) { k.sample_gradients_part(pr, buf, q); });
    const double finish_ends = seconds_now();
    *total.data_ptr<T>() = static_cast<T>(losses.total);
    *contrastive.data_ptr<T>() = static_cast<T>(losses.contrastive);
    *enveloping.data_ptr<T>() = static_cast<T>(losses.enveloping);
    *homogeneity.data_ptr<T>() = static_cast<T>(losses.homogeneity);
    const int64_t last = std::max_element(buf.part_end, buf.part_end + pr.parts) - buf.part_end;
    auto& times = last_phase_times();
    times[kSetup] = table_begins - called;
    times[kTable] = region_begins - table_begins;
    times[kRegionStart] = buf.part_start[last] - region_begins;
    times[kParts] = buf.part_end[last] - buf.part_start[last];
    times[kJoin] = region_ends - buf.part_end[last];
    times[kFinish] = finish_ends - region_ends;
    times[kOutputs] = seconds_now() - finish_ends;
  });
  return {total, contrastive, enveloping, homogeneity, grads};
}

// ------------------------------------------------------------------------------------------
// Autograd, in C++: the Python registration (torch.library.register_autograd, as the per-term ops
// use) spends about 30 us per call re-reading the schema of an op with twelve arguments, a
// fifth of the whole step at the STS-B size. The backward weighs the saved gradients of the four
// losses by the incoming gradients; undefined ones (losses that reached no backward) are skipped.
// The gradients are taken as constants: no double backward, as for the per-term ops. Under
// create_graph=True the gradient carries a node that refuses a second backward (the message of
// srl_ext/ops/fused.py, DIFFERENTIATED_TWICE), as once_differentiable does, instead of a
// gradient without a graph that would silently drop the loss from a gradient penalty.

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using SRLLossOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using SRLLossSignature = SRLLossOutputs(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, double, double, double,
    double, std::optional<double>, bool);
constexpr int kSRLLossInputs = 12;

class DifferentiableOnce : public torch::autograd::Function<DifferentiableOnce> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& grad) { return grad.clone(); }
  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK(
        false,
        "srl_ext: the fused SRL ops are differentiable once; a second derivative (create_graph=True, e.g. a "
        "gradient penalty) of the SRL loss needs backend='reference'");
  }
};

class SRLLossFunction : public torch::autograd::Function<SRLLossFunction> {
 public:
  static variable_list forward(
      AutogradContext* ctx, const at::Tensor& features, const at::Tensor& bins, const at::Tensor& memory,
      const at::Tensor& anchors, double w1, double w2, double w3, double temperature, double homogeneity_sign,
      double homogeneity_beta, std::optional<double> envelope_temperature, bool label_weighting) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("srl_ext::srl_loss", "").typed<SRLLossSignature>();
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [total, contrastive, enveloping, homogeneity, grads] = op.call(
        features, bins, memory, anchors, w1, w2, w3, temperature, homogeneity_sign, homogeneity_beta,
        envelope_temperature, label_weighting);
    ctx->save_for_backward({grads});
    ctx->saved_data["dtype"] = features.scalar_type();
    ctx->mark_non_differentiable({grads});
    ctx->set_materialize_grads(false);
    return {total, contrastive, enveloping, homogeneity, grads};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor grads = ctx->get_saved_variables()[0];
    at::Tensor grad;
    for (int64_t i = 0; i < 4; ++i) {
      if (!grad_outputs[i].defined()) continue;
      at::Tensor term = grad_outputs[i] * grads.select(0, i);
      grad = grad.defined() ? grad + term : term;
    }
    if (grad.defined()) {
      grad = grad.to(ctx->saved_data["dtype"].toScalarType());
      if (at::GradMode::is_enabled()) grad = DifferentiableOnce::apply(grad.detach().requires_grad_(true));
    }
    variable_list out(kSRLLossInputs);
    out[0] = grad;
    return out;
  }
};

}  // namespace

SRLLossOutputs srl_loss_autograd(
    const at::Tensor& features, const at::Tensor& bins, const at::Tensor& memory, const at::Tensor& anchors, double w1,
    double w2, double w3, double temperature, double homogeneity_sign, double homogeneity_beta,
    std::optional<double> envelope_temperature, bool label_weighting) {
  auto out = SRLLossFunction::apply(
      features, bins, memory, anchors, w1, w2, w3, temperature, homogeneity_sign, homogeneity_beta,
      envelope_temperature, label_weighting);
  return {out[0], out[1], out[2], out[3], out[4]};
}

// The op's settings and measurements, which take no tensor: one kernel for every device.
TORCH_LIBRARY_FRAGMENT(srl_ext, m) {
  // -> the kernel set of the CPU whole-loss op ("avx512", "avx2", "baseline"), after switching to
  // `isa` ("auto": the best the CPU supports) when given.
  m.def("cpu_isa(str? isa=None) -> str", &cpu_isa);
  // -> seconds spent in each phase of this thread's last CPU srl_loss call (csrc/cpu/srl_loss.cpp,
  // Phase; names: srl_ext.ops.SRL_LOSS_PHASES).
  m.def("srl_loss_phase_times() -> float[]", &srl_loss_phase_times);
}

TORCH_LIBRARY_IMPL(srl_ext, CPU, m) {
  m.impl("srl_loss", &srl_loss_cpu);
}

TORCH_LIBRARY_IMPL(srl_ext, Autograd, m) {
  m.impl("srl_loss", &srl_loss_autograd);
}

}  // namespace srl_ext
