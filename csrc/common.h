// What the CPU (csrc/cpu) and the CUDA (csrc/cuda) kernels share. Plain C++: no torch, ATen or
// CUDA header, so that both the C++ compiler and nvcc take it and a .cu still compiles in seconds.
#pragma once

namespace srl_ext {

// The floor of the row norms, the same as torch.nn.functional.normalize (srl_ext/reference.py:
// EPS): x / max(||x||, kNormEps).
constexpr double kNormEps = 1e-12;

}  // namespace srl_ext
