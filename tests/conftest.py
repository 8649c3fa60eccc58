import os
import tempfile

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; Triton reads this
# when the kernels are defined, so it is set before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The drivers remember which images passed their check (srl_ext.training.data.images.check_images)
# in a user cache folder: the tests keep theirs to themselves.
os.environ["SRL_EXT_CACHE_DIR"] = tempfile.mkdtemp(prefix="srl_ext-test-cache-")
