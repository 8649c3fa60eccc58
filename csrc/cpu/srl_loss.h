// The whole-loss op's autograd entry (csrc/cpu/srl_loss.cpp), shared with the Python fast path
// of csrc/srl_ext.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace srl_ext {

// srl_ext::srl_loss with its autograd node: (total, contrastive, enveloping, homogeneity, grads).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> srl_loss_autograd(
    const at::Tensor& features, const at::Tensor& bins, const at::Tensor& memory, const at::Tensor& anchors, double w1,
    double w2, double w3, double temperature, double homogeneity_sign, double homogeneity_beta,
    std::optional<double> envelope_temperature, bool label_weighting);

}  // namespace srl_ext
