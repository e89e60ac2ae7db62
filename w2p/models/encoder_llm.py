"""Encoder-LLM baseline (prior-work style, e.g. Fathullah et al. 2023): the shared Conformer encoder, its output
downsampled by stacking ``stack`` consecutive frames, and a linear connector straight into the frozen LLM's input
space. Trained with the LLM cross-entropy on the ASR "repeat" task only: no CIF, no token-embedding target, so the
speech vectors are free to drift anywhere in the embedding space (the paper's "task over-fitting" baseline).

conf: encoder: {...}, stack (4), template (default: the ASR task template of w2p.tasks), connector_dropout.
"""
from __future__ import annotations

import torch
from torch import nn

from w2p.models.abs_model import AbsW2PModel, SpeechPrompts
from w2p.tasks import check_template, get_task


class EncoderLLM(AbsW2PModel):
    def __init__(self, llm=None, *, encoder: dict | None = None, stack: int = 4, template: str | None = None,
                 embed_dim: int | None = None, connector_dropout: float = 0.0):
        super().__init__()
        from w2p.models.encoder import build_encoder

        if llm is None and embed_dim is None:
            raise ValueError("encoder_llm needs the frozen LLM (or embed_dim for a model without one)")
        object.__setattr__(self, "llm", llm)  # not a submodule: the LLM never enters state_dict / optimiser
        self.embed_dim = int(embed_dim or llm.embed_dim)
        if stack < 1:
            raise ValueError(f"encoder_llm: stack must be >= 1, got {stack}")
        self.stack = int(stack)
        self.template = template or get_task("asr").template
        check_template(self.template)
        self.encoder = build_encoder(encoder or {})
        self.dropout = nn.Dropout(connector_dropout)
        self.connector = nn.Linear(self.encoder.output_size() * self.stack, self.embed_dim)

    needs_llm = True

    def _vectors(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> list[torch.Tensor]:
        """Speech prompt per utterance: (ceil(T'/stack), embed_dim)."""
        h, h_lens = self.encoder(feats, feat_lens)
        B, T, C = h.shape
        pad = (-T) % self.stack
        if pad:
            h = torch.cat([h, h.new_zeros(B, pad, C)], 1)
        z = self.connector(self.dropout(h.reshape(B, -1, self.stack * C)))
        n = torch.div(h_lens + self.stack - 1, self.stack, rounding_mode="floor").clamp(min=1)
        return [z[b, : int(n[b])] for b in range(B)]

    @torch.no_grad()
    def prompts(self, feats: torch.Tensor, feat_lens: torch.Tensor, *,
                target_lengths: torch.Tensor | None = None) -> SpeechPrompts:
        if target_lengths is not None:
            raise TypeError("encoder_llm: the number of prompt vectors is fixed by the frame stacking")
        return SpeechPrompts(self._vectors(feats, feat_lens))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        if self.llm is None:
            raise RuntimeError("encoder_llm: training needs the frozen LLM")
        prompts = self._vectors(batch["feats"], batch["feat_lens"])
        loss = self.llm.ce_loss(self.template, prompts, list(batch["text"]))
        n = float(sum(p.shape[0] for p in prompts)) / max(1, len(prompts))
        return loss, {"loss": float(loss.detach()), "loss_ce": float(loss.detach()), "prompt_len": n}
