"""Zero-shot decoding of every system on every task with one frozen LLM (recipe stage 6).

Systems (``kind``):
  wav2prompt   speech -> Wav2Prompt prompt vectors spliced at {speech} (also the no-MSE ablation: same kind);
  encoder_llm  speech -> stacked encoder frames -> linear connector, spliced at {speech};
  cascade      speech -> CTC ASR transcript (text) at {speech};
  gold         the reference transcript (text) at {speech}: the LLM's own ceiling.
Generation tasks use beam search + repetition penalty; the SLU task is a calibrated closed-set choice over the
listed intents (see w2p/tasks.py for why). Output per system/task: <exp>/decode_<task>_<set>/{hyp,ref,timing.json}.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch

from w2p.features import RAW, RawIndex, dump_type
from w2p.io import evenly_spaced, load_feats, read_kv, read_scp, write_atomic, write_kv_atomic
from w2p.tasks import CALIBRATION_INPUT, canonical_intent, get_task, intents_prompt, readable_intent

log = logging.getLogger(__name__)

FRAME_SHIFT = 0.01  # seconds per fbank frame

# The decoding config (stages 6, 8, 9): every key, with its default. ``systems`` and ``tasks`` come from the recipe.
DEFAULTS = {
    "llm": "smollm2-135m",
    "llm_dtype": "float32",
    "device": "cpu",
    "beam": 5,
    "repetition_penalty": 1.5,
    "batch_size": 16,
    "max_utts": None,  # cap per test set (first N sorted utterance ids); None = all
    "asr_beam": 1,  # CTC prefix-beam width for the cascade's ASR (1 = greedy)
    "calibrate": "batch",  # SLU closed-set choice: batch | content_free | none (calibrate_scores)
    "num_threads": None,
    # feats.scp entries that are shell commands (Kaldi "cmd |" pipes) are RUN when read: refused unless true
    "allow_scp_pipes": False,
    "max_new_tokens": {},  # per task; default: the task's own (w2p.tasks)
    "templates": {},  # per task; default: the task's own template
    "tasks": {},  # task -> test set name, e.g. {asr: test, st: st_test}
    "systems": {},  # name -> {kind, exp (trained model dir), out (decode dir parent; default exp)}
}


def load_config(path: str | list[str] | None, overrides: list[str] | None = None) -> dict:
    """The decoding config: DEFAULTS <- YAML layer(s) <- ``--key.sub value`` overrides (w2p.config rules)."""
    from w2p.config import load_config as _load

    return _load(path, overrides, defaults=DEFAULTS)


def out_dir_of(spec: dict, name: str) -> str:
    """Where a system's decode_<task>_<set> dirs go: ``out``, else its ``exp``, else exp/<name>."""
    return spec.get("out") or spec.get("exp") or os.path.join("exp", name)


# -- test sets ----------------------------------------------------------------------------------------------------
@dataclass
class TestSet:
    name: str
    dump_dir: str
    utt_ids: list[str]
    text: dict[str, str]
    fields: dict[str, dict[str, str]] = field(default_factory=dict)  # ref, question, ... (utt -> str)
    intents: list[str] | None = None
    num_frames: dict[str, int] = field(default_factory=dict)
    _feats: object = None
    n_dropped: int = 0  # utterances of the data dir without features (their audio failed in stage 2)

    def feats(self, utt: str) -> torch.Tensor:
        if isinstance(self._feats, RawIndex):  # a raw-audio dump: fbank from the audio, as in training
            return torch.from_numpy(self._feats.features(utt))
        return torch.tensor(load_feats(self._feats[utt]), dtype=torch.float32)  # copies: the arrays are read-only

    def audio_sec(self, utts: list[str] | None = None) -> float:
        return FRAME_SHIFT * sum(self.num_frames.get(u, 0) for u in (utts or self.utt_ids))


