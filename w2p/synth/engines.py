"""Speech synthesis engines for the mini_en corpus: espeak-ng, flite and festival (Debian packages), one interface.

    engine = get_engine("flite")
    x = engine.synthesize("turn on the lights", "slt", speed=1.1, pitch=0.95, out_wav="a.wav")  # 16 kHz mono

``speed`` is a tempo factor (> 1: faster, same pitch where the engine allows it) and ``pitch`` a factor on the
fundamental frequency (1.0: the voice's own). Each engine uses its own controls where it has them (espeak-ng:
words per minute and pitch; flite and festival: duration stretch) and sox's ``pitch`` effect otherwise.
An engine that is not installed raises :class:`EngineMissing` naming the apt packages to install.

The default corpus uses espeak-ng only, through ``w2p.synth.espeak`` (unchanged: its corpus stays byte-identical);
``w2p.synth.make_corpus --engines espeak,flite,festival`` draws engine, voice, speed and pitch per utterance.
"""
from __future__ import annotations

import io
import math
import os
import random
import re
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

from w2p.data.audio import AudioError, resample
from w2p.synth import espeak as _espeak

SR = 16000
SPEED = (0.85, 1.15)  # tempo factors drawn per utterance in multi-engine corpora
PITCH = (0.88, 1.12)  # f0 factors (about +-2 semitones)


class EngineMissing(RuntimeError):
    """A synthesis engine (or one of its voices) is not installed; the message names the apt package."""


def _run(cmd: list[str], what: str, stdin: str | None = None) -> bytes:
    p = subprocess.run(cmd, input=None if stdin is None else stdin.encode(), capture_output=True, timeout=120)
    if p.returncode != 0:
        raise AudioError(f"{what} failed ({' '.join(cmd[:4])} ...): rc={p.returncode} "
                         f"{p.stderr.decode(errors='replace').strip()[-400:]}")
    return p.stdout


def _read(data_or_path, what: str) -> tuple[np.ndarray, int]:
    try:
        x, sr = sf.read(io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path,
                        dtype="float64")
    except Exception as e:
        raise AudioError(f"{what}: the engine wrote no readable audio ({e})") from e
    if x.ndim > 1:
        x = x.mean(axis=1)
    if len(x) == 0:
        raise AudioError(f"{what}: the engine wrote empty audio")
    return x, sr


def sox_pitch(x: np.ndarray, sr: int, factor: float) -> np.ndarray:
    """Shift the pitch of ``x`` by ``factor`` (duration kept) with sox's ``pitch`` effect (WSOLA)."""
    if abs(factor - 1.0) < 1e-6:
        return x
    sox = shutil.which("sox")
    if sox is None:
        raise EngineMissing("sox not found on PATH (pitch variation of flite/festival voices). "
                            "Fix: apt-get install sox (tools/install.sh does it as root)")
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "in.wav"), os.path.join(d, "out.wav")
        sf.write(src, x, sr, subtype="FLOAT")
        _run([sox, src, dst, "pitch", f"{1200 * math.log2(factor):.1f}"], "sox pitch")
        y, _ = sf.read(dst, dtype="float64")
    return y


def _finish(x: np.ndarray, sr: int, out_wav: str | None) -> np.ndarray:
    y = resample(x, sr, SR).astype(np.float32) if sr != SR else x.astype(np.float32)
    peak = float(np.abs(y).max())
    if peak > 0.99:  # some voices clip after resampling or pitch shifting
        y = y * (0.99 / peak)
    if out_wav is not None:
        from w2p.data.audio import write_wav_atomic

        write_wav_atomic(out_wav, y, SR)
    return y


