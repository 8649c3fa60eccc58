// Enveloping term (docs/method.md, "Enveloping"), CUDA, fused forward and backward.
//
// Forward (both forms): a tiled SGEMM-style kernel. A block owns 128 anchors and sweeps all K
// surrogates in tiles of 128; each depth step of 16 is staged in shared memory and every thread
// computes an 8 x 8 register block of cosines with plain FMAs (fp32 exactly, no TF32). After
// each surrogate tile the thread folds its 8 x 8 block into per-anchor running statistics:
// max and arg-max (hard; strict '>' in increasing k, so ties keep the lowest k, as torch.max),
// or max and sum of exp((s - max)/tau) (soft, online log-sum-exp). The 16 threads sharing an
// anchor merge their statistics with shuffles; the K x N cosine matrix never exists. Per anchor
// the kernel writes its coverage (max or smooth max) and what the gradient needs: the arg-max
// (hard) or the max and 1/sum (soft).
//
// Gradient, d loss / d c_k = -(1/N) sum_j w_jk p_j, without float atomics (deterministic):
// the anchors are cut into at most kMaxChunks chunks; block (surrogate tile, chunk) sums its
// chunk's contributions in anchor order into shared memory and writes one partial per chunk;
// a last kernel adds the partials in chunk order and scales by -1/N.
//  - hard: w_jk = [argmax_j = k]; the block scans its chunk's arg-maxes and adds only the anchor
//    rows that land in its tile: O(N*D) adds in all, the cost of reading the anchors once.
//  - soft: w_jk = exp((s_jk - max_j)/tau) / sum_j; the block recomputes its tile of cosines from
//    shared memory (same FMA order as the forward, so the same values) and accumulates W^T P:
//    two GEMMs' worth of work. For float32 and D <= 128 with 4 x 4 and 4 x 8 register blocks
//    where the GPU lets a block opt in to its 83,200 bytes of shared memory (not sm_75: 64 KiB);
//    otherwise (float64, wider D, such GPUs) a plain shared-memory version.
#include "device_utils.cuh"
#include "launch.h"

namespace srl_ext {
namespace cuda {
namespace {

constexpr int kTileAnchors = 128;  // anchors per forward block
constexpr int kTileBins = 128;     // surrogates per forward tile
constexpr int kTileDepth = 16;     // feature columns staged per step
constexpr int kForwardThreads = 256;  // 16 x 16 threads, 8 x 8 outputs each
constexpr int kPad = 4;            // keeps the float4 reads aligned and the transposed stores 2-way at most
constexpr int kMaxChunks = 64;
constexpr int kMinChunk = 1024;
constexpr int kGradThreads = 128;
constexpr size_t kGradSharedBytes = 40 * 1024;  // under the 48 KiB default limit
constexpr int kMaxGradRows = 64;

// Four consecutive shared-memory values (16-byte aligned for float).
__device__ __forceinline__ void load4(const float* p, float* o) {
  const float4 v = *reinterpret_cast<const float4*>(p);
  o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double* o) {
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  o[0] = a.x; o[1] = a.y; o[2] = b.x; o[3] = b.y;
}

// Row (anchor) or column (surrogate) of register-block entry i of thread coordinate c (0..15):
// 4 consecutive at 4c, 4 more at 64 + 4c; increasing in i.
__device__ __forceinline__ int block_offset(int c, int i) { return (i < 4 ? 4 * c : 64 + 4 * c - 4) + i; }

// Two blocks per SM for float (127 registers, no spills); one for double, whose 8 x 8 block of
// doubles needs the registers of a whole pair.
template <typename T, bool kSoft>
__global__ void __launch_bounds__(kForwardThreads, sizeof(T) == 4 ? 2 : 1) envelope_forward_kernel(
    const T* __restrict__ surrogates, const T* __restrict__ anchors, int64_t num_anchors, int num_bins, int dim,
    T tau, T inv_tau, T* __restrict__ coverage, int* __restrict__ argmax, T* __restrict__ row_max,
    T* __restrict__ inv_sum) {
  __shared__ __align__(16) T anchor_tile[kTileDepth][kTileAnchors + kPad];
  __shared__ __align__(16) T bin_tile[kTileDepth][kTileBins + kPad];
  const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTileAnchors;
  // Loads: 16 consecutive columns of a row per 16 threads (coalesced), 8 rows per thread.
  const int load_col = t & 15, load_row = t >> 4;

  T best[8];  // hard: running max; soft: running max of the log-sum-exp
  T total[8];  // soft: running sum of exp((s - best)/tau)
  int best_k[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    best[i] = neg_inf<T>();
    total[i] = 0;
    best_k[i] = 0x7fffffff;
  }

  for (int k0 = 0; k0 < num_bins; k0 += kTileBins) {
    T acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int q = 0; q < 8; ++q) acc[i][q] = 0;

    for (int d0 = 0; d0 < dim; d0 += kTileDepth) {
      const int d = d0 + load_col;
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        const int row = load_row + 16 * r;
        const int64_t j = j0 + row;
        const int k = k0 + row;
        anchor_tile[load_col][row] = (j < num_anchors && d < dim) ? anchors[j * dim + d] : T(0);
        bin_tile[load_col][row] = (k < num_bins && d < dim) ? surrogates[static_cast<int64_t>(k) * dim + d] : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int dd = 0; dd < kTileDepth; ++dd) {
        T a[8], b[8];
        load4(&anchor_tile[dd][4 * ty], a);
        load4(&anchor_tile[dd][64 + 4 * ty], a + 4);
        load4(&bin_tile[dd][4 * tx], b);
        load4(&bin_tile[dd][64 + 4 * tx], b + 4);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int q = 0; q < 8; ++q) acc[i][q] = fma_(a[i], b[q], acc[i][q]);
      }
      __syncthreads();
    }

