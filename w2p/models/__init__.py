"""Model registry and loading: ``build_model(name, conf, llm)``, ``load_trained(exp_dir, llm)``.

Only the registered models can be built: a config (a packed model's included) names one of them, never an
importable path, so loading a model cannot run code from elsewhere. Entries are imported lazily, so a system's
dependencies are only imported when it is used. Every model follows ``w2p.models.abs_model.AbsW2PModel``.
"""
from __future__ import annotations

import importlib
import os

MODELS = {
    "wav2prompt": "w2p.models.wav2prompt:Wav2Prompt",
    "asr_ctc": "w2p.models.asr_ctc:CTCASR",
    "encoder_llm": "w2p.models.encoder_llm:EncoderLLM",
    "w2p_fewshot": "w2p.models.fewshot:FewShotWav2Prompt",
    "cascade_lora": "w2p.models.fewshot:CascadeLoRA",
}


def model_class(name: str):
    # a config written when registry targets could be named directly gives the target itself
    target = MODELS.get(name) or (name if name in MODELS.values() else None)
    if target is None:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(sorted(MODELS))}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, conf: dict, llm=None):
    """Instantiate model ``name`` with ``conf`` (its YAML ``model_conf``) and the frozen LLM (or None)."""
    cls = model_class(name)
    return cls(llm, **dict(conf or {}))


def load_trained(exp_dir: str, llm=None, *, checkpoint: str | None = None, device="cpu"):
    """Rebuild a trained system from ``exp_dir/config.yaml`` and load its weights into it: ``checkpoint``, else
    ``model.safetensors`` (a packed model), else ``model.pt`` (the trainer's output, loaded weights-only).

    Returns (model in eval mode, config dict). The encoder's CMVN statistics are buffers of the state_dict, so
    the cmvn.npz named in the config is not needed here."""
    import torch
    import yaml

    cfg_path = os.path.join(exp_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path} not found (train the system first)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: not valid YAML ({str(e).splitlines()[0]}); restore it from the exp dir or "
                         "re-pack the model") from e
    if not isinstance(conf, dict) or "model" not in conf:
        raise ValueError(f"{cfg_path}: not a w2p model config (no 'model' key)")
    model_conf = dict(conf.get("model_conf") or {})
    bpe = model_conf.get("bpe_model")
    if bpe and not os.path.isabs(bpe) and os.path.isfile(os.path.join(exp_dir, bpe)):
        model_conf["bpe_model"] = os.path.join(exp_dir, bpe)  # a packed model's own copy
    if isinstance(model_conf.get("encoder"), dict):
        model_conf["encoder"] = {k: v for k, v in model_conf["encoder"].items() if k != "cmvn"}
    model = build_model(conf["model"], model_conf, llm)
    path = checkpoint
    if path is None:
        packed = os.path.join(exp_dir, "model.safetensors")
        path = packed if os.path.isfile(packed) else os.path.join(exp_dir, "model.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (training did not finish?)")
    import pickle

    from safetensors import SafetensorError

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: cannot be read as weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         "; a truncated copy? Restore it, or re-train / re-pack the model") from e
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: these weights do not fit the model described by {cfg_path} (trained with another "
                         f"config?): {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from e
    return model.to(device).eval(), conf