def load_set(dump_dir: str, *, max_utts: int | None = None, allow_pipes: bool = False) -> TestSet:
    """A dump dir (feats.scp, utt2num_frames, text, optional ref / question / intents); with ``max_utts``, that many
    utterances evenly spaced over the sorted ids are kept (deterministic, and every voice of a multi-voice set is
    in the sample, not only the first one's)."""
    scp = os.path.join(dump_dir, "feats.scp")
    raw = dump_type(dump_dir) == RAW
    if not raw and not os.path.isfile(scp):
        raise FileNotFoundError(f"{scp} not found: run stage 2 (features) for this set first")
    text_p = os.path.join(dump_dir, "text")
    if not os.path.isfile(text_p):
        raise FileNotFoundError(f"{text_p} not found (every set needs its transcripts)")
    text = read_kv(text_p)
    if raw:
        feats = RawIndex(dump_dir)
        have = set(feats.utts)
    else:
        feats = have = read_scp(scp, allow_pipes=allow_pipes)
    utts = sorted(u for u in text if u in have)
    if not utts:
        raise ValueError(f"{dump_dir}: no utterance has both a transcript and features")
    utts = evenly_spaced(utts, max_utts)
    flds = {}
    for name in ("ref", "question", "slots"):
        p = os.path.join(dump_dir, name)
        if os.path.isfile(p):
            flds[name] = read_kv(p)
            miss = [u for u in utts if u not in flds[name]]
            if miss:
                raise ValueError(f"{p}: no entry for {len(miss)} utterance(s), e.g. {miss[0]}")
    intents = None
    p = os.path.join(dump_dir, "intents")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            intents = [x.strip() for x in f if x.strip()]
    nf_p = os.path.join(dump_dir, "utt2num_frames")
    nf = {k: int(v) for k, v in read_kv(nf_p).items()} if os.path.isfile(nf_p) else {}
    sk_p = os.path.join(dump_dir, "skipped")
    n_dropped = len(read_kv(sk_p)) if os.path.isfile(sk_p) else 0
    ts = TestSet(os.path.basename(os.path.normpath(dump_dir)), dump_dir, utts, text, flds, intents, nf, feats,
                 n_dropped)
    for u in utts:
        if u not in ts.num_frames:
            ts.num_frames[u] = int(ts.feats(u).shape[0])
    return ts


