"""Features: fbank values, sharded extraction + merge, skips of bad audio, atomicity, CMVN."""
import logging
import os

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from w2p import features
from w2p.data.datadir import validate_data_dir, write_data_dir
from w2p.io import read_kv


def _tone(n, sr=16000, f=300.0, seed=0):
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(np.arange(n) * 2 * np.pi * f / sr) + rng.normal(0, 0.01, n)).astype(np.float32)


def test_fbank_shape_determinism_and_kaldi_conventions():
    x = _tone(16000)
    f = features.fbank(x)
    assert f.dtype == np.float32 and f.shape == (1 + (16000 - 400) // 160, 80)  # 25 ms / 10 ms, snip_edges
    assert np.array_equal(f, features.fbank(x)), "dither 0 -> deterministic"
    assert np.isfinite(f).all()
    # a 300 Hz tone peaks in the mel bin centred near 300 Hz (bins 20 Hz-8 kHz: bin ~9-10)
    assert 8 <= int(np.argmax(f.mean(0))) <= 11
    # int16 scale as in Kaldi: doubling amplitude adds log(4) to every bin (power spectrum)
    g = features.fbank(2 * x)
    assert np.allclose(g - f, np.log(4.0), atol=1e-3)


def _datadir(tmp_path, bad=()):
    """Six utterances at 16 kHz (one at 8 kHz), optionally damaged ones listed in bad."""
    utts = {}
    for i in range(6):
        uid = f"spk{i % 2}-u{i}"
        p = str(tmp_path / "wav" / f"{uid}.wav")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        sr = 8000 if i == 5 else 16000
        sf.write(p, _tone(sr + 1600 * i, sr, seed=i), sr, subtype="PCM_16")
        utts[uid] = {"wav": p, "text": f"Sentence {i}", "spk": f"spk{i % 2}", "ref": f"Phrase {i}"}
    for uid in bad:
        os.remove(utts[uid]["wav"])
    d = str(tmp_path / "data" / "x")
    write_data_dir(d, utts)
    return d, utts


def test_extract_and_merge_two_jobs(tmp_path):
    d, utts = _datadir(tmp_path)
    out = str(tmp_path / "dump" / "x")
    for j in (1, 2):
        features.extract_job(d, out, 2, j)
    s = features.merge(d, out, 2)
    assert s["utts"] == 6 and s["skipped"] == 0
    feats = dict(kaldiio.load_scp(os.path.join(out, "feats.scp")))
    assert all(os.path.isabs(v.rsplit(":", 1)[0]) for v in read_kv(os.path.join(out, "feats.scp")).values())
    nf = read_kv(os.path.join(out, "utt2num_frames"))
    for u, meta in utts.items():
        x, sr = sf.read(meta["wav"], dtype="float32")
        ref = features.utt_features(u, meta["wav"])
        assert np.array_equal(feats[u], ref) and int(nf[u]) == ref.shape[0]
    assert feats["spk1-u5"].shape[0] == 1 + (int(16000 * (8000 + 1600 * 5) / 8000) - 400) // 160  # resampled
    assert read_kv(os.path.join(out, "ref"))["spk0-u2"] == "Phrase 2"
    assert validate_data_dir(out, "dump", check_files=True)["utts"] == 6


def test_bad_audio_is_skipped_with_a_named_warning_or_an_error(tmp_path, caplog):
    d, utts = _datadir(tmp_path, bad=("spk1-u3",))
    out = str(tmp_path / "dump" / "x")
    with caplog.at_level(logging.WARNING):
        features.extract_job(d, out, 1, 1)
    assert "skipping utterance spk1-u3" in caplog.text and "spk1-u3.wav" in caplog.text
    s = features.merge(d, out, 1, max_skip_ratio=0.5)
    assert s["utts"] == 5 and "spk1-u3" not in read_kv(os.path.join(out, "text"))
    assert "spk1-u3" in read_kv(os.path.join(out, "skipped"))
    with pytest.raises(features.FeatureError, match="1/6 utterances failed"):
        features.merge(d, out, 1, max_skip_ratio=0.1)
    from w2p.data.audio import AudioError

    with pytest.raises(AudioError, match=r"spk1-u3.*does not exist"):
        features.extract_job(d, out, 1, 1, on_error="error")


def test_wrong_sample_rate_without_resampling_is_skipped(tmp_path, caplog):
    d, _ = _datadir(tmp_path)
    out = str(tmp_path / "dump" / "x")
    with caplog.at_level(logging.WARNING):
        features.extract_job(d, out, 1, 1, resample_ok=False)
    assert "spk1-u5" in caplog.text and "8000 Hz" in caplog.text and "resampling is off" in caplog.text


def test_nan_features_are_rejected(tmp_path, monkeypatch, caplog):
    d, _ = _datadir(tmp_path)
    out = str(tmp_path / "dump" / "x")
    real = features.fbank

    def poisoned(wave, sr=16000, **kw):
        f = real(wave, sr, **kw)
        if len(wave) == 16000 + 1600 * 2:  # utterance spk0-u2
            f[3, 7] = np.inf
        return f

    monkeypatch.setattr(features, "fbank", poisoned)
    with pytest.raises(features.FeatureError, match=r"'spk0-u2'.*spk0-u2\.wav.*NaN/inf"):
        features.utt_features("spk0-u2", str(tmp_path / "wav" / "spk0-u2.wav"))
    with caplog.at_level(logging.WARNING):
        features.extract_job(d, out, 1, 1)
    assert "skipping utterance spk0-u2" in caplog.text
    s = features.merge(d, out, 1, max_skip_ratio=0.5)
    assert s["utts"] == 5


def test_killed_job_leaves_nothing_a_later_stage_would_read(tmp_path):
    d, _ = _datadir(tmp_path)
    out = str(tmp_path / "dump" / "x")
    features.extract_job(d, out, 1, 1)
    features.merge(d, out, 1)
    assert os.path.exists(os.path.join(out, "feats.scp"))
    calls = {"n": 0}

    def dies(u, path, **kw):  # a job killed after writing two utterances
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return features.utt_features(u, path, **kw)

    with pytest.raises(KeyboardInterrupt):
        features.extract_job(d, out, 1, 1, compute=dies)
    assert not os.path.exists(os.path.join(out, "feats.scp")), "stale merged scp must be gone"
    assert not os.path.exists(os.path.join(out, "data", "feats.1.scp"))
    with pytest.raises(features.FeatureError, match="job 1/1 did not finish"):
        features.merge(d, out, 1)
    from w2p.data.datadir import DataDirError

    with pytest.raises(DataDirError, match="feats.scp"):
        validate_data_dir(out, "dump", hint="run stage 2 first")
    features.extract_job(d, out, 1, 1)  # a re-run repairs it
    assert features.merge(d, out, 1)["utts"] == 6


def test_merge_removes_shards_of_a_larger_earlier_nj(tmp_path):
    d, _ = _datadir(tmp_path)
    out = str(tmp_path / "dump" / "x")
    for j in (1, 2, 3):
        features.extract_job(d, out, 3, j)
    features.merge(d, out, 3)
    features.extract_job(d, out, 1, 1)
    features.merge(d, out, 1)
    assert sorted(os.listdir(os.path.join(out, "data"))) == ["feats.1.ark", "feats.1.scp", "skipped.1",
                                                            "utt2num_frames.1"]


def test_cmvn_stats_match_numpy(tmp_path):
    d, _ = _datadir(tmp_path)
    out = str(tmp_path / "dump" / "x")
    features.extract_job(d, out, 1, 1)
    features.merge(d, out, 1)
    npz = os.path.join(out, "cmvn.npz")
    features.compute_cmvn(os.path.join(out, "feats.scp"), npz)
    allf = np.concatenate([f for _, f in kaldiio.load_scp_sequential(os.path.join(out, "feats.scp"))])
    allf = allf.astype(np.float64)
    st = np.load(npz)
    assert sorted(st.files) == ["count", "sum", "sum_square"]
    assert int(st["count"]) == allf.shape[0]
    assert np.allclose(st["sum"], allf.sum(0)) and np.allclose(st["sum_square"], (allf ** 2).sum(0))
