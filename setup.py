"""Build the extension ``w2p._C``; everything else about the package is in pyproject.toml.

The extension is always built from the C++ sources under ``csrc/`` (CPU kernels).
The CUDA sources (``csrc/**/gpu/*.cu``) are added only when torch itself was built with CUDA
and nvcc is available, so CPU-only installs work everywhere (as in fairseq's setup.py).
torch is imported here, so installs use --no-build-isolation (tools/install.sh).
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def extension_modules():
    import torch
    from torch.utils import cpp_extension

    cpp = _sources("csrc/**/*.cpp")
    cu = _sources("csrc/**/*.cu")
    cxx_flags = ["-O3", "-std=c++17"]
    if os.environ.get("W2P_NO_OPENMP") is None:
        cxx_flags.append("-fopenmp")
    with_cuda = (bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None
                 and os.environ.get("W2P_NO_CUDA") is None)
    if with_cuda:
        return [
            cpp_extension.CUDAExtension(
                "w2p._C",
                cpp + cu,
                define_macros=[("W2P_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [cpp_extension.CppExtension("w2p._C", cpp, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])]


def cmdclass():
    from torch.utils import cpp_extension

    return {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


setup(ext_modules=extension_modules(), cmdclass=cmdclass())
