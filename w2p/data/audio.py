"""Audio reading with clear errors, a windowed-sinc resampler (no scipy/torchaudio here) and atomic writes."""
from __future__ import annotations

import logging
import math
import os
import struct
from functools import lru_cache

import numpy as np
import soundfile as sf

from w2p.io import atomic_path

_log = logging.getLogger(__name__)


class AudioError(ValueError):
    """A bad audio file; the message names the utterance, the file and the fix."""


# containers libsndfile cannot read (AAC in MP4, e.g. Europarl-ST's m4a): decoded through ffmpeg
FFMPEG_EXTS = (".m4a", ".mp4", ".aac", ".webm")
# the ffmpeg demuxers decode_ffmpeg allows (webm/opus from browsers, mp3, m4a/mp4, ogg, aac, wav, flac)
FFMPEG_DEMUXERS = "matroska,webm,ogg,mp3,wav,flac,mov,mp4,m4a,3gp,aac"
FFMPEG_FIX = ("install ffmpeg: 'apt-get install ffmpeg' (tools/install.sh does it when run as root), or "
              "'pip install imageio-ffmpeg' (a wheel that bundles a static ffmpeg)")


def ffmpeg_exe() -> str | None:
    """The ffmpeg binary: on PATH, else the one bundled by the imageio-ffmpeg wheel; None when neither exists."""
    import shutil

    exe = shutil.which("ffmpeg")
    if exe:
        return exe
    try:
        import imageio_ffmpeg  # optional wheel with a static ffmpeg
    except ImportError:
        return None
    return imageio_ffmpeg.get_ffmpeg_exe()


def decode_ffmpeg(path: str, *, sr: int = 16000, utt: str | None = None) -> np.ndarray:
    """Whole file -> mono float32 at ``sr`` through ffmpeg (its own resampler); AudioError naming the file and the
    fix when ffmpeg is missing or cannot decode it."""
    import subprocess

    exe = ffmpeg_exe()
    if exe is None:
        raise AudioError(f"{_where(path, utt)}: decoding {os.path.splitext(path)[1]} audio needs ffmpeg, which is "
                         f"not installed. Fix: {FFMPEG_FIX}.")
    if not os.path.isfile(path):
        raise AudioError(f"{_where(path, utt)}: audio file does not exist. Fix: check the corpus path in db.sh.")
    # only audio containers and local files: a playlist (hls, concat) would make ffmpeg read other files or URLs
    cmd = [exe, "-nostdin", "-hide_banner", "-v", "error", "-xerror", "-protocol_whitelist", "file",
           "-format_whitelist", FFMPEG_DEMUXERS, "-i", path, "-vn", "-map", "0:a:0", "-ac", "1", "-ar", str(sr),
           "-f", "f32le", "-"]
    p = subprocess.run(cmd, capture_output=True, timeout=600)
    if p.returncode != 0:
        err = p.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AudioError(f"{_where(path, utt)}: ffmpeg cannot decode it ({err[-1] if err else p.returncode}). "
                         "The file is corrupt or not audio.")
    return np.frombuffer(p.stdout, dtype="<f4").astype(np.float32)


def _where(path: str, utt: str | None) -> str:
    return (f"utterance {utt!r}, " if utt else "") + f"file {path!r}"


@lru_cache(maxsize=64)
def _sinc_table(up: int, down: int, zeros: int, rolloff: float, beta: float):
    """Polyphase filter table (up, taps) and the first tap offset, for output phase p = (n*down) % up."""
    cutoff = rolloff * min(1.0, up / down)  # fraction of the input Nyquist kept
    half = int(math.ceil(zeros / cutoff))
    k = np.arange(-half + 1, half + 1, dtype=np.float64)  # taps relative to floor(t)
    frac = np.arange(up, dtype=np.float64)[:, None] / up  # fractional input position of each phase
    x = k[None, :] - frac  # distance (in input samples) between tap and the exact position
    win = np.i0(beta * np.sqrt(np.clip(1.0 - (x / half) ** 2, 0.0, None))) / np.i0(beta)
    h = cutoff * np.sinc(cutoff * x) * win
    return h.astype(np.float64), int(k[0])


