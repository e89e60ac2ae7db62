"""Inference for users: pack a trained model into one directory and run zero-shot tasks from wav files.

Packed directory (``pack_model``, recipe stage 10):
  config.yaml         the trainer's resolved config (model name + model_conf; encoder.cmvn -> cmvn.npz)
  model.safetensors   weights (incl. the CMVN buffers)
  cmvn.npz            global CMVN statistics (ESPnet GlobalMVN format), for reference / re-training
  bpe.model           the CTC units' sentencepiece model, when the model has a CTC head (model_conf.bpe_model)
  llm.json            the frozen LLM reference: source name, embedding size, vocabulary size, tokenizer hash
  decode.json         decoding defaults (beam, repetition penalty)
  README.md           how to use it

Python API:
  from w2p.infer import Wav2PromptPipeline
  pipe = Wav2PromptPipeline.from_pretrained("exp/packed")
  pipe.generate(["a.wav"], task="st")
  pipe.generate(["a.wav"], task="sqa", question="What colour is the box?")
  pipe.generate(["a.wav"], template="Summarise in three words: {speech}")
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil

import numpy as np
import torch

from w2p.io import atomic_dir, git_commit, write_atomic, write_json, write_yaml
from w2p.tasks import canonical_intent, check_template, get_task, intents_prompt, readable_intent

PACK_FILES = ("config.yaml", "model.safetensors", "llm.json")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_hash(llm) -> str | None:
    path = getattr(llm, "path", None)
    if path and os.path.isfile(os.path.join(path, "tokenizer.json")):
        return _sha256(os.path.join(path, "tokenizer.json"))
    return None


def llm_reference(llm, source: str) -> dict:
    return {"source": source, "embed_dim": int(llm.embed_dim), "vocab_size": int(llm.vocab_size),
            "tokenizer_sha256": _tokenizer_hash(llm)}


def pack_model(exp_dir: str, out_dir: str, *, cmvn: str | None = None, llm_source: str | None = None,
               llm=None, decode: dict | None = None) -> str:
    """Pack exp_dir (config.yaml + model.pt) into out_dir, atomically (temp dir + rename)."""
    import yaml
    from safetensors.torch import save_file

    cfg_p, pt_p = os.path.join(exp_dir, "config.yaml"), os.path.join(exp_dir, "model.pt")
    for p in (cfg_p, pt_p):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} not found: train the model first (stage 4)")
    with open(cfg_p) as f:
        conf = yaml.safe_load(f)
    enc = (conf.get("model_conf") or {}).get("encoder") or {}
    cmvn = cmvn or enc.get("cmvn")
    if not cmvn or not os.path.isfile(cmvn):
        raise FileNotFoundError(f"CMVN stats {cmvn!r} not found: pass --cmvn dump/fbank/train/cmvn.npz")
    source = llm_source or conf.get("llm") or "smollm2-135m"
    if llm is None:
        from w2p.llm import FrozenLLM

        llm = FrozenLLM.load(source)
    state = torch.load(pt_p, map_location="cpu", weights_only=True)
    state = {k: v.contiguous() for k, v in state.items()}
    conf = dict(conf)
    conf["model_conf"] = dict(conf.get("model_conf") or {})
    if isinstance(conf["model_conf"].get("encoder"), dict):
        conf["model_conf"]["encoder"] = dict(conf["model_conf"]["encoder"], cmvn="cmvn.npz")
    # a pack is self-contained: every file the model reads is copied in and named relative to the pack
    bpe = conf["model_conf"].get("bpe_model")
    if bpe:
        if not os.path.isfile(bpe):
            raise FileNotFoundError(f"model_conf.bpe_model {bpe} of {cfg_p} not found: run pack from the recipe dir "
                                    "the model was trained in (paths in config.yaml are relative to it)")
        conf["model_conf"]["bpe_model"] = "bpe.model"
    conf["llm"] = source

    meta = {"packed_from": os.path.abspath(exp_dir), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(),
            "git_commit": git_commit(os.path.dirname(os.path.abspath(__file__)))}
    with atomic_dir(out_dir, replace=True) as tmp:
        write_yaml(os.path.join(tmp, "config.yaml"), conf)
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={k: str(v) for k, v in meta.items()})
        shutil.copyfile(cmvn, os.path.join(tmp, "cmvn.npz"))
        if bpe:
            shutil.copyfile(bpe, os.path.join(tmp, "bpe.model"))
        write_json(os.path.join(tmp, "llm.json"), llm_reference(llm, source))
        write_json(os.path.join(tmp, "decode.json"), dict({"beam": 5, "repetition_penalty": 1.5}, **(decode or {})))
        write_atomic(os.path.join(tmp, "README.md"),
                     f"# Packed {conf.get('model')} model\n\n{json.dumps(meta, indent=1)}\n\n"
                     "    python -m w2p.bin.infer --model <this dir> --task st --wav a.wav\n\n"
                     "The frozen LLM is not included: llm.json names it (loaded with w2p.llm.FrozenLLM.load).\n")
    return out_dir


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); restore the file or re-pack the model") from e
    if not isinstance(out, dict):
        raise ValueError(f"{path}: expected a JSON object; restore the file or re-pack the model")
    return out


class Wav2PromptPipeline:
    """A trained speech-prompt model + its frozen LLM, ready to run tasks on audio."""

    def __init__(self, model, llm, conf: dict | None = None, decode: dict | None = None, *,
                 max_seconds: float = 60.0):
        self.model, self.llm = model.eval(), llm
        self.conf = conf or {}
        self.decode = dict({"beam": 5, "repetition_penalty": 1.5}, **(decode or {}))
        # the encoder's self-attention grows with the square of the length: longer audio is refused, not run
        self.max_seconds = float(max_seconds)

    @classmethod
    def from_pretrained(cls, model_dir: str, *, llm=None, llm_source: str | None = None,
                        device: str = "cpu", max_seconds: float = 60.0) -> "Wav2PromptPipeline":
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f"{model_dir}: not a directory (give a dir written by w2p.bin.pack_model)")
        missing = [f for f in PACK_FILES if not os.path.isfile(os.path.join(model_dir, f))]
        if missing:
            raise FileNotFoundError(f"{model_dir}: not a packed model, missing {missing} (run w2p.bin.pack_model)")
        ref = _read_json(os.path.join(model_dir, "llm.json"))
        missing = [k for k in ("source", "embed_dim", "vocab_size") if k not in ref]
        if missing:
            raise ValueError(f"{model_dir}/llm.json: no {missing}; restore the file or re-pack the model")
        if llm is None:
            from w2p.llm import FrozenLLM

            llm = FrozenLLM.load(llm_source or ref["source"], device=device)
        if int(llm.embed_dim) != int(ref["embed_dim"]) or int(llm.vocab_size) != int(ref["vocab_size"]):
            raise ValueError(f"{model_dir} was trained for an LLM with embed_dim {ref['embed_dim']} / vocab "
                             f"{ref['vocab_size']}; the loaded LLM has {llm.embed_dim} / {llm.vocab_size}")
        tok = _tokenizer_hash(llm)
        if ref.get("tokenizer_sha256") and tok and tok != ref["tokenizer_sha256"]:
            raise ValueError(f"{model_dir}: the loaded LLM's tokenizer differs from the one it was trained with "
                             f"({ref['source']})")
        from w2p.models import load_trained

        model, conf = load_trained(model_dir, llm, device=device)
        decode = {}
        dp = os.path.join(model_dir, "decode.json")
        if os.path.isfile(dp):
            decode = _read_json(dp)
        return cls(model, llm, conf, decode, max_seconds=max_seconds)

    # -- audio -> prompt vectors -------------------------------------------------------------------------------
    @staticmethod
    def features(wav) -> torch.Tensor:
        """fbank (T, 80) of a wav path or a (samples, sr) / 16 kHz float array."""
        from w2p.features import fbank

        if isinstance(wav, (str, os.PathLike)):
            from w2p.data.audio import load_audio

            x = load_audio(str(wav), target_sr=16000, resample_ok=True)
            name = str(wav)
        else:
            x, sr = (wav if isinstance(wav, tuple) else (wav, 16000))
            x = np.asarray(x)
            if not (isinstance(sr, (int, np.integer)) and sr > 0):
                raise ValueError(f"sample rate must be a positive integer (Hz), got {sr!r}")
            if np.issubdtype(x.dtype, np.integer):  # PCM samples: scale to [-1, 1) as soundfile reads them
                if x.dtype not in (np.int16, np.int32):
                    raise ValueError(f"audio array of dtype {x.dtype}: give float samples in [-1, 1] or int16/int32 "
                                     "PCM")
                x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
            elif not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"audio array of dtype {x.dtype}: give float samples in [-1, 1] or int16/int32 PCM")
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                raise ValueError("audio array contains NaN/inf samples")
            if x.ndim != 1 or x.size < 400:
                raise ValueError(f"audio array must be 1-D with >= 400 samples (25 ms), got shape {x.shape}")
            if sr != 16000:
                from w2p.data.audio import resample

                x = resample(x, sr, 16000).astype(np.float32)
            name = "<array>"
        f = fbank(x, 16000)
        if f.shape[0] == 0:
            raise ValueError(f"{name}: audio shorter than one 25 ms frame")
        return torch.from_numpy(f)

    @torch.inference_mode()
    def prompts(self, wavs: list) -> list[torch.Tensor]:
        from w2p.decode import FRAME_SHIFT, pad_feats

        mats = [self.features(w) for w in wavs]
        for w, m in zip(wavs, mats):
            sec = m.shape[0] * FRAME_SHIFT
            if sec > self.max_seconds:
                name = w if isinstance(w, (str, os.PathLike)) else "<array>"
                raise ValueError(f"{name}: {sec:.1f} s of audio, over the limit of {self.max_seconds:g} s (memory "
                                 "grows with the square of the length): split it into shorter segments, or raise "
                                 "max_seconds")
        feats, lens = pad_feats(mats)
        dev = next(self.model.parameters()).device
        return self.model.prompts(feats.to(dev), lens.to(dev)).vectors

    # -- tasks -----------------------------------------------------------------------------------------------
    def generate(self, wavs, task: str | None = "asr", *, template: str | None = None, beam: int | None = None,
                 repetition_penalty: float | None = None, max_new_tokens: int | None = None,
                 **template_vars) -> list[str]:
        """Run ``task`` (asr | st | slu | sqqa | sqa) or a custom ``template`` on each wav.

        Template variables are given as keywords, one string for all wavs or a list with one per wav (e.g.
        ``question=...`` for sqa, ``intents=[...]`` label list for slu)."""
        if isinstance(wavs, (str, os.PathLike)):
            wavs = [wavs]
        wavs = list(wavs)
        if not wavs:
            raise ValueError("generate: no audio given")
        t = get_task(task) if task and not template else None
        tpl = template or t.template
        mode = t.mode if t else "generate"
        fields = dict(template_vars)
        intents = None
        if mode == "choice":
            intents = fields.get("intents")
            if not intents:
                raise ValueError(f"task {task} needs intents=[...] (the label set to choose from)")
            if isinstance(intents, str):
                intents = [x.strip() for x in intents.replace("\n", ",").split(",") if x.strip()]
            fields["intents"] = intents_prompt(intents)
        check_template(tpl, given=list(fields))
        for k, v in fields.items():
            if isinstance(v, (list, tuple)) and len(v) != len(wavs):
                raise ValueError(f"{k}: {len(v)} values for {len(wavs)} wavs (give one, or one per wav)")
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
        speech = self.prompts(wavs)
        if mode == "choice":
            from w2p.decode import choose

            best = choose(self.llm, tpl, speech, [readable_intent(i) for i in intents], **fields)
            return [canonical_intent(intents[b]) for b in best]
        # None means "the default"; 0 or a negative value is an error (FrozenLLM.generate), never a default
        return self.llm.generate(self.llm.build_inputs(tpl, speech, **fields),
                                 max_new_tokens=(t.max_new_tokens if t else 64) if max_new_tokens is None
                                 else max_new_tokens,
                                 num_beams=self.decode["beam"] if beam is None else beam,
                                 repetition_penalty=self.decode["repetition_penalty"] if repetition_penalty is None
                                 else repetition_penalty)
