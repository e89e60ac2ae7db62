"""Model registry: ``build_model(name, conf, llm)``. Entries are "module:Class" strings imported lazily, so a
system's dependencies are only imported when it is used. A name of the form "pkg.module:Class" is accepted too."""
from __future__ import annotations

import importlib

MODELS = {
    "wav2prompt": "w2p.models.wav2prompt:Wav2Prompt",
    "asr_ctc": "w2p.models.asr_ctc:CTCASR",
    "encoder_llm": "w2p.models.encoder_llm:EncoderLLM",
}


def model_class(name: str):
    target = MODELS.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(sorted(MODELS))} (or give 'module:Class')")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, conf: dict, llm=None):
    """Instantiate model ``name`` with ``conf`` (its YAML ``model_conf``) and the frozen LLM (or None)."""
    cls = model_class(name)
    return cls(llm, **dict(conf or {}))
