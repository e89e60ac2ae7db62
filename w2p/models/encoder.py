"""The speech encoder shared by every system: global CMVN -> (SpecAugment in training) -> ESPnet2 Conformer.

``build_encoder(conf)`` keys (all optional except what the YAML sets):
  cmvn: path of cmvn.npz (count / sum / sum_square, ESPnet GlobalMVN format). The statistics are copied into
        buffers, so a trained model.pt carries them and does not need the file again.
  input_size (80), output_size, attention_heads, linear_units, num_blocks, dropout_rate, cnn_module_kernel, ...:
        passed to espnet2 ConformerEncoder (input_layer conv2d = x4 subsampling).
  subsampling_channels: channels of the two conv2d layers of the x4 subsampling (default = output_size, as in
        ESPnet). The second conv costs ~19*C^2*9 MACs per output frame, more than the Conformer blocks of a small
        model, so CPU configs use fewer channels (e.g. 32).
  conv_norm: "layer_norm" (default) or "batch_norm" (ESPnet's). LayerNorm keeps every utterance independent of
        the rest of the batch, so results do not depend on batch composition or on how a batch is split over
        processes. With batch_norm that holds in eval mode (running statistics) but not in training, where
        BatchNorm normalises with the statistics of the whole batch.
  specaug: {freq_mask: F, n_freq: 2, time_mask: T, n_time: 2} or null.

Padding never reaches valid frames (hooks below: exact subsampled lengths, padded frames zeroed before each
depthwise conv); test/test_encoder.py checks that an utterance gives the same output alone and inside a batch.
"""
from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class GlobalMVN(nn.Module):
    """Global mean/variance normalisation from ESPnet-style stats (count, sum, sum_square)."""

    def __init__(self, dim: int = 80, stats_file: str | None = None, eps: float = 1e-20):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        if stats_file is not None:
            self.load_stats(stats_file, eps)

    def load_stats(self, stats_file: str, eps: float = 1e-20) -> None:
        if not os.path.isfile(stats_file):
            raise FileNotFoundError(f"{stats_file}: CMVN stats not found (run the fbank/cmvn stage, stage 2)")
        stats = np.load(stats_file)
        try:
            count, s, sq = float(np.asarray(stats["count"]).reshape(-1)[0]), stats["sum"], stats["sum_square"]
        except KeyError as e:
            raise ValueError(f"{stats_file}: needs keys count, sum, sum_square ({e})") from None
        if s.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"{stats_file}: stats dim {s.shape[-1]} != feature dim {self.mean.shape[0]}")
        mean = s / count
        var = np.maximum(sq / count - mean * mean, eps)
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.sqrt(var), dtype=torch.float32))

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        mask = torch.arange(x.shape[1], device=x.device)[None, :] < lens[:, None]
        return x.masked_fill(~mask[..., None], 0.0)


