// Device helpers shared by the CUDA kernels. Plain CUDA only: no torch or ATen header here, so
// that each .cu compiles in seconds (the ATen side lives in ops.cpp, compiled by the C++ compiler).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../common.h"

namespace srl_ext {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Overloads that pick the float or double math function: exp(float) is not guaranteed to
// resolve to expf in device code.
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return ::exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return ::log(x); }
__device__ __forceinline__ float sqrt_(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_(double x) { return ::sqrt(x); }
__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return ::fma(a, b, c); }

template <typename T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <>
__device__ __forceinline__ double neg_inf<double>() { return -__longlong_as_double(0x7ff0000000000000LL); }

template <typename T>
__device__ __forceinline__ T quiet_nan();
template <>
__device__ __forceinline__ float quiet_nan<float>() { return __int_as_float(0x7fc00000); }
template <>
__device__ __forceinline__ double quiet_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }

// max(norm, eps) written as std::max does on the CPU (a NaN norm stays NaN).
template <typename T>
__device__ __forceinline__ T norm_floor(T norm) {
  const T eps = static_cast<T>(kNormEps);
  return norm < eps ? eps : norm;
}

// The kernels that give one row to each warp run this many warps per block.
constexpr int kWarpsPerBlock = 8;

// The row of this warp in such a launch (grid: ceil_div(rows, kWarpsPerBlock) blocks).
__device__ __forceinline__ int64_t warp_row() {
  return static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
}

// Butterfly sum over the 32 lanes: every lane ends with the same value, in a fixed order
// (deterministic run to run).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// <a, b> of two rows of `dim`, computed by one warp (lane-strided fma, then warp_sum): every
// lane ends with the same value, in a fixed order.
template <typename T>
__device__ __forceinline__ T warp_dot(const T* __restrict__ a, const T* __restrict__ b, int dim) {
  const int lane = threadIdx.x & 31;
  T s = 0;
  for (int d = lane; d < dim; d += 32) s = fma_(a[d], b[d], s);
  return warp_sum(s);
}

// Sum over the block, fixed order; every thread gets the result. `scratch` holds 32 values.
// Must be reached by all threads of the block.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, num_warps = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < num_warps; ++w) total += scratch[w];  // same order in every thread
  return total;
}

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace cuda
}  // namespace srl_ext
