"""Training-data augmentation (layer 2, beside the features), seeded and cheap on CPU.

Signal functions (numpy, 16 kHz mono float):
* :func:`speed_perturb`: Kaldi/ESPnet speed perturbation (sox ``speed``: tempo and pitch together), by resampling;
  factor 1.1 shortens by 1/1.1;
* :func:`make_noise` (white, pink, brown from a seeded generator; babble from other utterances of the set) and
  :func:`add_noise` at a given SNR (signal power over noise power of the whole utterance);
* :func:`synthetic_rir` (an exponentially decaying noise tail after the direct path, 60 dB down at ``rt60``) and
  :func:`reverberate`.

:func:`augment_data_dir` applies them at the data-dir level, as Kaldi's ``perturb_data_dir_speed_3way.sh`` and its
noise/reverb copies do: ``data/train`` -> ``data/train_aug`` with one copy of the set per speed factor (ids and
speakers ``sp0.9-<id>``; the 1.0 copy keeps the original ids and files), noise and reverberation drawn per
utterance with their probabilities. Every random draw comes from a generator seeded by (seed, output utterance id),
so the result does not depend on the job split or the order. Stage 2 then extracts features of the new dir as of any
other (w2p.sh ``--augment_config``; ``w2p.bin.augment_data_dir``). SpecAugment is not here: it masks features in the
model (``model_conf.encoder.specaug``, w2p.models.encoder).
"""
from __future__ import annotations

import json
import logging
import os
import zlib

import numpy as np

from w2p.data.audio import AudioError, load_audio, load_segment, resample, write_wav_atomic
from w2p.data.datadir import PER_UTT_FILES, spk2utt_from_utt2spk, validate_data_dir
from w2p.io import read_kv, write_atomic, write_kv

log = logging.getLogger("w2p.augment")

SR = 16000
NOISE_KINDS = ("white", "pink", "brown", "babble")
# the config of w2p.bin.augment_data_dir (YAML; keys not listed here are errors)
DEFAULTS = {
    "speed_perturb": [1.0],   # one copy of the set per factor; 1.0 = the original utterances (ids unchanged)
    "keep_clean": True,       # the 1.0 copy gets no noise/reverberation (the clean data stays in the set)
    "noise": {"prob": 0.0, "snr_db": [5.0, 25.0], "kinds": list(NOISE_KINDS), "babble_speakers": [3, 6]},
    "reverb": {"prob": 0.0, "rt60": [0.2, 0.8]},
}
# files of the source dir rewritten with the new ids (audio-derived ones are recomputed or dropped)
_COPIED = [f for f in PER_UTT_FILES if f not in ("wav.scp", "utt2spk", "utt2dur", "feats.scp", "utt2num_frames",
                                                 "llm_tokens", "bpe_tokens")]


class AugmentError(ValueError):
    pass


# ------------------------------------------------------------------------------------------------ signals
def speed_perturb(x: np.ndarray, factor: float, sr: int = SR) -> np.ndarray:
    """``x`` played ``factor`` times faster (tempo and pitch, as sox ``speed``): read as if sampled at
    ``sr * factor`` and resampled to ``sr``; the length becomes ``len(x) / factor``."""
    if factor <= 0:
        raise AugmentError(f"speed factor must be > 0, got {factor}")
    if factor == 1.0:
        return np.asarray(x, dtype=np.float32)
    return resample(np.asarray(x, dtype=np.float64), int(round(sr * factor)), sr).astype(np.float32)


