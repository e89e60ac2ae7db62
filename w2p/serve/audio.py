"""Audio sent to the server (bytes of any container) -> 16 kHz mono float32 samples, or a clear error.

WAV/FLAC/OGG (and mp3 with libsndfile >= 1.1) are read by soundfile, with w2p's checks (truncated WAV, too short,
NaN/inf); anything soundfile cannot read (the browser recorder's webm/opus, m4a...) is decoded by ffmpeg.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from w2p.data.audio import AudioError, checked_mono, decode_ffmpeg, load_audio

SAMPLE_RATE = 16000


class AudioDecodeError(ValueError):
    """The bytes are not audio, or a damaged/truncated file."""


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
        try:
            x = decode_ffmpeg(src, sr=SAMPLE_RATE)
        except AudioError as e:
            raise AudioDecodeError(f"{name}: not decodable audio ({str(e).replace(repr(src), repr(name))}); send "
                                   "WAV, FLAC, MP3, OGG or WebM audio") from None
        try:
            return checked_mono(x[:, None], SAMPLE_RATE, name, None, SAMPLE_RATE, False, 400)
        except AudioError as e:
            raise AudioDecodeError(str(e)) from None
