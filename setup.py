"""Builds srl_ext._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

SRL_EXT_CUDA=0 skips the CUDA sources (quick local builds), SRL_EXT_CUDA=1 requires them, and
the default builds them when torch is a CUDA build and nvcc is found. TORCH_CUDA_ARCH_LIST
picks the GPU architectures (default "8.0;9.0": Ampere A100 and Hopper H100/H200).
"""

import glob
import os

# torch.utils.cpp_extension reads CUDA_HOME when it is imported, and its own guess can pick a
# toolkit that does not link against torch's CUDA; prefer the standard location.
if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def build_cuda() -> bool:
    choice = os.environ.get("SRL_EXT_CUDA", "auto").lower()
    if choice not in ("0", "1", "auto"):
        raise SystemExit(f"SRL_EXT_CUDA must be 0, 1 or auto, got {choice!r}")
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if choice == "1" and not possible:
        raise SystemExit(
            "SRL_EXT_CUDA=1 but the CUDA kernels cannot be built: "
            f"torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={CUDA_HOME}"
        )
    return possible and choice != "0"


def extension():
    sources = ["csrc/srl_ext.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    # OpenMP at compile and link time, or at::parallel_for runs on one thread.
    cxx = ["-O3", "-fopenmp"]  # the C++ standard comes from torch.utils.cpp_extension
    link = ["-fopenmp"]
    if build_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        # No --use_fast_math: it would change exp/log/division and the parity with the CPU kernels.
        # -lineinfo maps profiler and sanitizer reports to source lines at no runtime cost.
        nvcc = ["-O3", "-lineinfo"]
        return CUDAExtension(
            "srl_ext._C", sources, extra_compile_args={"cxx": cxx + ["-DSRL_EXT_WITH_CUDA"], "nvcc": nvcc},
            extra_link_args=link,
        )
    return CppExtension("srl_ext._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)


setup(
    packages=find_packages(include=["srl_ext", "srl_ext.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