def batches(ts: TestSet, batch_size: int) -> list[list[str]]:
    """Utterances grouped by length (less padding), in a deterministic order."""
    order = sorted(ts.utt_ids, key=lambda u: (ts.num_frames.get(u, 0), u))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_feats(mats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([m.shape[0] for m in mats], dtype=torch.long)
    out = mats[0].new_zeros(len(mats), int(lens.max()), mats[0].shape[1])
    for i, m in enumerate(mats):
        out[i, : m.shape[0]] = m
    return out, lens


# -- systems ------------------------------------------------------------------------------------------------------
class System:
    """One decoding system: turns a batch of utterances into the {speech} fill (vectors or text)."""

    def __init__(self, name: str, kind: str, model=None, *, asr_beam: int = 1):
        if kind not in ("wav2prompt", "encoder_llm", "cascade", "gold"):
            raise ValueError(f"unknown system kind '{kind}' (wav2prompt | encoder_llm | cascade | gold)")
        if kind != "gold" and model is None:
            raise ValueError(f"system {name}: kind {kind} needs a trained model")
        self.name, self.kind, self.model, self.asr_beam = name, kind, model, asr_beam
        self.last_transcripts: list[str] | None = None

    @torch.inference_mode()
    def speech(self, ts: TestSet, utts: list[str]) -> list:
        if self.kind == "gold":
            return [ts.text[u] for u in utts]
        device = next(self.model.parameters()).device
        feats, lens = pad_feats([ts.feats(u) for u in utts])
        feats, lens = feats.to(device), lens.to(device)
        if self.kind == "cascade":
            out = self.model.transcribe(feats, lens, beam=self.asr_beam)
            # an empty transcript would leave {speech} empty; keep the prompt well-formed
            self.last_transcripts = out
            return [t if t.strip() else "…" for t in out]
        return [p.detach() for p in self.model.prompts(feats, lens).vectors]


# -- closed-set scoring -------------------------------------------------------------------------------------------
CALIBRATIONS = ("content_free", "batch", "none")
BATCH_CALIBRATION_MIN = 8  # fewer inputs estimate no prior (1 input: every label calibrates to 0)
CALIBRATION_NOTES = {  # RESULTS.md wording per mode
    "content_free": "the score is calibrated by the same label scored with a content-free input (\"N/A\").",
    "batch": "the scores are batch-calibrated (Zhou et al. 2024): normalised over the labels, then each label's mean "
             "probability over the system's own test inputs is divided out (no labels used), so the LLM's label prior "
             "is removed in the same way for speech prompts and for text.",
    "none": "no calibration.",
}


def calibration_mode(calibrate) -> str:
    """True/False (old configs) -> "content_free"/"none"; a string must be one of CALIBRATIONS."""
    if calibrate is True:
        return "content_free"
    if calibrate is False or calibrate is None:
        return "none"
    if calibrate not in CALIBRATIONS:
        raise ValueError(f"calibrate: {calibrate!r} is not one of {', '.join(CALIBRATIONS)} (or true/false)")
    return calibrate


def choice_scores(llm, template: str, speech: list, candidates: list[str], *, chunk: int = 8, **fields) -> torch.Tensor:
    """(N, K) log-probabilities of every candidate answer for every input, in chunks of ``chunk`` inputs."""
    scores = []
    for s in range(0, len(speech), chunk):
        sub = {k: (v[s:s + chunk] if isinstance(v, list) else v) for k, v in fields.items()}
        scores.append(llm.choice_logprobs(llm.build_inputs(template, speech[s:s + chunk], **sub), candidates))
    return torch.cat(scores, 0)


def calibrate_scores(llm, scores: torch.Tensor, mode: str, template: str, candidates: list[str],
                     **fields) -> torch.Tensor:
    """Remove the LLM's per-label prior from (N, K) candidate log-probabilities.

    content_free: subtract the label's log-probability given the content-free text input (Zhao et al. 2021);
      it estimates the prior of a *text* prompt, so it suits text inputs (cascade, gold) best.
    batch: batch calibration (Zhou et al. 2024): normalise over the candidates, then subtract the log of each
      label's mean probability over the N inputs scored together. It needs no labels and estimates the prior
      from the system's own inputs, so it is as fair to speech prompts as to text; needs N >> 1.
    none: the raw scores."""
    if mode == "none":
        return scores
    if mode == "batch" and scores.shape[0] < BATCH_CALIBRATION_MIN:
        log.warning("batch calibration needs >= %d inputs (got %d): content-free calibration instead",
                    BATCH_CALIBRATION_MIN, scores.shape[0])
        mode = "content_free"
    if mode == "content_free":
        sub = {k: (v[:1] if isinstance(v, list) else v) for k, v in fields.items()}
        return scores - llm.choice_logprobs(llm.build_inputs(template, [CALIBRATION_INPUT], **sub), candidates)
    lp = torch.log_softmax(scores.float(), 1)
    prior = torch.logsumexp(lp, 0) - math.log(lp.shape[0])
    return lp - prior


def choose(llm, template: str, speech: list, candidates: list[str], *, calibrate="content_free",
           chunk: int = 8, **fields) -> list[int]:
    """Index of the best candidate per utterance, after ``calibrate`` (see calibrate_scores)."""
    sc = choice_scores(llm, template, speech, candidates, chunk=chunk, **fields)
    sc = calibrate_scores(llm, sc, calibration_mode(calibrate), template, candidates, **fields)
    return sc.argmax(1).tolist()


# -- one system x one task ----------------------------------------------------------------------------------------
def decode_task(llm, system: System, task_name: str, ts: TestSet, *, beam: int = 5, repetition_penalty: float = 1.5,
                max_new_tokens: int | None = None, batch_size: int = 16, template: str | None = None,
                calibrate="content_free") -> tuple[dict[str, str], dict]:
    """Returns (hyp per utt, timing/stats). The reference for ASR is the transcript, otherwise ``ref``."""
    task = get_task(task_name)
    tpl = template or task.template
    mnt = max_new_tokens or task.max_new_tokens
    if task.mode == "choice" and not ts.intents:
        raise FileNotFoundError(f"{ts.dump_dir}/intents missing: the {task_name} task needs the label set")
    mode = calibration_mode(calibrate)  # a bad value fails before any decoding
    if task.mode == "choice":  # the label set is the same for every utterance of the set
        intents, cands = intents_prompt(ts.intents), [readable_intent(i) for i in ts.intents]
    hyps: dict[str, str] = {}
    choice_utts: list[str] = []
    choice_raw: list[torch.Tensor] = []
    transcripts: dict[str, str] = {}
    n_vec = 0
    t0 = time.perf_counter()
    for utts in batches(ts, batch_size):
        sp = system.speech(ts, utts)
        if system.kind == "cascade" and system.last_transcripts is not None:
            transcripts.update(zip(utts, system.last_transcripts))
        n_vec += sum(x.shape[0] if torch.is_tensor(x) else 0 for x in sp)
        fields: dict = {}
        if "question" in task.fields:
            if "question" not in ts.fields:
                raise FileNotFoundError(f"{ts.dump_dir}/question missing: the {task_name} task needs it")
            fields["question"] = [ts.fields["question"][u] for u in utts]
        if task.mode == "choice":
            # scored here, calibrated once over the whole set below (batch calibration needs every input's scores)
            choice_utts.extend(utts)
            choice_raw.append(choice_scores(llm, tpl, sp, cands, **fields, intents=intents))
            continue
        out = llm.generate(llm.build_inputs(tpl, sp, **fields), max_new_tokens=mnt, num_beams=beam,
                           repetition_penalty=repetition_penalty, batch_size=batch_size)
        for u, h in zip(utts, out):
            hyps[u] = " ".join(h.split())  # one line per utterance in a Kaldi-style file
    if choice_raw:
        sc = calibrate_scores(llm, torch.cat(choice_raw, 0), mode, tpl, cands, intents=intents)
        for u, b in zip(choice_utts, sc.argmax(1).tolist()):
            hyps[u] = canonical_intent(ts.intents[b])
    dt = time.perf_counter() - t0
    timing = {"decode_sec": round(dt, 3), "audio_sec": round(ts.audio_sec(), 3), "n_utts": len(ts.utt_ids),
              "n_dropped": ts.n_dropped,
              "system": system.name, "task": task_name, "beam": beam, "repetition_penalty": repetition_penalty,
              "max_new_tokens": mnt, "template": tpl}
    if n_vec:
        timing["mean_prompt_vectors"] = round(n_vec / len(ts.utt_ids), 2)
    if transcripts:
        timing["transcripts"] = transcripts
    return hyps, timing


def references(task_name: str, ts: TestSet) -> dict[str, str]:
    if task_name == "asr":
        return {u: ts.text[u] for u in ts.utt_ids}
    if "ref" not in ts.fields:
        raise FileNotFoundError(f"{ts.dump_dir}/ref missing: task set {ts.name} needs references")
    ref = {u: ts.fields["ref"][u] for u in ts.utt_ids}
    if task_name == "slu":
        ref = {u: canonical_intent(v) for u, v in ref.items()}
    return ref


def write_decode_dir(out_dir: str, hyps: dict[str, str], refs: dict[str, str], timing: dict,
                     text: dict[str, str] | None = None) -> None:
    """hyp, ref, timing.json (+ asr_hyp for the cascade, + text = the spoken transcripts for the echo diagnostic)."""
    os.makedirs(out_dir, exist_ok=True)
    if text:
        write_kv_atomic(os.path.join(out_dir, "text"), {u: " ".join(text[u].split()) for u in hyps})
    transcripts = timing.pop("transcripts", None)
    if transcripts:
        write_kv_atomic(os.path.join(out_dir, "asr_hyp"), {u: " ".join(t.split()) for u, t in transcripts.items()})
    write_kv_atomic(os.path.join(out_dir, "hyp"), hyps)
    write_kv_atomic(os.path.join(out_dir, "ref"), {u: " ".join(r.split()) for u, r in refs.items()})
    write_atomic(os.path.join(out_dir, "timing.json"), json.dumps(timing, indent=1, ensure_ascii=False) + "\n")