    // Fold this tile into the running statistics (columns in increasing k).
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (!kSoft) {
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          const int k = k0 + block_offset(tx, q);
          if (k < num_bins && acc[i][q] > best[i]) {
            best[i] = acc[i][q];
            best_k[i] = k;
          }
        }
      } else {
        T tile_max = neg_inf<T>();
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          const int k = k0 + block_offset(tx, q);
          if (k < num_bins && acc[i][q] > tile_max) tile_max = acc[i][q];
        }
        if (tile_max > neg_inf<T>()) {
          const T top = tile_max > best[i] ? tile_max : best[i];
          T s = total[i] * exp_((best[i] - top) * inv_tau);
#pragma unroll
          for (int q = 0; q < 8; ++q) {
            const int k = k0 + block_offset(tx, q);
            if (k < num_bins) s += exp_((acc[i][q] - top) * inv_tau);
          }
          total[i] = s;
          best[i] = top;
        }
      }
    }
  }

  // Merge over the 16 threads (lanes tx = 0..15 of a half warp) that share these anchors.
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) {
      const T other = __shfl_xor_sync(kFullMask, best[i], offset);
      if (!kSoft) {
        const int other_k = __shfl_xor_sync(kFullMask, best_k[i], offset);
        if (other > best[i] || (other == best[i] && other_k < best_k[i])) {
          best[i] = other;
          best_k[i] = other_k;
        }
      } else {
        const T other_total = __shfl_xor_sync(kFullMask, total[i], offset);
        const T top = other > best[i] ? other : best[i];
        if (top > neg_inf<T>()) {
          total[i] = total[i] * exp_((best[i] - top) * inv_tau) + other_total * exp_((other - top) * inv_tau);
          best[i] = top;
        }
      }
    }
  }
  if (tx != 0) return;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t j = j0 + block_offset(ty, i);
    if (j >= num_anchors) continue;
    if (!kSoft) {
      coverage[j] = best[i];
      argmax[j] = best_k[i];
    } else {
      coverage[j] = best[i] + tau * log_(total[i]);
      row_max[j] = best[i];
      inv_sum[j] = T(1) / total[i];
    }
  }
}

