"""espeak-ng speech for the mini_en corpus: voice/speed/pitch per utterance, 16 kHz mono float samples."""
from __future__ import annotations

import io
import random
import shutil
import subprocess

import numpy as np
import soundfile as sf

from w2p.data.audio import AudioError, resample

# Accents that espeak-ng ships for English (see `espeak-ng --voices=en`); mbrola voices need extra packages.
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# Voice variants (timbre/gender), see `espeak-ng --voices=variant`.
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "Andy", "Annie", "Alicia",
            "belinda", "linda", "steph", "adam", "david", "john", "max", "anika", "travis"]
SPEED = (145, 195)  # words per minute (espeak default 175)
PITCH = (30, 70)    # 0-99 (default 50)


def speaker_id(voice: str, variant: str) -> str:
    return f"{voice.replace('-', '')}_{variant.lower()}"


def draw_speakers(n: int, seed: int) -> list[dict]:
    """Deterministic voice/variant/speed/pitch for n utterances (independent of the text RNG)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        v, var = rng.choice(VOICES), rng.choice(VARIANTS)
        out.append({"voice": v, "variant": var, "spk": speaker_id(v, var),
                    "speed": rng.randint(*SPEED), "pitch": rng.randint(*PITCH)})
    return out


def check_espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng not found on PATH: the default corpus is synthesised with it. "
                           "Fix: sudo apt-get install espeak-ng (tools/install.sh does it when run as root).")
    return exe


def synthesize(text: str, voice: str, variant: str, speed: int, pitch: int, sr: int = 16000) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return float32 mono samples at ``sr``."""
    cmd = [check_espeak(), "-v", f"{voice}+{variant}", "-s", str(speed), "-p", str(pitch), "--stdout", text]
    p = subprocess.run(cmd, capture_output=True, timeout=60)
    if p.returncode != 0 or len(p.stdout) <= 44:
        raise AudioError(f"espeak-ng failed for text {text!r} ({' '.join(cmd[:-1])}): rc={p.returncode} "
                         f"{p.stderr.decode(errors='replace').strip()}")
    # espeak-ng streams a WAV whose header sizes are placeholders; libsndfile reads it to the end.
    x, sr_in = sf.read(io.BytesIO(p.stdout), dtype="float64")
    if x.ndim > 1:
        x = x.mean(axis=1)
    return resample(x, sr_in, sr).astype(np.float32)
