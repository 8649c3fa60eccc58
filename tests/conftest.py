import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; Triton reads this
# when the kernels are defined, so it is set before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
