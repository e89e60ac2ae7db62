"""What makes N processes compute the update of one process when the model has BatchNorm.

BatchNorm normalises a training batch with its own statistics, so with N processes each rank would normalise its
share with the statistics of its share (mini_en, 2 processes: step-1 loss 1.7349 against 1.7322 for one). Two
things restore the one-process computation:

* :class:`SyncBatchNorm1d`: the batch statistics are all-reduced across ranks (sum and count, then the centred sum
  of squares: two passes, as stable as the local computation) through the autograd-aware all-reduce, so the
  gradients through the statistics are exact as well. It runs on CPU (gloo) and GPU (NCCL); torch's own
  ``nn.SyncBatchNorm`` refuses CPU tensors. One process, or eval mode: exactly ``nn.BatchNorm1d``.
* :func:`pad_to_global_length`: BatchNorm's statistics include the padded frames of the batch (ESPnet's Conformer
  does not mask them), and one process pads every utterance to the longest of the GLOBAL batch; each rank pads its
  share to that same length, so the set of frames the statistics see is the same.

The speech model's gradients are summed across ranks after the backward (``Trainer._sync_grads``, what DDP does,
without DDP's averaging: each rank's loss is already weighted by its share of the global batch).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over (B, C) or (B, C, T) whose training statistics are those of the global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        n_local = x.numel() // x.shape[1]
        stats = torch.cat([xf.sum(dims), xf.new_tensor([float(n_local)])])
        stats = all_reduce(stats)
        n = stats[-1].detach()
        mean = stats[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        xc = xf - mean.view(shape)
        var = all_reduce((xc * xc).sum(dims)) / n  # biased: what BatchNorm normalises with
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> int:
    """Replace every ``nn.BatchNorm1d`` under ``module`` by :class:`SyncBatchNorm1d` in place (the same parameters
    and buffers: state_dict keys and values unchanged). Returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm1d:
            new = SyncBatchNorm1d(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                                  track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(iter(child.state_dict().values())).device)
            new.train(child.training)
            setattr(module, name, new)
            count += 1
        else:
            count += convert_sync_batchnorm(child)
    return count


def pad_to_global_length(batch: dict, device) -> dict:
    """Pad ``feats`` (B, T, F) with zeros to the longest T of the global batch (the max over ranks)."""
    feats = batch["feats"]
    t = torch.tensor([feats.shape[1]], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    T = int(t)
    if T > feats.shape[1]:
        batch = dict(batch)
        batch["feats"] = nn.functional.pad(feats, (0, 0, 0, T - feats.shape[1]))
    return batch
