// Operator schemas of srl_ext, shared by every device's kernels.
//
// Each loss op returns (loss, grad_input): the forward sweep also produces the gradient that the
// backward needs (as fused cross-entropy kernels do), and the registered autograd (Python,
// srl_ext/ops/fused.py) only scales it by the incoming gradient. The surrogate table is cheap and its
// gradient depends on what the terms downstream send, so it has a separate backward op.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing srl_ext._C loads this library, whose static initialisers register the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(srl_ext, m) {
  // -> (surrogates K x D, mean_norms K, counts K)
  m.def("surrogate_table(Tensor features, Tensor bins, Tensor memory) -> (Tensor, Tensor, Tensor)");
  m.def(
      "surrogate_table_backward(Tensor grad_surrogates, Tensor features, Tensor bins, "
      "Tensor surrogates, Tensor mean_norms, Tensor counts) -> Tensor");
  // -> (loss, d loss / d features)
  m.def(
      "contrastive(Tensor features, Tensor bins, Tensor surrogates, float temperature, "
      "bool label_weighting) -> (Tensor, Tensor)");
  // envelope_temperature (the smoothness s) None: hard max (released code); a value: smooth maximum
  // (paper). -> (loss, d loss / d surrogates)
  m.def("envelope(Tensor surrogates, Tensor anchors, float? envelope_temperature) -> (Tensor, Tensor)");
  // -> (loss, d loss / d surrogates)
  m.def("homogeneity(Tensor surrogates, float sign, float beta) -> (Tensor, Tensor)");
  // The whole loss in one call (the table, the three terms and the weighted total; CPU kernel
  // only, csrc/cpu/srl_loss.cpp). -> (total, contrastive, enveloping, homogeneity, grads): four
  // 0-d losses and grads, 4 x B x D, the gradients of total, contrastive, enveloping and
  // homogeneity w.r.t. the features. envelope_temperature None: hard envelope.
  m.def(
      "srl_loss(Tensor features, Tensor bins, Tensor memory, Tensor anchors, float w1, float w2, float w3, "
      "float temperature, float homogeneity_sign, float homogeneity_beta, float? envelope_temperature, "
      "bool label_weighting) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
