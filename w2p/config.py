"""The one config loader (training and decoding): YAML layers over defaults, then ``--key.sub value`` overrides.

Rules, the same for every config:
  * the defaults name every top-level key; a YAML layer or an override with another top-level key is an error
    naming the file and the known keys;
  * layers are applied in order and a later one only states what it changes: mappings merge key by key (the first
    layer merging into an empty default mapping is the same as replacing it), everything else is replaced;
  * ``fresh``: a key whose change in a layer drops its companion mapping (another optimiser brings its own
    ``optim_conf`` whole);
  * overrides are YAML scalars (``1e-3`` is a float, ``null`` is None, ``[1, 2]`` a list).
"""
from __future__ import annotations

import copy
import os

from w2p.io import write_yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file or option and the fix."""


def parse_value(text: str):
    """YAML scalar/list parsing for CLI values (``1e-3`` -> float, ``[1, 2]`` -> list, ``null`` -> None)."""
    import yaml

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


def apply_overrides(conf: dict, extra: list[str], *, known=None) -> dict:
    """``["--a.b", "3", "--c=x"]`` -> conf with a.b = 3 and c = "x". ``known``: the allowed top-level keys."""
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
        if known is not None and key.split(".")[0] not in known:
            raise SystemExit(f"unknown option --{key}: known config keys are {', '.join(sorted(known))}")
        set_path(conf, key, parse_value(val))
    return conf


def merge(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``; mappings merge key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_layer(path: str, known) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"config {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            user = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(user, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    unknown = [k for k in user if k not in known]
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    return user


def load_config(path: str | list[str] | None, overrides: list[str] | None = None, *, defaults: dict,
                fresh: dict[str, str] | None = None) -> dict:
    """``defaults`` <- the YAML file(s) in order <- overrides (see the module docstring)."""
    conf = copy.deepcopy(defaults)
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path or [])
    for i, pth in enumerate(paths):
        user = read_layer(pth, defaults)
        if i > 0:
            for name, companion in (fresh or {}).items():
                if name in user and user[name] != conf.get(name):
                    conf[companion] = {}  # another scheduler/optimiser: the earlier settings do not apply
        conf = merge(conf, user)
    if overrides:
        conf = apply_overrides(conf, overrides, known=defaults)
    return conf


def save_config(conf: dict, path: str) -> None:
    write_yaml(path, conf)