// Block (surrogate tile, anchor chunk): sum of the anchor rows whose arg-max is in the tile, in
// anchor order. Dynamic shared memory: rows x dim values.
template <typename T>
__global__ void __launch_bounds__(kGradThreads) envelope_hard_partial_kernel(
    const T* __restrict__ anchors, const int* __restrict__ argmax, T* __restrict__ partials, int64_t num_anchors,
    int num_bins, int dim, int tile_rows, int64_t chunk) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  T* acc = reinterpret_cast<T*>(shared_raw);
  __shared__ int tile_argmax[kGradThreads];
  const int t = threadIdx.x;
  const int k0 = blockIdx.x * tile_rows;
  const int rows = num_bins - k0 < tile_rows ? num_bins - k0 : tile_rows;
  const int64_t j_begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t j_end = j_begin + chunk < num_anchors ? j_begin + chunk : num_anchors;
  // acc is indexed by column: thread t owns columns t, t + 128, ... of every row.
  for (int r = 0; r < rows; ++r)
    for (int d = t; d < dim; d += kGradThreads) acc[r * dim + d] = 0;
  for (int64_t base = j_begin; base < j_end; base += kGradThreads) {
    __syncthreads();
    tile_argmax[t] = base + t < j_end ? argmax[base + t] : -1;
    __syncthreads();
    const int n = static_cast<int>(j_end - base < kGradThreads ? j_end - base : kGradThreads);
    for (int e = 0; e < n; ++e) {
      const int r = tile_argmax[e] - k0;  // arg-maxes outside [0, K) (NaN surrogates) match no tile
      if (r < 0 || r >= rows) continue;   // the same branch in every thread
      const T* p = anchors + (base + e) * dim;
      T* dst = acc + r * dim;
      for (int d = t; d < dim; d += kGradThreads) dst[d] += p[d];
    }
  }
  T* out = partials + (static_cast<int64_t>(blockIdx.y) * num_bins + k0) * dim;
  for (int r = 0; r < rows; ++r)
    for (int d = t; d < dim; d += kGradThreads) out[r * dim + d] = acc[r * dim + d];
}

// Block (surrogate tile, anchor chunk), soft form: sum_j w_jk p_j over the chunk, anchors taken
// `tile` at a time. Dynamic shared memory (rows padded to dim + 1 against bank conflicts):
// surrogate tile, anchor tile, accumulator (tile x dim) and weights (tile x tile).
template <typename T>
__global__ void __launch_bounds__(kGradThreads) envelope_soft_partial_kernel(
    const T* __restrict__ surrogates, const T* __restrict__ anchors, const T* __restrict__ row_max,
    const T* __restrict__ inv_sum, T* __restrict__ partials, int64_t num_anchors, int num_bins, int dim, int tile,
    int64_t chunk, T inv_tau) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  const int stride = dim + 1;
  T* bin_tile = reinterpret_cast<T*>(shared_raw);
  T* anchor_tile = bin_tile + tile * stride;
  T* acc = anchor_tile + tile * stride;
  T* weights = acc + tile * dim;  // [anchor][row]
  const int t = threadIdx.x;
  const int k0 = blockIdx.x * tile;
  const int rows = num_bins - k0 < tile ? num_bins - k0 : tile;
  const int64_t j_begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t j_end = j_begin + chunk < num_anchors ? j_begin + chunk : num_anchors;
  for (int e = t; e < tile * dim; e += kGradThreads) {
    const int r = e / dim, d = e % dim;
    bin_tile[r * stride + d] = r < rows ? surrogates[static_cast<int64_t>(k0 + r) * dim + d] : T(0);
    acc[e] = 0;
  }
  for (int64_t base = j_begin; base < j_end; base += tile) {
    const int n = static_cast<int>(j_end - base < tile ? j_end - base : tile);
    __syncthreads();
    for (int e = t; e < tile * dim; e += kGradThreads) {
      const int a = e / dim, d = e % dim;
      anchor_tile[a * stride + d] = a < n ? anchors[(base + a) * dim + d] : T(0);
    }
    __syncthreads();
    for (int e = t; e < tile * tile; e += kGradThreads) {
      const int a = e / tile, r = e % tile;
      T w = 0;
      if (a < n && r < rows) {
        T s = 0;  // the same FMA order over d as the forward kernel
        for (int d = 0; d < dim; ++d) s = fma_(anchor_tile[a * stride + d], bin_tile[r * stride + d], s);
        w = exp_((s - row_max[base + a]) * inv_tau) * inv_sum[base + a];
      }
      weights[e] = w;
    }
    __syncthreads();
    for (int e = t; e < tile * dim; e += kGradThreads) {
      const int r = e / dim, d = e % dim;
      T v = acc[e];
      for (int a = 0; a < n; ++a) v = fma_(weights[a * tile + r], anchor_tile[a * stride + d], v);
      acc[e] = v;
    }
  }
  __syncthreads();
  T* out = partials + (static_cast<int64_t>(blockIdx.y) * num_bins + k0) * dim;
  for (int e = t; e < rows * dim; e += kGradThreads) out[e] = acc[e];
}

