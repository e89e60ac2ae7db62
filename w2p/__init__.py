"""w2p: Wav2Prompt, speech prompts for frozen text LLMs (ESPnet-style toolkit).

Importing the package has no side effects (in particular it does not import torch): the compiled
extension is loaded through ``w2p._ext.load()``, which imports torch first.
"""
from importlib import metadata as _metadata

try:
    # defined once, in pyproject.toml; read back from the installed distribution
    __version__ = _metadata.version("w2p")
except _metadata.PackageNotFoundError:  # a source tree that was never installed (tools/install.sh)
    __version__ = "0+unknown"
