"""The protocol every w2p model follows (as ESPnet's ``AbsESPnetModel``); the rest of w2p uses nothing else.

* ``forward(batch) -> (loss, stats)``: one training/validation step on a collated batch (w2p.train.dataset).
* ``prompts(feats, feat_lens, target_lengths=None) -> SpeechPrompts``: inference. The prompt vectors that fill
  ``{speech}``, with the CIF weights and firing frames where the model has CIF; ``target_lengths`` forces the
  number of vectors (one per transcript token, as in training). Models that write text instead (the cascade's
  ASR) implement ``transcribe``.
* ``needs_llm``: a class attribute, so the trainer knows before building the model whether to load the LLM;
  ``needs_llm_forward(model_conf)``: whether that config runs the LLM itself (else the tokenizer and the
  input-embedding table are enough: ``FrozenLLM.load(embeddings_only=True)``).
* Training hooks, called by the trainer: ``set_train_step(step)`` before every forward, ``set_train_vocab(ids)``
  once with the LLM token ids of the training transcripts. They do nothing unless a model overrides them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SUBSAMPLING = 4  # fbank frames (10 ms) per encoder frame: the encoder's conv2d input layer subsamples x4


@dataclass
class SpeechPrompts:
    """Prompt vectors of a batch. ``vectors[i]`` is (U_i, D); the CIF fields are None for models without CIF."""

    vectors: list[torch.Tensor]
    alphas: torch.Tensor | None = None  # (B, T') CIF weight per encoder frame
    alpha_lengths: torch.Tensor | None = None  # (B,) encoder frames per utterance
    fire_frames: list[list[int]] | None = None  # encoder frame of each vector's firing, per utterance
    frame_shift: float | None = None  # seconds per encoder frame

    @property
    def lengths(self) -> list[int]:
        return [int(v.shape[0]) for v in self.vectors]

    def __len__(self) -> int:
        return len(self.vectors)


class AbsW2PModel(nn.Module):
    needs_llm: bool = True

    @classmethod
    def needs_llm_forward(cls, model_conf: dict) -> bool:
        return cls.needs_llm

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def prompts(self, feats: torch.Tensor, feat_lens: torch.Tensor, *,
                target_lengths: torch.Tensor | None = None) -> SpeechPrompts:
        raise TypeError(f"{type(self).__name__} writes no speech prompts (decode it as a cascade system)")

    def transcribe(self, feats: torch.Tensor, feat_lens: torch.Tensor, *, beam: int = 1) -> list[str]:
        raise TypeError(f"{type(self).__name__} writes no transcripts (decode it as a prompt system)")

    def set_train_step(self, step: int) -> None:
        """The number of optimiser steps done, before each training forward."""

    def set_train_vocab(self, token_ids) -> None:
        """The LLM token ids of the training transcripts, once before training."""
