"""w2p: Wav2Prompt, speech prompts for frozen text LLMs (ESPnet-style toolkit)."""
from importlib import metadata as _metadata

# torch first: the compiled extension w2p._C links against libtorch/libc10, which are
# only found once torch has been loaded into the process.
import torch as _torch  # noqa: F401

try:
    # defined once, in pyproject.toml; read back from the installed distribution
    __version__ = _metadata.version("w2p")
except _metadata.PackageNotFoundError:  # a source tree that was never installed (tools/install.sh)
    __version__ = "0+unknown"