// The soft partials again, register-blocked, for float32 and D <= kFastDim (the SRL projector's
// 128; columns past D are zero-padded). Block (64 surrogate rows, anchor chunk), 256 threads as
// 16 x 16. Per step of 64 anchors: the 64 x 64 cosines in 4 x 4 register blocks straight from the
// two shared-memory tiles (same FMA order over d as the forward), their weights to shared memory,
// then acc (64 x 128, 4 x 8 registers per thread) += W^T P. Two to three FMAs per shared-memory
// load instead of one per two. Dynamic shared memory: kFastSharedBytes (opt-in above 48 KiB, so
// only where the device allows that much per block: fast_soft_fits).
constexpr int kFastDim = 128;
constexpr int kFastRows = 64;     // surrogate rows per block
constexpr int kFastAnchors = 64;  // anchors per step
constexpr int kFastStride = kFastDim + 1;          // padded rows: conflict-free column reads
constexpr int kFastWeightStride = kFastRows + 1;
constexpr size_t kFastSharedBytes =
    (2 * 64 * kFastStride + kFastAnchors * kFastWeightStride + 2 * kFastAnchors) * sizeof(float);

__global__ void __launch_bounds__(kForwardThreads) envelope_soft_partial_fast_kernel(
    const float* __restrict__ surrogates, const float* __restrict__ anchors, const float* __restrict__ row_max,
    const float* __restrict__ inv_sum, float* __restrict__ partials, int64_t num_anchors, int num_bins, int dim,
    int64_t chunk, float inv_tau) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  float* bin_tile = reinterpret_cast<float*>(shared_raw);  // [row][d]
  float* anchor_tile = bin_tile + kFastRows * kFastStride;  // [anchor][d]
  float* weights = anchor_tile + kFastAnchors * kFastStride;  // [anchor][row]
  float* tile_max = weights + kFastAnchors * kFastWeightStride;
  float* tile_inv_sum = tile_max + kFastAnchors;
  const int t = threadIdx.x, tx = t & 15, ty = t >> 4;
  const int k0 = blockIdx.x * kFastRows;
  const int64_t j_begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t j_end = j_begin + chunk < num_anchors ? j_begin + chunk : num_anchors;

  for (int e = t; e < kFastRows * kFastDim; e += kForwardThreads) {
    const int r = e / kFastDim, d = e % kFastDim;
    bin_tile[r * kFastStride + d] =
        (k0 + r < num_bins && d < dim) ? surrogates[static_cast<int64_t>(k0 + r) * dim + d] : 0.f;
  }
  float acc[4][8];  // rows ty + 16 i, columns tx + 16 c
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[i][c] = 0.f;

  for (int64_t base = j_begin; base < j_end; base += kFastAnchors) {
    const int n = static_cast<int>(j_end - base < kFastAnchors ? j_end - base : kFastAnchors);
    __syncthreads();  // the previous step's readers are done
    for (int e = t; e < kFastAnchors * kFastDim; e += kForwardThreads) {
      const int a = e / kFastDim, d = e % kFastDim;
      anchor_tile[a * kFastStride + d] = (a < n && d < dim) ? anchors[(base + a) * dim + d] : 0.f;
    }
    if (t < kFastAnchors) {
      tile_max[t] = t < n ? row_max[base + t] : 0.f;
      tile_inv_sum[t] = t < n ? inv_sum[base + t] : 0.f;
    }
    __syncthreads();
    // Cosines of rows ty + 16 i with anchors tx + 16 q, then their weights.
    float s[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int q = 0; q < 4; ++q) s[i][q] = 0.f;
    for (int d = 0; d < kFastDim; ++d) {
      float c[4], p[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) c[i] = bin_tile[(ty + 16 * i) * kFastStride + d];
#pragma unroll
      for (int q = 0; q < 4; ++q) p[q] = anchor_tile[(tx + 16 * q) * kFastStride + d];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int q = 0; q < 4; ++q) s[i][q] = fmaf(p[q], c[i], s[i][q]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = ty + 16 * i;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const int a = tx + 16 * q;
        weights[a * kFastWeightStride + r] =
            (a < n && k0 + r < num_bins) ? expf((s[i][q] - tile_max[a]) * inv_tau) * tile_inv_sum[a] : 0.f;
      }
    }
    __syncthreads();
    for (int a = 0; a < n; ++a) {
      float w[4], p[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) w[i] = weights[a * kFastWeightStride + ty + 16 * i];
#pragma unroll
      for (int c = 0; c < 8; ++c) p[c] = anchor_tile[a * kFastStride + tx + 16 * c];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[i][c] = fmaf(w[i], p[c], acc[i][c]);
    }
  }
  float* out = partials + (static_cast<int64_t>(blockIdx.y) * num_bins + k0) * dim;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + 16 * i;
    if (k0 + r >= num_bins) continue;
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const int d = tx + 16 * c;
      if (d < dim) out[static_cast<int64_t>(r) * dim + d] = acc[i][c];
    }
  }
}

