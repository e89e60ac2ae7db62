#!/usr/bin/env python3
"""Small stand-ins for the local corpora of this recipe, in each corpus' own on-disk layout and audio format,
spoken by espeak-ng: the test suite runs the whole recipe on them, and a user can try the recipe without a
download (README, "Local corpora"):

  <out>/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac
                                                           + <spk>-<chapter>.trans.txt (upper case, no punctuation)
  <out>/europarl-st/en/audios/<speech id>.m4a              long recordings (AAC in MP4, 44.1 kHz, via ffmpeg)
  <out>/europarl-st/en/{fr,es}/{train,dev,test}/segments.lst (<speech id> <start> <end>), segments.{en,fr,es},
                                                           speeches.lst, speeches.{en,<tgt>}, speakers.lst
  <out>/slurp/dataset/slurp/{train,devel,test}.jsonl       SLURP records (sentence, intent, annotation, recordings)
  <out>/slurp/audio/slurp_real/audio-<id>[-headset].flac

The Europarl-ST train split of en->fr carries one segment timed past the end of its recording, which stage 1
skips with a log line (its other splits are clean). Then: LIBRISPEECH=<out>/LibriSpeech EUROPARL_ST=<out>/europarl-st
SLURP=<out>/slurp ./run.sh ... (the test passes the smoke configs).

  python local/make_fixtures.py --out fixtures [--train_utts 24]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf

from w2p.data.audio import FFMPEG_FIX, ffmpeg_exe, resample
from w2p.errors import cli_main
from w2p.synth.espeak import synthesize

# ASR sentences (LibriSpeech-like read speech, short for a CPU budget)
ASR = ["the cat sat on the mat", "she opened the old wooden door", "we walked along the river at night",
       "he read the letter twice", "the children played in the garden", "a cold wind came from the north",
       "my brother lives in a small town", "they sold the house last year", "the ship sailed into the harbour",
       "i will meet you at the station", "the light in the window was green", "her voice was soft and clear",
       "the dog ran across the field", "we ate bread and cheese for lunch", "the rain stopped before noon",
       "he found the key under the stone", "the book lay open on the table", "they sang an old song together",
       "the road turned to the left", "she wrote a long letter home", "the fire burned all night",
       "a bird sat on the high wall", "the boy climbed the tall tree", "the market opens at nine"]
# Europarl-ST-like parliamentary sentences with their French and Spanish translations
EP = [("Madam President, I support this report.", "Madame la Présidente, je soutiens ce rapport.",
       "Señora Presidenta, apoyo este informe."),
      ("We must protect our citizens.", "Nous devons protéger nos citoyens.",
       "Debemos proteger a nuestros ciudadanos."),
      ("The Commission has made a proposal.", "La Commission a fait une proposition.",
       "La Comisión ha hecho una propuesta."),
      ("This is a very important question.", "C'est une question très importante.",
       "Esta es una cuestión muy importante."),
      ("I would like to thank the rapporteur.", "Je voudrais remercier le rapporteur.",
       "Quisiera dar las gracias al ponente."),
      ("The vote will take place tomorrow.", "Le vote aura lieu demain.", "La votación tendrá lugar mañana."),
      ("We need more energy from the sun.", "Nous avons besoin de plus d'énergie solaire.",
       "Necesitamos más energía del sol."),
      ("The debate is closed.", "Le débat est clos.", "Se cierra el debate."),
      ("Europe must act now.", "L'Europe doit agir maintenant.", "Europa debe actuar ahora."),
      ("Thank you for your attention.", "Merci de votre attention.", "Gracias por su atención."),
      ("The budget is too small.", "Le budget est trop petit.", "El presupuesto es demasiado pequeño."),
      ("We welcome this agreement.", "Nous saluons cet accord.", "Acogemos con satisfacción este acuerdo.")]
# SLURP-like commands: (sentence, intent, annotation)
SLU = [("wake me up at seven am", "alarm_set", "wake me up at [time : seven am]"),
       ("play some jazz music", "play_music", "play some [music_genre : jazz] music"),
       ("what is the weather in paris", "weather_query", "what is the weather in [place_name : paris]"),
       ("turn off the lights", "iot_hue_lightoff", "turn off the lights"),
       ("set an alarm for six", "alarm_set", "set an alarm for [time : six]"),
       ("play music by the beatles", "play_music", "play music by [artist_name : the beatles]"),
       ("will it rain tomorrow", "weather_query", "will it rain [date : tomorrow]"),
       ("switch the lights off please", "iot_hue_lightoff", "switch the lights off please")]
VOICES = [("en-us", "m3"), ("en-gb", "f2"), ("en-us", "f4"), ("en-gb-x-rp", "m1"), ("en-us-nyc", "m7")]


def say(text: str, k: int, sr: int = 16000) -> np.ndarray:
    voice, variant = VOICES[k % len(VOICES)]
    return synthesize(text, voice, variant, 160 + 7 * (k % 4), 45 + 5 * (k % 3), sr=sr)


def librispeech(root: str, train_utts: int) -> None:
    sets = {"train-clean-100": ASR[:train_utts], "dev-clean": ASR[-4:-2] + ASR[:1], "test-clean": ASR[-3:]}
    for subset, sents in sets.items():
        per_spk = {}
        for i, s in enumerate(sents):  # 4 chapters of 2 speakers, LibriSpeech ids <spk>-<chapter>-<nnnn>
            spk, ch = (103, 1240) if i % 2 == 0 else (1988, 147956)
            per_spk.setdefault((spk, ch + (i % 4 >= 2)), []).append((i, s))
        for (spk, ch), items in per_spk.items():
            d = os.path.join(root, subset, str(spk), str(ch))
            os.makedirs(d, exist_ok=True)
            lines = []
            for n, (i, s) in enumerate(items):
                uid = f"{spk}-{ch}-{n:04d}"
                sf.write(os.path.join(d, f"{uid}.flac"), say(s, spk + i), 16000, format="FLAC", subtype="PCM_16")
                lines.append(f"{uid} {s.upper()}")
            with open(os.path.join(d, f"{spk}-{ch}.trans.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")


def europarl_st(root: str, ffmpeg: str) -> None:
    """Speeches of 2-3 sentences with pauses, one m4a each; segments.lst times from the synthesised lengths."""
    splits = {"train": [(0, 1, 2), (3, 4, 11), (5, 6, 7, 9)], "dev": [(8, 9)], "test": [(10, 11), (1, 8)]}
    adir = os.path.join(root, "en", "audios")
    os.makedirs(adir, exist_ok=True)
    sr = 44100
    for split, speeches in splits.items():
        segs, spk_lines, sp_lines = [], [], []
        for j, sent_ids in enumerate(speeches):
            sid = f"en.2009{10 + j:02d}{14 + len(split):02d}.{j + 3}.3-{100 + 7 * j + len(split):03d}"
            pause = np.zeros(int(0.4 * sr), np.float32)
            parts, t = [pause], len(pause) / sr
            for k in sent_ids:
                x = resample(say(EP[k][0], k + j), 16000, sr).astype(np.float32)
                segs.append((sid, round(t, 2), round(t + len(x) / sr, 2), k))
                parts += [x, pause]
                t += (len(x) + len(pause)) / sr
            wav = np.concatenate(parts)
            m4a = os.path.join(adir, f"{sid}.m4a")
            p = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "f32le", "-ar", str(sr), "-ac", "1",
                                "-i", "-", "-c:a", "aac", "-b:a", "96k", m4a], input=wav.tobytes(),
                               capture_output=True)
            if p.returncode:
                raise SystemExit(f"ffmpeg could not write {m4a}: {p.stderr.decode(errors='replace')}")
            sp_lines.append(sid)
            spk_lines.append(f"speaker{j}")
        for li, tgt in ((1, "fr"), (2, "es")):
            d = os.path.join(root, "en", tgt, split)
            os.makedirs(d, exist_ok=True)
            rows = list(segs)
            if split == "train" and tgt == "fr":  # one mis-timed segment: ends after its recording
                rows.append((segs[0][0], 30.0, 33.5, 0))
            with open(os.path.join(d, "segments.lst"), "w") as f:
                f.writelines(f"{s} {a:.2f} {b:.2f}\n" for s, a, b, _ in rows)
            for lang, idx in (("en", 0), (tgt, li)):
                with open(os.path.join(d, f"segments.{lang}"), "w", encoding="utf-8") as f:
                    f.writelines(EP[k][idx] + "\n" for *_, k in rows)
                with open(os.path.join(d, f"speeches.{lang}"), "w", encoding="utf-8") as f:
                    f.writelines(" ".join(EP[k][idx] for s2, *_, k in segs if s2 == s) + "\n" for s in sp_lines)
            with open(os.path.join(d, "speeches.lst"), "w") as f:
                f.writelines(s + "\n" for s in sp_lines)
            with open(os.path.join(d, "speakers.lst"), "w") as f:
                f.writelines(s + "\n" for s in spk_lines)


def slurp(root: str) -> None:
    ddir, adir = os.path.join(root, "dataset", "slurp"), os.path.join(root, "audio", "slurp_real")
    os.makedirs(ddir, exist_ok=True)
    os.makedirs(adir, exist_ok=True)
    splits = {"train": [0, 1, 2, 3], "devel": [4], "test": [5, 6, 7]}
    for split, ids in splits.items():
        with open(os.path.join(ddir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            for i in ids:
                sent, intent, ann = SLU[i]
                scen, act = intent.split("_", 1)
                recs = [f"audio-{1490000000 + i}.flac"] + ([f"audio-{1490000000 + i}-headset.flac"] if i < 2 else [])
                for k, r in enumerate(recs):
                    sf.write(os.path.join(adir, r), say(sent, i + 3 * k), 16000, format="FLAC", subtype="PCM_16")
                f.write(json.dumps({"slurp_id": 9000 + i, "sentence": sent, "sentence_annotation": ann,
                                    "intent": intent, "action": act, "scenario": scen,
                                    "recordings": [{"file": r, "wer": 0.0, "ent_wer": 0.0, "status": "correct"}
                                                   for r in recs]}) + "\n")


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--train_utts", type=int, default=16, help="LibriSpeech train-clean-100 utterances (<= 24)")
    a = ap.parse_args(argv)
    ffmpeg = ffmpeg_exe()
    if ffmpeg is None:
        raise SystemExit(f"the Europarl-ST fixture is m4a, written with ffmpeg: {FFMPEG_FIX}")
    librispeech(os.path.join(a.out, "LibriSpeech"), min(a.train_utts, len(ASR)))
    europarl_st(os.path.join(a.out, "europarl-st"), ffmpeg)
    slurp(os.path.join(a.out, "slurp"))
    print(f"fixtures written under {a.out}: LibriSpeech/ europarl-st/ slurp/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
