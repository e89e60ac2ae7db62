"""Average model snapshots (ESPnet-style n-best averaging) and atomic torch saves."""
from __future__ import annotations

import torch

from w2p.io import atomic_path


def atomic_save(obj, path: str) -> None:
    """torch.save to a temp file in the same dir, then rename: a reader never sees a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def average_state_dicts(paths: list[str]) -> dict:
    """Mean of the floating-point tensors of several state_dicts; integer buffers come from the last one."""
    if not paths:
        raise ValueError("nothing to average")
    avg: dict | None = None
    for p in paths:
        sd = torch.load(p, map_location="cpu", weights_only=True)
        if avg is None:
            avg = {k: (v.clone().double() if v.is_floating_point() else v.clone()) for k, v in sd.items()}
            continue
        if set(sd) != set(avg):
            raise ValueError(f"{p}: parameter names differ from {paths[0]}")
        for k, v in sd.items():
            if v.is_floating_point():
                avg[k] += v.double()
            else:
                avg[k] = v.clone()
    ref = torch.load(paths[0], map_location="cpu", weights_only=True)
    return {k: (v / len(paths)).to(ref[k].dtype) if v.is_floating_point() else v for k, v in avg.items()}
