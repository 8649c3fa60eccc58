// Operator schemas of srl_ext, shared by every device's kernels.
//
// Each loss op returns (loss, grad_input): the forward sweep also produces the gradient that the
// backward needs (as fused cross-entropy kernels do), and the registered autograd (Python,
// srl_ext/ops/fused.py) only scales it by the incoming gradient. The surrogate table is cheap and its
// gradient depends on what the terms downstream send, so it has a separate backward op.
#include <Python.h>

#include <algorithm>
#include <torch/library.h>

#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>

#include "cpu/srl_loss.h"

namespace {

// srl_ext._C.srl_loss(features, bins, memory, anchors, w1, w2, w3, temperature, homogeneity_sign,
// homogeneity_beta, envelope_temperature, label_weighting): srl_ext::srl_loss with its autograd,
// called from Python without the generic binding of torch.ops, which parses the twelve arguments
// against the schema at every call (about 5 us, a tenth of the whole loss at the STS-B size). For
// plain tensors in eager mode only (srl_ext/ops/__init__.py decides); the op itself is reached
// through the dispatcher as before. Returns the same five tensors.
PyObject* srl_loss_fast(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 12) {
    PyErr_Format(PyExc_TypeError, "srl_ext._C.srl_loss takes 12 arguments, got %zd", nargs);
    return nullptr;
  }
  for (int i = 0; i < 4; ++i) {
    if (!THPVariable_Check(args[i])) {
      PyErr_Format(PyExc_TypeError, "srl_ext._C.srl_loss: argument %d must be a Tensor", i);
      return nullptr;
    }
  }
  double settings[6];
  for (int i = 0; i < 6; ++i) {
    settings[i] = PyFloat_AsDouble(args[4 + i]);
    if (settings[i] == -1.0 && PyErr_Occurred()) return nullptr;
  }
  std::optional<double> envelope_temperature;
  if (args[10] != Py_None) {
    envelope_temperature = PyFloat_AsDouble(args[10]);
    if (*envelope_temperature == -1.0 && PyErr_Occurred()) return nullptr;
  }
  if (!PyBool_Check(args[11])) {
    PyErr_SetString(PyExc_TypeError, "srl_ext._C.srl_loss: argument 'label_weighting' must be a bool");
    return nullptr;
  }
  const bool label_weighting = args[11] == Py_True;
  const at::Tensor& features = THPVariable_Unpack(args[0]);
  const at::Tensor& bins = THPVariable_Unpack(args[1]);
  const at::Tensor& memory = THPVariable_Unpack(args[2]);
  const at::Tensor& anchors = THPVariable_Unpack(args[3]);
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  {
    pybind11::gil_scoped_release no_gil;  // as torch.ops does: other Python threads run meanwhile
    out = srl_ext::srl_loss_autograd(
        features, bins, memory, anchors, settings[0], settings[1], settings[2], settings[3], settings[4], settings[5],
        envelope_temperature, label_weighting);
  }
  PyObject* tensors[5] = {
      THPVariable_Wrap(std::move(std::get<0>(out))), THPVariable_Wrap(std::move(std::get<1>(out))),
      THPVariable_Wrap(std::move(std::get<2>(out))), THPVariable_Wrap(std::move(std::get<3>(out))),
      THPVariable_Wrap(std::move(std::get<4>(out)))};
  PyObject* tuple = PyTuple_New(5);
  for (int i = 0; i < 5; ++i) {
    if (tuple != nullptr && tensors[i] != nullptr) {
      PyTuple_SET_ITEM(tuple, i, tensors[i]);  // steals the reference
    } else {
      Py_XDECREF(tensors[i]);
    }
  }
  if (tuple != nullptr && std::any_of(tensors, tensors + 5, [](PyObject* t) { return t == nullptr; })) {
    Py_DECREF(tuple);  // its unset items are NULL, which the tuple's dealloc skips
    return nullptr;
  }
  return tuple;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"srl_loss", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(srl_loss_fast)), METH_FASTCALL,
     "srl_ext::srl_loss with its autograd, without torch.ops' argument parsing (plain tensors, eager mode)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
// Importing srl_ext._C loads this library, whose static initialisers register the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
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
