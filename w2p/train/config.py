"""The training config's keys and defaults; loaded by the one config loader, ``w2p.config``."""
from __future__ import annotations

from w2p.config import load_config as _load

DEFAULTS = {
    "model": "wav2prompt",
    "model_conf": {},
    "llm": "smollm2-135m",
    "llm_dtype": "float32",
    # a config without an LLM term (Wav2Prompt with ce_weight 0) loads only the tokenizer + input-embedding table
    "llm_checkpointing": False,  # activation checkpointing through the frozen LLM's layers (CE phase, few-shot)
    "llm_fsdp": False,  # FSDP2: the frozen LLM's decoder layers sharded across the ranks (CE phase, few-shot)
    "seed": 0,
    "max_epoch": 10,
    "batch_frames": 20000,  # (#utts x longest utt) per global batch, padding included
    "max_batch_size": 64,
    "accum_grad": 1,
    "optim": "adam",
    "optim_conf": {"lr": 1.0e-3, "betas": [0.9, 0.98], "eps": 1.0e-8, "weight_decay": 0.0},
    "scheduler": "warmuplr",  # linear warmup, then inverse-sqrt decay (ESPnet WarmupLR) | warmup_constant | none
    "scheduler_conf": {"warmup_steps": 500},
    "grad_clip": 5.0,
    "amp": "auto",  # bf16 autocast on GPU, off on CPU; or true / false
    "log_interval": 20,
    "save_interval_steps": 200,  # resumable checkpoint every N optimiser steps (and at every epoch end)
    "nbest_average": 3,  # final model.pt = average of the best k epoch snapshots by best_criterion
    "best_criterion": "loss",  # a key of the validation stats; lower is better
    "patience": None,  # stop after this many epochs without improvement of best_criterion
    "max_steps": None,  # stop after this many optimiser steps (mainly for tests)
    "init_exclude": [],  # parameter-name prefixes not taken from --init
    # features in RAM (true), read per item (false), or auto: in RAM below 1 GiB (w2p/train/dataset.py)
    "preload": "auto",
    "num_workers": "auto",  # DataLoader workers per process; auto: 0 if preloaded, else min(8, cores - 1)
    # feats.scp entries that are shell commands (Kaldi "cmd |" pipes) are RUN when read: refused unless true
    "allow_scp_pipes": False,
}


FRESH = {"scheduler": "scheduler_conf", "optim": "optim_conf"}


def load_config(path: str | list[str] | None, overrides: list[str] | None = None) -> dict:
    """Training config: DEFAULTS <- the YAML file(s) in order <- ``--key.sub value`` overrides (w2p.config).

    Several files are layers: a later one only states what it changes (e.g. the Wav2Prompt CE phase laid over
    the stage-4 config: the same architecture, other loss weights and schedule). A scheduler/optimiser change in
    a layer brings its own ``*_conf`` whole."""
    return _load(path, overrides, defaults=DEFAULTS, fresh=FRESH)