class SpecAugment(nn.Module):
    """Frequency and time masking (no time warp), training only."""

    def __init__(self, freq_mask: int = 27, n_freq: int = 2, time_mask: int = 40, n_time: int = 2):
        super().__init__()
        self.freq_mask, self.n_freq, self.time_mask, self.n_time = freq_mask, n_freq, time_mask, n_time

    def forward(self, x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        B, T, F = x.shape
        x = x.clone()
        for b in range(B):
            for _ in range(self.n_freq):
                w = int(torch.randint(0, self.freq_mask + 1, ()).item())
                f0 = int(torch.randint(0, max(1, F - w), ()).item())
                x[b, :, f0:f0 + w] = 0.0
            L = int(lens[b])
            for _ in range(self.n_time):
                w = int(torch.randint(0, min(self.time_mask, max(1, L // 5)) + 1, ()).item())
                t0 = int(torch.randint(0, max(1, L - w), ()).item())
                x[b, t0:t0 + w] = 0.0
        return x


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of a (B, C, T) tensor (replaces BatchNorm1d in the conv module)."""

    def __init__(self, channels: int):
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x):
        return self.ln(x.transpose(1, 2)).transpose(1, 2)


def _stash_mask(layer, args):
    # EncoderLayer.forward(x, mask, ...): keep the (B,1,T) mask for the depthwise conv of its conv module
    if len(args) > 1 and args[1] is not None:
        layer.conv_module.depthwise_conv._w2p_mask = args[1]


def _mask_conv_input(conv, args):
    # zero padded frames right before the depthwise conv (input (B,C,T)) so that valid frames never see
    # padding: an utterance then gives the same output whatever it is batched with
    mask = getattr(conv, "_w2p_mask", None)
    if mask is None:
        return None
    x = args[0]
    if mask.shape[-1] != x.shape[-1]:
        return None
    return (x * mask.to(x.dtype),) + tuple(args[1:])


def _exact_subsampled_mask(embed, args, output):
    # ESPnet subsamples the padded mask by slicing, so an utterance's output length depends on how much padding
    # it got; recompute it from the true lengths: T' = ((T-1)//2-1)//2 for conv2d x4 (only fully valid windows)
    x, mask = output
    if mask is None:
        return output
    lens = args[1].sum(-1).reshape(-1)
    xt = x[0] if isinstance(x, tuple) else x
    sub = lens
    for _ in range(2):
        sub = torch.div(sub - 1, 2, rounding_mode="floor")
    new = torch.arange(xt.shape[1], device=xt.device)[None, :] < sub.clamp(min=0)[:, None]
    return x, new[:, None, :]


def _espnet_version() -> str:
    try:
        return importlib.metadata.version("espnet")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _n_positional(fn) -> int:
    """Number of positional parameters of a bound method (self not counted)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in inspect.signature(fn).parameters.values())


def check_espnet_layout(conformer: nn.Module, conv2d: bool = True) -> None:
    """Fail by name if the ESPnet ConformerEncoder lacks an attribute that SpeechEncoder patches.

    The patches (hooks on the subsampling and on each block's depthwise conv, replaced conv2d / norm
    layers) reach into ESPnet internals; an ESPnet release that renames one would otherwise silently
    lose a patch (e.g. results that depend on batch composition) or fail deep inside a forward pass.
    """
    def need(ok: bool, path: str, what: str) -> None:
        if not ok:
            raise RuntimeError(
                f"w2p/models/encoder.py patches ESPnet's ConformerEncoder.{path} ({what}), which espnet "
                f"{_espnet_version()} does not provide: install the espnet version pinned in "
                "tools/requirements-nodeps.txt, or update the patches in w2p/models/encoder.py")

    embed = getattr(conformer, "embed", None)
    need(embed is not None, "embed", "the input layer")
    if conv2d:
        need(isinstance(getattr(embed, "conv", None), nn.Sequential), "embed.conv",
             "the conv2d stack, an nn.Sequential")
        out = getattr(embed, "out", None)
        need(isinstance(out, nn.Sequential) and len(out) > 0 and isinstance(out[0], nn.Linear), "embed.out[0]",
             "the nn.Linear after the conv2d stack")
        need(_n_positional(embed.forward) >= 2, "embed.forward(x, x_mask)",
             "called with the padding mask as second argument, returning (x, mask)")
    encoders = getattr(conformer, "encoders", None)
    need(encoders is not None, "encoders", "the Conformer blocks")
    for i, layer in enumerate(encoders):
        need(hasattr(layer, "conv_module"), f"encoders[{i}].conv_module", "the block's convolution module")
        need(_n_positional(layer.forward) >= 2, f"encoders[{i}].forward(x, mask)",
             "called with the padding mask as second argument")
        conv = layer.conv_module
        if conv is None:  # use_cnn_module: false
            continue
        need(isinstance(getattr(conv, "depthwise_conv", None), nn.Conv1d),
             f"encoders[{i}].conv_module.depthwise_conv", "an nn.Conv1d over (B, C, T)")
        need(isinstance(getattr(conv, "norm", None), (nn.BatchNorm1d, _ChannelLayerNorm)),
             f"encoders[{i}].conv_module.norm", "the BatchNorm1d after the depthwise conv")


class SpeechEncoder(nn.Module):
    def __init__(self, cmvn: str | None = None, input_size: int = 80, specaug: dict | None = None,
                 conv_norm: str = "layer_norm", subsampling_channels: int | None = None, **conformer):
        super().__init__()
        from espnet2.asr.encoder.conformer_encoder import ConformerEncoder

        self.normalize = GlobalMVN(input_size, cmvn)
        self.specaug = SpecAugment(**specaug) if specaug else None
        conformer.setdefault("input_layer", "conv2d")
        conformer.setdefault("use_flash_attn", False)
        # "latest" = truly relative positions (2T-1 table + exact shift); the legacy variant depends on the padded
        # length, i.e. on batch composition
        conformer.setdefault("rel_pos_type", "latest")
        self.conformer = ConformerEncoder(input_size=input_size, **conformer)
        check_espnet_layout(self.conformer, conv2d=conformer["input_layer"] == "conv2d")
        if conformer["input_layer"] == "conv2d":
            embed = self.conformer.embed
            d = self.conformer.output_size()
            if subsampling_channels and subsampling_channels != d:
                c = int(subsampling_channels)
                embed.conv = nn.Sequential(nn.Conv2d(1, c, 3, 2), nn.ReLU(), nn.Conv2d(c, c, 3, 2), nn.ReLU())
                embed.out[0] = nn.Linear(c * (((input_size - 1) // 2 - 1) // 2), d)
            embed.register_forward_hook(_exact_subsampled_mask)
        for layer in self.conformer.encoders:
            conv = getattr(layer, "conv_module", None)
            if conv is None:
                continue
            if conv_norm == "layer_norm":
                conv.norm = _ChannelLayerNorm(conv.norm.num_features)
            elif conv_norm != "batch_norm":
                raise ValueError(f"encoder conv_norm must be layer_norm or batch_norm, got {conv_norm!r}")
            layer.register_forward_pre_hook(_stash_mask)
            conv.depthwise_conv.register_forward_pre_hook(_mask_conv_input)

    def output_size(self) -> int:
        return self.conformer.output_size()

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.normalize(feats, feat_lens)
        if self.specaug is not None:
            x = self.specaug(x, feat_lens)
        h, h_lens, _ = self.conformer(x, feat_lens)
        return h, h_lens


def build_encoder(conf: dict) -> SpeechEncoder:
    conf = dict(conf or {})
    return SpeechEncoder(**conf)
