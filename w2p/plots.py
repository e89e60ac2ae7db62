"""Figures for RESULTS.md (matplotlib, Agg backend, written atomically):
  * ``cif_alignment_plot``: per utterance the fbank spectrogram, the CIF weight (alpha) curve on the encoder
    frame axis and the firing frames, each labelled with the LLM token nearest (cosine) to its prompt vector;
  * ``training_curves_plot``: train / valid loss per system from the trainer's metrics.jsonl.
"""
from __future__ import annotations

import json
import os

import torch

from w2p.io import atomic_path
from w2p.models.abs_model import SUBSAMPLING


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _save_atomic(fig, path: str) -> None:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def cif_alignment(model, llm, feats: torch.Tensor) -> dict:
    """alphas, firing frames and nearest tokens of one utterance (feats: (T, 80))."""
    sp = model.prompts(feats[None].float(), torch.tensor([feats.shape[0]]))
    if sp.alphas is None:
        raise TypeError(f"{type(model).__name__} has no CIF: nothing to align")
    return {"alphas": sp.alphas[0, : int(sp.alpha_lengths[0])].cpu(), "fires": sp.fire_frames[0],
            "tokens": llm.token_strings(llm.nearest_tokens(sp.vectors[0]))}


def cif_alignment_plot(model, llm, utts: list[tuple[str, torch.Tensor, str]], path: str) -> str:
    """utts: (utt_id, feats (T,80), reference text). One spectrogram + alpha panel pair per utterance."""
    plt = _pyplot()
    fig, axes = plt.subplots(2 * len(utts), 1, figsize=(11, 3.4 * len(utts)), squeeze=False,
                             gridspec_kw={"height_ratios": [1.2, 1] * len(utts)})
    for k, (utt, feats, ref) in enumerate(utts):
        a = cif_alignment(model, llm, feats)
        ax0, ax1 = axes[2 * k, 0], axes[2 * k + 1, 0]
        ax0.imshow(feats.T.cpu().numpy(), origin="lower", aspect="auto", cmap="magma")
        ax0.set_title(f"{utt}: {ref}", fontsize=9, loc="left")
        ax0.set_ylabel("fbank bin")
        ax0.set_xlabel("frame (10 ms)")
        t = torch.arange(len(a["alphas"])) * SUBSAMPLING
        ax1.plot(t.numpy(), a["alphas"].numpy(), color="tab:blue", lw=1, label="α (CIF weight)")
        ax1.set_xlim(ax0.get_xlim())
        ax1.set_ylim(0, 1.15)
        for f, tok in zip(a["fires"], a["tokens"]):
            if f < 0:
                continue
            ax1.axvline(f * SUBSAMPLING, color="tab:red", lw=0.8, alpha=0.7)
            ax1.text(f * SUBSAMPLING, 1.02, tok, rotation=60, fontsize=7, ha="left", va="bottom")
        ax1.set_ylabel("α")
        ax1.set_xlabel(f"fbank frame; red = firing frame, label = nearest LLM token ({len(a['tokens'])} vectors)")
    fig.tight_layout()
    _save_atomic(fig, path)
    return path


def read_metrics(exp_dir: str) -> list[dict]:
    p = os.path.join(exp_dir, "metrics.jsonl")
    if not os.path.isfile(p):
        return []
    out = []
    with open(p) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a killed run
    return out


def training_curves_plot(systems: dict[str, str], path: str, keys: tuple[str, ...] = ("loss",)) -> str | None:
    """systems: label -> exp dir. Train loss (thin) and valid loss (markers) against optimiser step."""
    runs = {k: read_metrics(v) for k, v in systems.items()}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return None
    present = {m for recs in runs.values() for r in recs for m, v in r.items() if isinstance(v, (int, float))}
    # the loss terms of the different systems (Wav2Prompt: mse/qua/ctc/ce; baselines: loss_ctc / loss_ce)
    extra = [k for k in ("mse", "ce", "loss_ce", "ctc", "loss_ctc") if k in present and k not in keys]
    panels = list(keys) + extra[:3]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for j, key in enumerate(panels):
        ax = axes[0, j]
        for c, (label, recs) in enumerate(runs.items()):
            color = f"C{c}"
            tr = [(r["step"], r[key]) for r in recs if r.get("phase", "train") == "train" and key in r]
            va = [(r["step"], r[key]) for r in recs if r.get("phase") == "valid" and key in r]
            if tr:
                ax.plot(*zip(*tr), color=color, lw=0.8, alpha=0.7, label=f"{label} train")
            if va:
                ax.plot(*zip(*va), color=color, marker="o", ms=3, lw=1.5, label=f"{label} valid")
        ax.set_xlabel("step")
        ax.set_title(key)
        vals = [r[key] for recs in runs.values() for r in recs if isinstance(r.get(key), (int, float))]
        if vals and min(vals) > 0:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save_atomic(fig, path)
    return path