def resample(x: np.ndarray, sr_in: int, sr_out: int, *, zeros: int = 16, rolloff: float = 0.945,
             beta: float = 8.6) -> np.ndarray:
    """Band-limited resampling of a 1-D signal (Kaiser-windowed sinc, exact rational ratio)."""
    if sr_in == sr_out:
        return x
    x = np.asarray(x, dtype=np.float64)
    g = math.gcd(int(sr_in), int(sr_out))
    up, down = sr_out // g, sr_in // g
    h, k0 = _sinc_table(up, down, zeros, rolloff, beta)
    n_out = int(math.ceil(len(x) * up / down))
    taps = h.shape[1]
    pad_l = -k0
    xp = np.concatenate([np.zeros(pad_l), x, np.zeros(taps)])
    out = np.empty(n_out, dtype=np.float64)
    step = 8192  # bounded memory for long files
    for s in range(0, n_out, step):
        n = np.arange(s, min(n_out, s + step))
        base = (n * down) // up
        phase = (n * down) % up
        idx = base[:, None] + np.arange(taps)[None, :]  # + k0 + pad_l == + 0
        out[s:s + len(n)] = np.einsum("ij,ij->i", xp[idx], h[phase])
    return out


def _check_wav_truncation(path: str, utt: str | None) -> None:
    """A RIFF/WAVE whose data chunk claims more bytes than the file holds was cut off."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        while True:
            ch = f.read(8)
            if len(ch) < 8:
                return
            cid, clen = ch[:4], struct.unpack("<I", ch[4:])[0]
            if cid == b"data":
                if clen != 0xFFFFFFFF and f.tell() + clen > size:
                    raise AudioError(f"{_where(path, utt)}: truncated WAV (header says {clen} data bytes, only "
                                     f"{size - f.tell()} present). Fix: re-create or re-download the file.")
                return
            f.seek(clen + (clen & 1), 1)


def load_audio(path: str, *, target_sr: int = 16000, resample_ok: bool = True, utt: str | None = None,
               min_samples: int = 400) -> np.ndarray:
    """Read a file as mono float32 at target_sr in [-1, 1].

    Raises AudioError naming the utterance and file for: a missing or unreadable file, a corrupt or
    truncated file, empty audio (fewer than ``min_samples`` samples, i.e. shorter than one 25 ms frame),
    non-finite samples, or a sample rate != target_sr when resampling is disabled.
    """
    if not os.path.exists(path):
        raise AudioError(f"{_where(path, utt)}: audio file does not exist. Fix: check the corpus path in db.sh "
                         f"or re-run the corpus/data-prep stage (stage 0/1).")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{_where(path, utt)}: audio file is not readable (permissions). Fix: chmod +r it.")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{_where(path, utt)}: empty (zero-byte) audio file. Fix: re-create or drop it.")
    if path.lower().endswith(".wav"):
        _check_wav_truncation(path, utt)
    if os.path.splitext(path)[1].lower() in FFMPEG_EXTS:
        # libsndfile has no AAC/MP4 decoder: ffmpeg decodes (and resamples) these
        x, sr = decode_ffmpeg(path, sr=target_sr, utt=utt)[:, None], target_sr
    else:
        x, sr = _read_sndfile(path, utt)
    return checked_mono(x, sr, path, utt, target_sr, resample_ok, min_samples)


def checked_mono(x: np.ndarray, sr: int, path: str, utt: str | None, target_sr: int, resample_ok: bool,
                  min_samples: int) -> np.ndarray:
    """Decoded (samples x channels) audio as load_audio returns it: mono, long enough, finite, at target_sr."""
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if len(x) < min_samples:
        raise AudioError(f"{_where(path, utt)}: audio too short ({len(x)} samples at {sr} Hz; need >= "
                         f"{min_samples}). Fix: drop this utterance from the data dir.")
    if not np.isfinite(x).all():
        raise AudioError(f"{_where(path, utt)}: audio contains NaN/inf samples. Fix: re-create the file.")
    if sr < target_sr:
        # upsampling adds no information: the mel bins above sr/2 stay empty, unlike anything seen in training
        _log.warning("%s: %d Hz audio upsampled to %d Hz: its mel bins above %d Hz are empty, so results may be "
                     "worse than on %d Hz audio", _where(path, utt), sr, target_sr, sr // 2, target_sr)
    if sr != target_sr:
        if not resample_ok:
            raise AudioError(f"{_where(path, utt)}: sample rate {sr} Hz != {target_sr} Hz and resampling is off. "
                             f"Fix: enable resampling (--resample true) or convert: sox in.wav -r {target_sr} out.wav")
        x = resample(x, sr, target_sr).astype(np.float32)
    return x


def _read_sndfile(path: str, utt: str | None):
    """(samples x channels float32, sample rate) through libsndfile, or an AudioError naming the file."""
    try:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises LibsndfileError/RuntimeError/TypeError depending on the damage
        hint = ""
        if path.lower().endswith(".mp3") and "MP3" not in sf.available_formats():
            hint = (" Your libsndfile cannot decode mp3: install soundfile>=0.12 (bundles libsndfile>=1.1) or convert "
                    "with sox/ffmpeg.")
        raise AudioError(f"{_where(path, utt)}: cannot decode audio ({e}). The file is corrupt or not audio.{hint}") \
            from e
    return x, sr


def _segment_bounds(path: str, start: float, end: float, sr: int, frames: int, utt: str | None) -> tuple[int, int]:
    """Sample range of a Kaldi ``segments`` entry (end <= 0: to the end of the recording)."""
    s0 = int(round(start * sr))
    s1 = frames if end <= 0 else int(round(end * sr))
    if not 0 <= s0 < s1 or s1 > frames + int(0.01 * sr):  # 10 ms slack for rounded end times
        raise AudioError(f"{_where(path, utt)}: segment {start:.3f}-{end:.3f} s lies outside the recording "
                         f"({frames / sr:.3f} s). Fix: correct its line in segments or drop the utterance.")
    return s0, min(s1, frames)


def audio_samples(path: str, *, target_sr: int = 16000, segment: tuple[float, float] | None = None,
                  utt: str | None = None, min_samples: int = 400) -> int:
    """Samples :func:`load_audio` / :func:`load_segment` would return, from the file header alone (no decoding).

    Raises AudioError (naming utterance and file) for a missing, unreadable, truncated or too short file."""
    if not os.path.isfile(path):
        raise AudioError(f"{_where(path, utt)}: audio file does not exist. Fix: check the corpus path in db.sh "
                         f"or re-run the corpus/data-prep stage (stage 0/1).")
    if path.lower().endswith(".wav"):
        _check_wav_truncation(path, utt)
    try:
        info = sf.info(path)
    except Exception as e:
        raise AudioError(f"{_where(path, utt)}: cannot read the audio header ({e}). The file is corrupt or not "
                         "audio.") from e
    n, sr = int(info.frames), int(info.samplerate)
    if segment is not None:
        s0, s1 = _segment_bounds(path, segment[0], segment[1], sr, n, utt)
        n = s1 - s0
    if n < min_samples:
        raise AudioError(f"{_where(path, utt)}: audio too short ({n} samples at {sr} Hz; need >= {min_samples}). "
                         "Fix: drop this utterance from the data dir.")
    if sr != target_sr:
        g = math.gcd(sr, target_sr)
        n = -(-n * (target_sr // g) // (sr // g))  # resample()'s output length: ceil(n * up / down)
    return n


def load_segment(path: str, start: float, end: float, *, target_sr: int = 16000, resample_ok: bool = True,
                 utt: str | None = None, min_samples: int = 400) -> np.ndarray:
    """The samples of ``start``..``end`` seconds of a recording (a Kaldi ``segments`` entry), decoded alone (a long
    recording is not read whole), as :func:`load_audio` returns them."""
    if not os.path.isfile(path):
        return load_audio(path, target_sr=target_sr, utt=utt)  # its error names the fix
    try:
        info = sf.info(path)
        s0, s1 = _segment_bounds(path, start, end, int(info.samplerate), int(info.frames), utt)
        x, sr = sf.read(path, start=s0, stop=s1, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:
        raise AudioError(f"{_where(path, utt)}: cannot decode audio ({e}). The file is corrupt or not audio.") from e
    return checked_mono(x, sr, path, utt, target_sr, resample_ok, min_samples)


def write_wav_atomic(path: str, x: np.ndarray, sr: int = 16000) -> None:
    """16-bit PCM mono wav written to a temp file then renamed, so readers never see half a file."""
    pcm = np.clip(np.round(np.asarray(x, dtype=np.float64) * 32767.0), -32768, 32767).astype(np.int16)
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(tmp, pcm, sr, subtype="PCM_16", format="WAV")
