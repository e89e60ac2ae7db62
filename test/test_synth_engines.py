"""The synthesis engines (w2p.synth.engines): every installed voice speaks, speed and pitch act, a missing engine is
a clear error, and the multi-engine corpus (make_corpus --engines) is deterministic while the default is unchanged."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from w2p.synth import engines as E

TEXT = "I left my umbrella at the office yesterday"  # 8 words


def _speechlike(x: np.ndarray, what: str) -> None:
    """Non-silent, plausible duration for 8 words, and it varies like speech (pauses, syllables), not a tone."""
    dur = len(x) / E.SR
    assert 1.0 < dur < 6.0, f"{what}: {dur:.2f} s for 8 words"
    assert float(np.sqrt((x ** 2).mean())) > 0.01, f"{what}: silent"
    frames = x[: len(x) // 160 * 160].reshape(-1, 160)
    db = 10 * np.log10((frames ** 2).mean(1) + 1e-10)
    assert np.percentile(db, 95) - np.percentile(db, 10) > 15, f"{what}: no energy modulation"


@pytest.mark.parametrize("name", ["espeak", "flite", "festival"])
def test_every_voice_of_every_engine_speaks(name):
    eng = E.get_engine(name)
    eng.check()  # the installer puts all three engines in; CI must not skip this
    voices = eng.voices()
    want = {"espeak": 192, "flite": 5, "festival": 3}[name]
    assert len(voices) == want, voices
    # espeak: one voice per accent (192 would be slow); the others: all their voices
    pick = [v for v in voices if v.endswith("+m3")] if name == "espeak" else voices
    for v in pick:
        _speechlike(eng.synthesize(TEXT, v), f"{name}/{v}")


@pytest.mark.parametrize("name,voice", [("espeak", "en-us+f2"), ("flite", "slt"), ("festival", "kal_diphone")])
def test_speed_and_pitch_factors(name, voice, tmp_path):
    eng = E.get_engine(name)
    base = eng.synthesize(TEXT, voice)
    fast = eng.synthesize(TEXT, voice, speed=1.3)
    slow = eng.synthesize(TEXT, voice, speed=0.8)
    r_fast, r_slow = len(fast) / len(base), len(slow) / len(base)
    assert 0.6 < r_fast < 0.9 and 1.1 < r_slow < 1.5, (r_fast, r_slow)
    out = str(tmp_path / "p.wav")
    high = eng.synthesize(TEXT, voice, pitch=1.12, out_wav=out)
    assert abs(len(high) / len(base) - 1) < 0.08  # pitch keeps the duration
    assert not np.array_equal(high[: len(base)], base[: len(high)])

    def f0(x):  # median autocorrelation pitch of the loud frames
        fr = x[: len(x) // 640 * 640].reshape(-1, 640)
        fr = fr[(fr ** 2).mean(1) > 0.3 * (fr ** 2).mean(1).max()]
        lags = []
        for w in fr:
            ac = np.correlate(w, w, "full")[639:]
            lo, hi = 16000 // 400, 16000 // 60
            lags.append(lo + int(np.argmax(ac[lo:hi])))
        return 16000 / np.median(lags)

    assert f0(high) > f0(base) * 1.04, (f0(high), f0(base))
    y, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and y.ndim == 1 and np.abs(y - high).max() < 1e-3


def test_missing_engine_names_the_apt_package(monkeypatch):
    monkeypatch.setattr(E.shutil, "which", lambda exe: None)
    with pytest.raises(E.EngineMissing, match="apt-get install flite"):
        E.get_engine("flite").synthesize(TEXT, "slt")
    with pytest.raises(E.EngineMissing, match="apt-get install festival festvox-kallpc16k"):
        E.parse_engines("festival")
    assert "missing (apt-get install espeak-ng)" == E.describe()["espeak"]
    monkeypatch.undo()
    with pytest.raises(E.EngineMissing, match="no voice 'nosuch'.*apt-get install flite"):
        E.get_engine("flite").synthesize(TEXT, "nosuch")
    with pytest.raises(ValueError, match="unknown synthesis engine 'mbrola'"):
        E.parse_engines("espeak,mbrola")


def test_default_corpus_plan_is_unchanged_and_multi_engine_corpus_works(tmp_path):
    from w2p.data import corpora
    from w2p.synth import make_corpus as mk

    # the default (espeak only) plan: texts, voices, ids as before the engines existed (digest taken on main)
    c0 = str(tmp_path / "c0")
    assert mk.main(["--corpus", c0, "--max_utts", "3", "--seed", "7", "--engines", "espeak", "--job", "1"]) == 0
    cfg = json.load(open(os.path.join(c0, ".config.json")))
    assert cfg == {"seed": 7, "max_utts": 3, "plan_sha256": "92e3cfb68097d8bf"}

    c = str(tmp_path / "multi")
    args = ["--corpus", c, "--max_utts", "1", "--seed", "3", "--engines", "espeak,flite,festival"]
    assert mk.main(args) == 0 and mk.main(args + ["--finalize"]) == 0
    stats = json.load(open(os.path.join(c, "stats.json")))
    assert set(stats["engines"]) == {"espeak", "flite", "festival"}, stats["engines"]
    recs = [json.loads(x) for f in sorted(os.listdir(c)) if f.endswith(".jsonl") for x in open(os.path.join(c, f))]
    for r in recs:
        assert r["spk"] == E.speaker_id(r["engine"], r["voice"]) and r["id"].startswith(r["spk"] + "-")
        assert E.SPEED[0] <= r["speed"] <= E.SPEED[1] and E.PITCH[0] <= r["pitch"] <= E.PITCH[1]
        x, sr = sf.read(r["wav"], dtype="float32")
        assert sr == 16000 and abs(len(x) / sr - r["dur"]) < 1e-3 and np.abs(x).max() > 0.05
    utts, _ = corpora.prepare_mini_en(c, "train")
    assert len(utts) == 1
    # same seed and engines -> the same plan; another engine list is refused on the same dir
    key = [(u["id"], u["voice"], u["speed"], u["pitch"]) for u in mk.plan(3, 1, c, ("espeak", "flite", "festival"))]
    assert key == [(u["id"], u["voice"], u["speed"], u["pitch"]) for u in mk.plan(3, 1, c, ("espeak", "flite",
                                                                                          "festival"))]
    assert sorted(k[0] for k in key) == sorted(r["id"] for r in recs)
    with pytest.raises(SystemExit, match="remove"):
        mk.main(["--corpus", c, "--max_utts", "1", "--seed", "3", "--engines", "flite"])
    with pytest.raises(SystemExit, match="apt-get install|unknown synthesis engine"):
        mk.main(["--corpus", str(tmp_path / "x"), "--engines", "espeak,mbrola"])


def test_info_lists_the_engines_and_their_voices():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "w2p.info"], capture_output=True, text=True, check=True).stdout
    lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("engine ")}
    assert set(lines) == {"espeak", "flite", "festival"}, out
    assert "192 voices" in lines["espeak"] and "slt" in lines["flite"] and "cmu_us_slt_arctic_hts" in lines["festival"]


def test_festival_batch_equals_one_by_one(tmp_path):
    """make_corpus runs festival in batches (one process, voices switched inside): the same audio as alone."""
    eng = E.get_engine("festival")
    jobs = [("What time is it now", "kal_diphone", 1.1, 1.0, str(tmp_path / "a.wav")),
            ("Turn on the lights", "cmu_us_slt_arctic_hts", 0.9, 1.05, str(tmp_path / "b.wav")),
            ("What time is it now", "ked_diphone", 1.0, 0.95, str(tmp_path / "c.wav"))]
    eng.synthesize_many(jobs)
    for text, voice, speed, pitch, out in jobs:
        alone = eng.synthesize(text, voice, speed, pitch, out_wav=str(tmp_path / "alone.wav"))
        assert open(out, "rb").read() == open(tmp_path / "alone.wav", "rb").read(), voice
        assert 0.5 < len(alone) / E.SR < 4 and np.abs(alone).max() > 0.05
