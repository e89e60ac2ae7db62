"""ESPnet-style YAML config with defaults and ``--key.sub value`` command-line overrides."""
from __future__ import annotations

import copy
import os

import yaml

DEFAULTS = {
    "model": "wav2prompt",
    "model_conf": {},
    "llm": "smollm2-135m",
    "llm_dtype": "float32",
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
    "preload": True,
}


def parse_value(text: str):
    """YAML scalar/list parsing for CLI values (``1e-3`` -> float, ``[1, 2]`` -> list, ``null`` -> None)."""
    try:
        val = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(val, str):
        # YAML 1.1 reads 1e-3 as a string; accept it as a float
        try:
            return float(val)
        except ValueError:
            return val
    return val


def set_path(conf: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    cur = conf
    for k in keys[:-1]:
        if not isinstance(cur.get(k), dict):
            cur[k] = {}
        cur = cur[k]
    cur[keys[-1]] = value


def apply_overrides(conf: dict, extra: list[str]) -> dict:
    """``["--a.b", "3", "--c=x"]`` -> conf with a.b = 3 and c = "x"."""
    conf = copy.deepcopy(conf)
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise SystemExit(f"unexpected argument {tok!r}: overrides are --key.sub value")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(extra):
                raise SystemExit(f"override {tok} needs a value")
            val = extra[i + 1]
            i += 2
        set_path(conf, key, parse_value(val))
    return conf


def _merge(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``; mappings (``model_conf`` and its sub-dicts included) merge key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_layer(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {path} not found")
    with open(path, encoding="utf-8") as f:
        user = yaml.safe_load(f) or {}
    if not isinstance(user, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    unknown = [k for k in user if k not in DEFAULTS]
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {unknown}; known: {sorted(DEFAULTS)}")
    return user


def load_config(path: str | list[str] | None, overrides: list[str] | None = None) -> dict:
    """Defaults <- the YAML file(s) in order <- ``--key.sub value`` overrides.

    Several files are layers: a later one only states what it changes (e.g. the Wav2Prompt CE phase laid over
    the stage-4 config: the same architecture, other loss weights and schedule). Mappings, ``model_conf``
    included, merge key by key; a scheduler/optimiser change in a layer brings its own ``*_conf`` whole."""
    conf = copy.deepcopy(DEFAULTS)
    paths = [path] if isinstance(path, str) else list(path or [])
    for i, pth in enumerate(paths):
        user = _read_layer(pth)
        if i > 0:
            for name in ("scheduler", "optim"):
                if name in user and user[name] != conf.get(name):
                    conf[name + "_conf"] = {}  # another scheduler/optimiser: the earlier settings do not apply
        conf = _merge(conf, user)
    if overrides:
        conf = apply_overrides(conf, overrides)
    return conf


def save_config(conf: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        yaml.safe_dump(conf, f, sort_keys=False, allow_unicode=True)
    os.replace(tmp, path)
