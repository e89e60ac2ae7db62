"""Access to the compiled extension ``w2p._C`` with a clear error when it is missing."""
from __future__ import annotations

import functools


class ExtensionUnavailable(ImportError):
    pass


@functools.lru_cache(maxsize=None)
def load():
    """Import ``w2p._C`` (which registers the ``torch.ops.w2p`` ops) and return it."""
    try:
        import torch  # noqa: F401  (the ops library links against libtorch)

        from w2p import _C
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise ExtensionUnavailable(
            "w2p._C is not built. Run tools/install.sh (or 'python setup.py build_ext --inplace' "
            f"in the repository root). Cause: {exc}"
        ) from exc
    return _C


def available() -> bool:
    try:
        load()
        return True
    except ExtensionUnavailable:
        return False


def cuda_built() -> bool:
    return available() and bool(load().cuda_built())
