"""Audio sent to the server (bytes of any container) -> 16 kHz mono float32 samples, or a clear error.

WAV/FLAC/OGG (and mp3 with libsndfile >= 1.1) are read by soundfile, with w2p's checks (truncated WAV, too short,
NaN/inf); anything soundfile cannot read (the browser recorder's webm/opus, m4a...) is decoded by ffmpeg.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np

from w2p.data.audio import AudioError, load_audio

SAMPLE_RATE = 16000
# ffmpeg demuxers the server accepts (webm/opus from browsers, mp3, m4a/mp4, ogg, aac, wav, flac)
AUDIO_DEMUXERS = "matroska,webm,ogg,mp3,wav,flac,mov,mp4,m4a,3gp,aac"


class AudioDecodeError(ValueError):
    """The bytes are not audio, or a damaged/truncated file."""


def _ffmpeg_to_wav(src: str, dst: str) -> None:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise AudioDecodeError("this audio format needs ffmpeg, which is not installed on the server (apt-get "
                               "install ffmpeg); or send WAV/FLAC")
    # only audio containers: a playlist (hls, concat) could make ffmpeg read other files or URLs on our behalf
    p = subprocess.run([exe, "-nostdin", "-hide_banner", "-v", "error", "-xerror", "-protocol_whitelist", "file",
                        "-format_whitelist", AUDIO_DEMUXERS, "-i", src, "-vn", "-ac", "1",
                        "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", "-f", "wav", "-y", dst],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0 or not os.path.isfile(dst) or os.path.getsize(dst) <= 44:
        msg = (p.stderr.strip().splitlines() or ["no audio stream"])[-1]
        raise AudioDecodeError(f"not decodable audio ({msg})")


def decode_audio(data: bytes, name: str = "audio") -> np.ndarray:
    """Decode ``data`` (the bytes of an audio file called ``name`` in messages) to 16 kHz mono float32."""
    if not data:
        raise AudioDecodeError(f"{name}: empty audio (0 bytes)")
    with tempfile.TemporaryDirectory(prefix="w2p-serve-") as tmp:
        # load_audio's truncation check looks at the .wav suffix: name RIFF data so
        src = os.path.join(tmp, "in.wav" if data[:4] == b"RIFF" else "in.bin")
        with open(src, "wb") as f:
            f.write(data)
        try:
            return load_audio(src, target_sr=SAMPLE_RATE, resample_ok=True)
        except AudioError as e:
            msg = str(e).replace(src, name)
            if data[:4] == b"RIFF" or "cannot decode" not in msg:  # a damaged WAV, too short, NaN: say so
                raise AudioDecodeError(msg) from None
        dst = os.path.join(tmp, "dec.wav")
        try:
            _ffmpeg_to_wav(src, dst)
        except AudioDecodeError as e:
            e = str(e).replace(src, name).replace(tmp + os.sep, "")
            raise AudioDecodeError(f"{name}: {e}; send WAV, FLAC, MP3, OGG or WebM audio") from None
        try:
            return load_audio(dst, target_sr=SAMPLE_RATE, resample_ok=False)
        except AudioError as e:
            raise AudioDecodeError(str(e).replace(dst, name)) from None