class Engine:
    name = ""
    packages = ""  # the apt packages that provide it

    def voices(self) -> list[str]:
        raise NotImplementedError

    def available(self) -> bool:
        try:
            self.check()
            return True
        except EngineMissing:
            return False

    def check(self) -> None:
        raise NotImplementedError

    def synthesize(self, text: str, voice: str, speed: float = 1.0, pitch: float = 1.0,
                   out_wav: str | None = None) -> np.ndarray:
        """16 kHz mono float32 samples of ``text`` (also written as 16-bit PCM to ``out_wav`` when given)."""
        raise NotImplementedError

    def synthesize_many(self, jobs: list[tuple[str, str, float, float, str]]) -> None:
        """Write each job's (text, voice, speed, pitch, out_wav) wav; engines with a costly start-up batch them."""
        for text, voice, speed, pitch, out_wav in jobs:
            self.synthesize(text, voice, speed, pitch, out_wav=out_wav)

    def _check_voice(self, voice: str) -> None:
        if voice not in self.voices():
            raise EngineMissing(f"{self.name}: no voice {voice!r} (installed: {' '.join(self.voices()) or 'none'}). "
                                f"Fix: apt-get install {self.packages}")


class Espeak(Engine):
    """espeak-ng: voice ``<accent>+<variant>`` (e.g. ``en-us+m3``); speed -> words per minute, pitch -> 0-99."""
    name, packages = "espeak", "espeak-ng"

    def check(self) -> None:
        if shutil.which("espeak-ng") is None:
            raise EngineMissing("espeak-ng not found on PATH. Fix: apt-get install espeak-ng "
                                "(tools/install.sh does it as root)")

    def voices(self) -> list[str]:
        return [f"{v}+{var}" for v in _espeak.VOICES for var in _espeak.VARIANTS]

    def synthesize(self, text, voice, speed=1.0, pitch=1.0, out_wav=None):
        self.check()
        accent, _, variant = voice.partition("+")
        if accent not in _espeak.VOICES or variant not in _espeak.VARIANTS:
            raise EngineMissing(f"espeak: unknown voice {voice!r} (use <accent>+<variant> from w2p.synth.espeak)")
        # espeak-ng's pitch is a 0-99 scale (default 50), not Hz: 8 units per semitone keeps PITCH's +-2 semitones
        # within the 30-70 range the default corpus draws
        p = int(np.clip(round(50 + 8 * 12 * math.log2(pitch)), 0, 99))
        x = _espeak.synthesize(text, accent, variant, int(round(175 * speed)), p, sr=SR)
        return _finish(x.astype(np.float64), SR, out_wav)


class Flite(Engine):
    """flite's built-in voices; speed -> duration_stretch, pitch -> sox."""
    name, packages = "flite", "flite"
    VOICES = ("kal", "kal16", "awb", "rms", "slt")

    def check(self) -> None:
        if shutil.which("flite") is None:
            raise EngineMissing("flite not found on PATH. Fix: apt-get install flite (tools/install.sh does it)")

    def voices(self) -> list[str]:
        if shutil.which("flite") is None:
            return []
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
        have = set(out.split(":", 1)[-1].split())
        return [v for v in self.VOICES if v in have]

    def synthesize(self, text, voice, speed=1.0, pitch=1.0, out_wav=None):
        self.check()
        self._check_voice(voice)
        with tempfile.TemporaryDirectory() as d:
            wav = os.path.join(d, "out.wav")
            _run(["flite", "-voice", voice, "--setf", f"duration_stretch={1.0 / speed:.4f}", "-t", text,
                  "-o", wav], f"flite voice {voice} text {text!r}")
            x, sr = _read(wav, f"flite voice {voice} text {text!r}")
        return _finish(sox_pitch(x, sr, pitch), sr, out_wav)