// Whether the current device lets one block opt in to kFastSharedBytes: sm_70, sm_80 and sm_90
// allow 96, 163 and 227 KiB, sm_75 only 64 KiB. A failed query counts as no, and is cleared so
// that the launch check after the kernels does not report it.
bool fast_soft_fits() {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return static_cast<size_t>(optin) >= kFastSharedBytes;
}

// The soft partials: the register-blocked kernel where envelope_workspace chose it, else the general one.
template <typename T>
void launch_soft_partials(const T* surrogates, const T* anchors, const T* row_max, const T* inv_sum, T* partials,
                          int64_t num_anchors, int num_bins, int dim, const EnvelopeWorkspace& ws, T inv_tau,
                          dim3 grid, cudaStream_t stream) {
  if constexpr (sizeof(T) == sizeof(float)) {
    if (ws.fast_soft) {
      // Above the 48 KiB default: an attribute of the function, not a stream operation (allowed
      // during graph capture). A failure surfaces as a launch error, checked by the caller.
      cudaFuncSetAttribute(envelope_soft_partial_fast_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(kFastSharedBytes));
      envelope_soft_partial_fast_kernel<<<grid, kForwardThreads, kFastSharedBytes, stream>>>(
          surrogates, anchors, row_max, inv_sum, partials, num_anchors, num_bins, dim, ws.chunk, inv_tau);
      return;
    }
  }
  envelope_soft_partial_kernel<T><<<grid, kGradThreads, ws.shared_bytes, stream>>>(
      surrogates, anchors, row_max, inv_sum, partials, num_anchors, num_bins, dim, ws.rows_per_block, ws.chunk,
      inv_tau);
}

// grad = scale * sum over chunks of the partials, in chunk order.
template <typename T>
__global__ void sum_partials_kernel(const T* __restrict__ partials, T* __restrict__ grad, int num_chunks,
                                    int64_t table_size, T scale) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= table_size) return;
  T s = 0;
  for (int c = 0; c < num_chunks; ++c) s += partials[c * table_size + e];
  grad[e] = s * scale;
}

}  // namespace

int envelope_max_dim(bool soft, size_t element_size) {
  const int64_t budget = kGradSharedBytes / element_size;
  // hard: one row of the accumulator; soft: tile 1 needs 2 (dim + 1) + dim + 1 values.
  return static_cast<int>(soft ? (budget - 3) / 3 : budget);
}

