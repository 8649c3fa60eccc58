import os
import tempfile

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors; Triton reads this
# when the kernels are defined, so it is set before any test module imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The drivers remember which images passed their check (srl_ext.training.data.images.check_images)
# in a user cache folder: the tests keep theirs to themselves.
os.environ["SRL_EXT_CACHE_DIR"] = tempfile.mkdtemp(prefix="srl_ext-test-cache-")


@pytest.fixture(autouse=True)
def full_precision_float32_matmuls():
    """Every test compares with references computed by torch's float32 matmuls: pinned to full
    precision, whatever the environment set (TF32 would put them ~1e-3 off on Ampere and later)."""
    previous = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(previous[0])
    torch.backends.cudnn.allow_tf32 = previous[1]
