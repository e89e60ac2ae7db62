"""Compile-check the CUDA CIF kernels with the machine's nvcc against the installed torch headers.

The CPU torch wheel cannot run them, but a syntax/type/template error must still fail here.
test/cuda_shim supplies the two generated headers the CPU wheel lacks; it goes first on the path."""
import glob
import os
import shutil
import subprocess
import sysconfig

import pytest
from torch.utils.cpp_extension import include_paths

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHIM = os.path.join(HERE, "cuda_shim")


def test_cuda_sources_compile_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed on this machine (CUDA toolkit absent)")
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cif", "gpu", "*.cu")))
    assert sources, "no CUDA sources found under csrc/cif/gpu"
    assert os.path.isfile(os.path.join(SHIM, "ATen", "cuda", "CUDAConfig.h")), f"{SHIM}: shim headers missing"
    includes = [SHIM] + include_paths() + [sysconfig.get_paths()["include"]]
    # one invocation for all files: -c with several inputs writes the objects into the cwd
    cmd = [nvcc, "-c", *sources, "-gencode", "arch=compute_90,code=sm_90", "-std=c++17",
           *[f"-I{p}" for p in includes]]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc failed:\n{proc.stderr[-6000:]}"
    objects = sorted(os.listdir(tmp_path))
    assert len(objects) == len(sources) and all(o.endswith(".o") and os.path.getsize(tmp_path / o) > 0
                                                for o in objects), objects
    # the dispatcher registration and the kernels are really in the object
    sym = subprocess.run(["nm", "-C", str(tmp_path / objects[0])], capture_output=True, text=True).stdout
    for name in ("forward_kernel", "backward_frame_kernel", "scan_kernel", "reverse_scan_kernel"):
        assert name in sym, f"{name} missing from the compiled object"
    with open(sources[0]) as f:
        assert "TORCH_LIBRARY_IMPL(w2p, CUDA, m)" in f.read()