class Festival(Engine):
    """festival (batch mode) with the festvox voices Debian packages; speed -> Duration_Stretch, pitch -> sox."""
    name = "festival"
    packages = "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
    # voice name -> the Scheme function selecting it (the directory under /usr/share/festival/voices/*/)
    VOICES = {"kal_diphone": "voice_kal_diphone", "ked_diphone": "voice_ked_diphone",
              "cmu_us_slt_arctic_hts": "voice_cmu_us_slt_arctic_hts"}
    VOICE_DIRS = ("/usr/share/festival/voices",)

    def check(self) -> None:
        if shutil.which("festival") is None:
            raise EngineMissing(f"festival not found on PATH. Fix: apt-get install {self.packages}")

    def voices(self) -> list[str]:
        if shutil.which("festival") is None:
            return []
        have = set()
        for root in self.VOICE_DIRS:
            if os.path.isdir(root):
                for lang in os.listdir(root):
                    if os.path.isdir(os.path.join(root, lang)):
                        have.update(os.listdir(os.path.join(root, lang)))
        return [v for v in self.VOICES if v in have]

    def synthesize(self, text, voice, speed=1.0, pitch=1.0, out_wav=None):
        x = self._render([(text, voice, speed, pitch)])[0]
        return _finish(x, SR, out_wav)

    def synthesize_many(self, jobs):
        """One festival process for all jobs (its start-up and voice loading cost more than an utterance)."""
        for (*_job, out), x in zip(jobs, self._render([j[:4] for j in jobs])):
            _finish(x, SR, out)

    def _render(self, jobs: list[tuple[str, str, float, float]]) -> list[np.ndarray]:
        self.check()
        for _, voice, *_rest in jobs:
            self._check_voice(voice)
        with tempfile.TemporaryDirectory() as d:
            lines, current = [], None
            for i, (text, voice, speed, _pitch) in enumerate(jobs):
                if voice != current:
                    lines.append(f"({self.VOICES[voice]})")
                    current = voice
                # keep the text to what the corpus speaks: no quote or backslash can end the Scheme string
                clean = re.sub(r"[^A-Za-z0-9' ,.?!-]", " ", text)
                lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / speed:.4f})")
                lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{clean}")) "{d}/{i}.wav" \'riff)')
            script = os.path.join(d, "batch.scm")
            with open(script, "w") as f:
                f.write("\n".join(lines) + "\n")
            _run(["festival", "-b", script], f"festival ({len(jobs)} utterances, e.g. voice {jobs[0][1]} text "
                 f"{jobs[0][0]!r})")
            out = []
            for i, (text, voice, _speed, pitch) in enumerate(jobs):
                x, sr = _read(os.path.join(d, f"{i}.wav"), f"festival voice {voice} text {text!r}")
                out.append(_finish(sox_pitch(x, sr, pitch), sr, None).astype(np.float64))
        return out


ENGINES: dict[str, Engine] = {e.name: e for e in (Espeak(), Flite(), Festival())}


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown synthesis engine {name!r}; known: {', '.join(ENGINES)}")
    return ENGINES[name]


def parse_engines(spec: str) -> list[str]:
    """``"espeak,flite"`` -> ["espeak", "flite"], each checked installed (with its voices) or EngineMissing."""
    names = [s.strip() for s in spec.replace(" ", ",").split(",") if s.strip()]
    if not names:
        raise ValueError("no synthesis engine given (e.g. --engines espeak,flite,festival)")
    for n in names:
        e = get_engine(n)
        e.check()
        if not e.voices():
            raise EngineMissing(f"{n}: no voice installed. Fix: apt-get install {e.packages}")
    return names


def speaker_id(engine: str, voice: str) -> str:
    """``flite_slt``, ``espeak_enusm3``: no '-' (utterance ids are ``<spk>-<set>-<n>``)."""
    return f"{engine}_{re.sub(r'[^a-z0-9]', '', voice.lower())}"


def draw_voices(n: int, seed: int, engines: list[str]) -> list[dict]:
    """Deterministic engine/voice/speed/pitch for n utterances: an engine uniformly, then one of its voices, a tempo
    factor in SPEED and an f0 factor in PITCH (the voices installed decide the draws: a corpus stamp records them)."""
    rng = random.Random(seed)
    voices = {e: sorted(get_engine(e).voices()) for e in engines}
    out = []
    for _ in range(n):
        e = rng.choice(engines)
        v = rng.choice(voices[e])
        out.append({"engine": e, "voice": v, "spk": speaker_id(e, v), "speed": round(rng.uniform(*SPEED), 3),
                    "pitch": round(rng.uniform(*PITCH), 3)})
    return out


def describe() -> dict[str, str]:
    """{engine: "voices ..." or "missing (apt-get install ...)"} for ``w2p info``."""
    out = {}
    for name, e in ENGINES.items():
        if not e.available():
            out[name] = f"missing (apt-get install {e.packages})"
            continue
        v = e.voices()
        shown = " ".join(v) if len(v) <= 8 else f"{len(v)} voices ({' '.join(v[:3])} ...)"
        out[name] = shown or f"no voices (apt-get install {e.packages})"
    return out