EnvelopeWorkspace envelope_workspace(int64_t num_anchors, int num_bins, int dim, bool soft, size_t element_size) {
  EnvelopeWorkspace ws{};
  const int64_t wanted = (num_anchors + kMinChunk - 1) / kMinChunk;
  ws.num_chunks = static_cast<int>(wanted < 1 ? 1 : (wanted > kMaxChunks ? kMaxChunks : wanted));
  ws.chunk = (num_anchors + ws.num_chunks - 1) / ws.num_chunks;
  if (ws.chunk < 1) ws.chunk = 1;
  const int64_t budget = kGradSharedBytes / element_size;
  int rows;
  if (!soft) {
    rows = static_cast<int>(budget / dim);
    rows = rows < 1 ? 1 : (rows > kMaxGradRows ? kMaxGradRows : rows);
    ws.shared_bytes = static_cast<size_t>(rows) * dim * element_size;
  } else if (element_size == sizeof(float) && dim <= kFastDim && fast_soft_fits()) {
    rows = kFastRows;
    ws.shared_bytes = kFastSharedBytes;
    ws.fast_soft = true;
  } else {
    // 2 tile (dim + 1) + tile dim + tile^2 <= budget, tile <= 32.
    rows = 32;
    while (rows > 1 && 2 * rows * (dim + 1) + rows * dim + rows * rows > budget) --rows;
    ws.shared_bytes = static_cast<size_t>(2 * rows * (dim + 1) + rows * dim + rows * rows) * element_size;
  }
  ws.rows_per_block = rows;
  return ws;
}

template <typename T>
void launch_envelope(
    const T* surrogates, const T* anchors, T* coverage, int* argmax, T* row_max, T* inv_sum, T* partials, T* grad,
    int64_t num_anchors, int num_bins, int dim, bool soft, double temperature, const EnvelopeWorkspace& ws,
    cudaStream_t stream) {
  const int64_t table_size = static_cast<int64_t>(num_bins) * dim;
  const T tau = static_cast<T>(soft ? temperature : 1.0);
  const T inv_tau = static_cast<T>(soft ? 1.0 / temperature : 1.0);
  if (num_anchors > 0) {
    const unsigned blocks = ceil_div(num_anchors, kTileAnchors);
    const dim3 grad_grid(ceil_div(num_bins, ws.rows_per_block), ws.num_chunks);
    if (soft) {
      envelope_forward_kernel<T, true><<<blocks, kForwardThreads, 0, stream>>>(
          surrogates, anchors, num_anchors, num_bins, dim, tau, inv_tau, coverage, argmax, row_max, inv_sum);
      launch_soft_partials<T>(surrogates, anchors, row_max, inv_sum, partials, num_anchors, num_bins, dim, ws, inv_tau,
                              grad_grid, stream);
    } else {
      envelope_forward_kernel<T, false><<<blocks, kForwardThreads, 0, stream>>>(
          surrogates, anchors, num_anchors, num_bins, dim, tau, inv_tau, coverage, argmax, row_max, inv_sum);
      envelope_hard_partial_kernel<T><<<grad_grid, kGradThreads, ws.shared_bytes, stream>>>(
          anchors, argmax, partials, num_anchors, num_bins, dim, ws.rows_per_block, ws.chunk);
    }
  }
  const T scale = num_anchors > 0 ? static_cast<T>(-1.0 / static_cast<double>(num_anchors)) : T(0);
  // With no anchors the partials were never written: the caller zero-fills them.
  if (table_size > 0) {
    sum_partials_kernel<T><<<ceil_div(table_size, 256), 256, 0, stream>>>(partials, grad, ws.num_chunks, table_size,
                                                                           scale);
  }
}

template void launch_envelope<float>(const float*, const float*, float*, int*, float*, float*, float*, float*, int64_t,
                                     int, int, bool, double, const EnvelopeWorkspace&, cudaStream_t);
template void launch_envelope<double>(const double*, const double*, double*, int*, double*, double*, double*, double*,
                                      int64_t, int, int, bool, double, const EnvelopeWorkspace&, cudaStream_t);

}  // namespace cuda
}  // namespace srl_ext
