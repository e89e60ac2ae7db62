"""w2p: Wav2Prompt, speech prompts for frozen text LLMs (ESPnet-style toolkit)."""

# torch first: the compiled extension w2p._C links against libtorch/libc10, which are
# only found once torch has been loaded into the process.
import torch as _torch  # noqa: F401

__version__ = "0.1.0"