def _colored(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit variance."""
    w = rng.standard_normal(n)
    if exponent == 0:
        return w / w.std()
    spec = np.fft.rfft(w)
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    y = np.fft.irfft(spec / f ** (exponent / 2), n)
    y -= y.mean()
    return y / (y.std() + 1e-12)


def make_noise(kind: str, n: int, rng: np.random.Generator, others: list[np.ndarray] | None = None) -> np.ndarray:
    """``n`` samples of noise: white/pink/brown from ``rng``, or babble: the sum of ``others`` (speech of other
    utterances), each looped from a random offset to length ``n``."""
    if kind in ("white", "pink", "brown"):
        return _colored(rng, n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    if kind == "babble":
        if not others:
            raise AugmentError("babble noise needs other utterances (a set of at least two)")
        y = np.zeros(n)
        for o in others:
            o = np.asarray(o, dtype=np.float64)
            o = o / (np.sqrt((o ** 2).mean()) + 1e-12)  # each talker at the same level
            start = int(rng.integers(0, len(o)))
            y += np.resize(np.roll(o, -start), n)
        return y / (y.std() + 1e-12)
    raise AugmentError(f"unknown noise kind {kind!r}; known: {', '.join(NOISE_KINDS)}")


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """x + noise scaled so that 10 log10(P_x / P_noise) = ``snr_db`` (powers: mean squares over the utterance)."""
    x = np.asarray(x, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)[: len(x)]
    if len(noise) != len(x):
        raise AugmentError(f"noise has {len(noise)} samples, the signal {len(x)}")
    px, pn = (x ** 2).mean(), (noise ** 2).mean()
    if px == 0 or pn == 0:
        return x.astype(np.float32)
    return (x + noise * np.sqrt(px / (pn * 10 ** (snr_db / 10)))).astype(np.float32)


def synthetic_rir(rng: np.random.Generator, rt60: float, sr: int = SR, predelay_ms: tuple[float, float] = (2, 8),
                  drr_db: tuple[float, float] = (-3.0, 6.0)) -> np.ndarray:
    """A room impulse response: direct path 1 at sample 0, then Gaussian noise from a random pre-delay whose
    amplitude decays by 60 dB in ``rt60`` seconds; the tail energy sets a direct-to-reverberant ratio drawn in
    ``drr_db``. Length 1.2 * rt60."""
    n = max(2, int(1.2 * rt60 * sr))
    h = np.zeros(n)
    d = int(rng.uniform(*predelay_ms) * sr / 1000)
    t = np.arange(n - d) / sr
    tail = rng.standard_normal(n - d) * 10 ** (-3 * t / rt60)  # amplitude -60 dB at rt60
    drr = rng.uniform(*drr_db)
    tail *= np.sqrt(10 ** (-drr / 10) / ((tail ** 2).sum() + 1e-12))
    h[d:] = tail
    h[0] = 1.0
    return h


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """x convolved with ``rir`` (FFT), cut to len(x) (the direct path is at sample 0, so nothing shifts), rescaled to
    x's power."""
    x = np.asarray(x, dtype=np.float64)
    m = len(x) + len(rir) - 1
    nfft = 1 << (m - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(rir, nfft), nfft)[: len(x)]
    py = (y ** 2).mean()
    if py > 0:
        y *= np.sqrt((x ** 2).mean() / py)
    return y.astype(np.float32)


# ------------------------------------------------------------------------------------------------ data dirs
def check_config(conf: dict) -> dict:
    for k in ("noise", "reverb"):
        extra = set(conf[k]) - set(DEFAULTS[k])
        if extra:
            raise AugmentError(f"{k}: unknown key(s) {sorted(extra)}; known: {sorted(DEFAULTS[k])}")
    sp = [float(f) for f in conf["speed_perturb"]]
    if not sp or any(f <= 0 for f in sp) or len(set(sp)) != len(sp):
        raise AugmentError(f"speed_perturb: distinct factors > 0 needed, got {conf['speed_perturb']}")
    for k, lim in (("noise", "snr_db"), ("reverb", "rt60")):
        p = float(conf[k]["prob"])
        lo, hi = (float(v) for v in conf[k][lim])
        if not 0 <= p <= 1 or lo > hi or (k == "reverb" and lo <= 0):
            raise AugmentError(f"{k}: prob in [0, 1] and {lim} [low, high] (low <= high) needed, got {conf[k]}")
    bad = [kd for kd in conf["noise"]["kinds"] if kd not in NOISE_KINDS]
    if bad or not conf["noise"]["kinds"]:
        raise AugmentError(f"noise.kinds: {bad or 'empty'}; known: {', '.join(NOISE_KINDS)}")
    noisy = conf["noise"]["prob"] > 0 or conf["reverb"]["prob"] > 0
    if sp == [1.0] and not noisy:
        raise AugmentError("the augmentation config changes nothing (speed_perturb [1.0], no noise, no reverb)")
    if sp == [1.0] and conf["keep_clean"]:
        raise AugmentError("speed_perturb [1.0] with keep_clean: true leaves no copy to add noise or reverberation "
                           "to; add speed factors or set keep_clean: false")
    return conf


def copy_id(utt: str, factor: float) -> str:
    return utt if factor == 1.0 else f"sp{factor:g}-{utt}"


def plan(src: str, conf: dict, seed: int) -> list[dict]:
    """Every output utterance with its source, speed factor and draws (noise kind, SNR, babble talkers, RT60), in a
    fixed order; each utterance's draws depend only on (seed, its id)."""
    wavs = read_kv(os.path.join(src, "wav.scp"))
    seg_path = os.path.join(src, "segments")
    segs = {}
    if os.path.isfile(seg_path):
        for u, v in read_kv(seg_path).items():
            rec, start, end = v.split()
            segs[u] = (wavs[rec], float(start), float(end))
    utts = sorted(segs) if segs else sorted(wavs)
    out = []
    for f in [float(x) for x in conf["speed_perturb"]]:
        for u in utts:
            new = copy_id(u, f)
            rng = np.random.default_rng([seed, zlib.crc32(new.encode())])
            d = {"id": new, "src": u, "speed": f, "path": segs[u][0] if segs else wavs[u],
                 "segment": segs[u][1:] if segs else None}
            clean = f == 1.0 and conf["keep_clean"]
            nz, rv = conf["noise"], conf["reverb"]
            if not clean and rng.random() < nz["prob"]:
                d["noise"] = str(nz["kinds"][int(rng.integers(len(nz["kinds"])))])
                d["snr_db"] = round(float(rng.uniform(*nz["snr_db"])), 2)
                if d["noise"] == "babble":
                    k = int(rng.integers(nz["babble_speakers"][0], nz["babble_speakers"][1] + 1))
                    pool = [o for o in utts if o != u]
                    d["babble"] = [pool[i] for i in rng.choice(len(pool), size=min(k, len(pool)), replace=False)]
            if not clean and rng.random() < rv["prob"]:
                d["rt60"] = round(float(rng.uniform(*rv["rt60"])), 3)
            d["noise_seed"] = int(rng.integers(2 ** 31))
            out.append(d)
    return out


def describe(d: dict) -> str:
    parts = [f"speed={d['speed']:g}"]
    if "noise" in d:
        parts.append(f"noise={d['noise']}:{d['snr_db']}dB")
    if "rt60" in d:
        parts.append(f"rt60={d['rt60']}s")
    return " ".join(parts)


def changed(d: dict) -> bool:
    return d["speed"] != 1.0 or "noise" in d or "rt60" in d


def _load(d: dict, utt: str) -> np.ndarray:
    if d["segment"] is not None:
        return load_segment(d["path"], *d["segment"], target_sr=SR, utt=utt)
    return load_audio(d["path"], target_sr=SR, utt=utt)


def render(d: dict, by_src: dict[str, dict]) -> np.ndarray:
    """The audio of one planned utterance: speed, then reverberation, then noise (noise is not reverberated)."""
    x = speed_perturb(_load(d, d["src"]), d["speed"])
    rng = np.random.default_rng(d["noise_seed"])
    if "rt60" in d:
        x = reverberate(x, synthetic_rir(rng, d["rt60"]))
    if "noise" in d:
        others = [speed_perturb(_load(by_src[o], o), d["speed"]) for o in d.get("babble", [])]
        x = add_noise(x, make_noise(d["noise"], len(x), rng, others), d["snr_db"])
    peak = float(np.abs(x).max())
    return x * (0.99 / peak) if peak > 0.99 else x  # 16-bit PCM: no clipping (the SNR is unchanged)


def wav_path(dst: str, utt: str) -> str:
    return os.path.join(os.path.abspath(dst), "wav", f"{utt}.wav")


def _stamp(src: str, dst: str, conf: dict, seed: int) -> None:
    """The config a dst dir was made with: re-runs reuse its wavs, so another config must not mix in silently."""
    want = {"src": os.path.abspath(src), "seed": seed, "config": conf}
    p = os.path.join(dst, ".augment.json")
    if os.path.isfile(p):
        with open(p) as f:
            have = json.load(f)
        if have != want:
            raise AugmentError(f"{dst} was augmented with {have}, not {want}; remove {dst} or use the same options")
    else:
        os.makedirs(dst, exist_ok=True)
        write_atomic(p, json.dumps(want) + "\n")


def run_job(src: str, dst: str, conf: dict, seed: int, nj: int = 1, job: int = 1) -> int:
    """Write the changed utterances' wavs of job ``job`` of ``nj`` (existing valid ones are kept)."""
    validate_data_dir(src, "data", hint="run stage 1 (data prep) first")
    conf = check_config(conf)
    _stamp(src, dst, conf, seed)
    items = plan(src, conf, seed)
    by_src = {d["src"]: d for d in items}  # where each source utterance's audio is (for babble)
    done = 0
    for d in items[job - 1::nj]:
        if not changed(d):
            continue
        out = wav_path(dst, d["id"])
        if os.path.isfile(out) and os.path.getsize(out) > 44:
            continue
        try:
            write_wav_atomic(out, render(d, by_src), SR)
        except AudioError as e:
            raise AugmentError(f"augmenting {d['src']} ({describe(d)}): {e}") from e
        done += 1
    return done


def finalize(src: str, dst: str, conf: dict, seed: int) -> dict:
    """Write the data dir ``dst``: wav.scp (changed utterances: their new wav; the rest: the source audio), the
    per-utterance files under the new ids, utt2spk/spk2utt (speakers prefixed like the ids), utt2aug."""
    conf = check_config(conf)
    _stamp(src, dst, conf, seed)
    items = plan(src, conf, seed)
    seg_src = os.path.isfile(os.path.join(src, "segments"))
    utt2spk = read_kv(os.path.join(src, "utt2spk"))
    per = {f: read_kv(os.path.join(src, f)) for f in _COPIED if os.path.isfile(os.path.join(src, f))}
    wav, spk, aug, segs = {}, {}, {}, {}
    missing = []
    for d in items:
        new, u, f = d["id"], d["src"], d["speed"]
        if changed(d):
            wav[new] = wav_path(dst, new)
            if not os.path.isfile(wav[new]):
                missing.append(wav[new])
        else:
            wav[new] = d["path"]
        if seg_src:  # unchanged: the same piece of the long recording; changed: all of its own wav (end -1)
            segs[new] = f"{new} {d['segment'][0]:.3f} {d['segment'][1]:.3f}" if not changed(d) else f"{new} 0 -1"
        spk[new] = utt2spk[u] if f == 1.0 else f"sp{f:g}-{utt2spk[u]}"
        aug[new] = describe(d)
    if missing:
        raise AugmentError(f"{len(missing)} augmented wavs missing, e.g. {missing[0]}; run the augmentation jobs "
                           f"(w2p.bin.augment_data_dir without --finalize) first")
    if segs:  # each utterance is its own "recording" here (wav.scp keyed by utterance)
        write_kv(os.path.join(dst, "segments"), segs)
    write_kv(os.path.join(dst, "wav.scp"), wav)
    write_kv(os.path.join(dst, "utt2spk"), spk)
    write_kv(os.path.join(dst, "spk2utt"), spk2utt_from_utt2spk(spk))
    write_kv(os.path.join(dst, "utt2aug"), aug)
    for fname, m in per.items():
        write_kv(os.path.join(dst, fname), {d["id"]: m[d["src"]] for d in items if d["src"] in m})
    if os.path.isfile(os.path.join(src, "intents")):
        write_atomic(os.path.join(dst, "intents"), open(os.path.join(src, "intents")).read())
    validate_data_dir(dst, "data")
    return {"utterances": len(items), "changed": sum(changed(d) for d in items),
            "noise": sum("noise" in d for d in items), "reverb": sum("rt60" in d for d in items),
            "speeds": {f"{f:g}": sum(d["speed"] == f for d in items) for f in sorted({d["speed"] for d in items})}}
