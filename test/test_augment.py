"""Training-data augmentation (w2p.augment, w2p.bin.augment_data_dir) and the opt-in SpecAugment config."""
from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf

from w2p import augment as A

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONF_DIR = os.path.join(ROOT, "egs", "mini_en", "w2p1", "conf")


def _peak_hz(x, sr=16000):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[int(np.argmax(spec))]


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_changes_length_and_pitch_like_sox_speed(factor):
    t = np.arange(32000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    y = A.speed_perturb(x, factor)
    assert abs(len(y) - len(x) / factor) <= 1
    assert abs(_peak_hz(y) - 440 * factor) < 2, _peak_hz(y)
    assert np.array_equal(A.speed_perturb(x, 1.0), x)


def test_noise_kinds_spectra_and_snr_is_exact():
    rng = np.random.default_rng(0)
    x = np.sin(np.arange(16000) / 7.0) * np.hanning(16000)
    others = [rng.standard_normal(5000) * 0.1, rng.standard_normal(9000)]
    for kind, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0), ("babble", None)):
        n = A.make_noise(kind, len(x), np.random.default_rng(1), others)
        assert len(n) == len(x) and abs(n.std() - 1) < 1e-6
        assert np.array_equal(n, A.make_noise(kind, len(x), np.random.default_rng(1), others))  # seeded
        if slope is not None:  # power spectrum ~ f^slope between 100 Hz and 4 kHz
            p = np.abs(np.fft.rfft(n)) ** 2
            f = np.fft.rfftfreq(len(n), 1 / 16000)
            band = (f > 100) & (f < 4000)
            fit = np.polyfit(np.log10(f[band]), np.log10(p[band] + 1e-20), 1)[0]
            assert abs(fit - slope) < 0.25, (kind, fit)
        for snr in (0.0, 7.3, 20.0):
            y = A.add_noise(x, n, snr).astype(np.float64)
            got = 10 * np.log10((x ** 2).mean() / ((y - x) ** 2).mean())
            assert abs(got - snr) < 1e-3, (kind, snr, got)
    with pytest.raises(A.AugmentError, match="babble noise needs other utterances"):
        A.make_noise("babble", 10, rng, [])


def test_synthetic_rir_decays_by_60_db_in_rt60_and_reverberation_keeps_length_and_power():
    for rt60 in (0.3, 0.7):
        h = A.synthetic_rir(np.random.default_rng(3), rt60)
        assert h[0] == 1.0 and len(h) == int(1.2 * rt60 * 16000)
        # Schroeder backward integration; T20 (-5 to -25 dB) extrapolated to 60 dB
        tail = h.copy()
        tail[0] = 0
        edc = 10 * np.log10(np.cumsum(tail[::-1] ** 2)[::-1] / (tail ** 2).sum())
        t5, t25 = np.argmax(edc < -5), np.argmax(edc < -25)
        est = 3 * (t25 - t5) / 16000
        assert abs(est - rt60) < 0.15 * rt60, (rt60, est)
        drr = 10 * np.log10(1 / (tail ** 2).sum())
        assert -3.01 <= drr <= 6.01
    x = np.random.default_rng(4).standard_normal(8000)
    y = A.reverberate(x, h)
    assert len(y) == len(x) and abs((y.astype(float) ** 2).mean() / (x ** 2).mean() - 1) < 1e-4
    assert np.corrcoef(x, y)[0, 1] < 0.99
    imp = np.zeros(len(h) + 100)
    imp[0] = 1
    r = A.reverberate(imp, h)  # the impulse response itself (up to the power rescaling)
    np.testing.assert_allclose(r[:len(h)] / r[0], h, atol=1e-4)


def _data_dir(tmp_path, n=4):
    from w2p.data.datadir import write_data_dir

    texts = ["turn on the lights", "what time is it", "I left my umbrella", "the cat sat on the mat"][:n]
    utts = {}
    for i, t in enumerate(texts):
        p = tmp_path / f"u{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(p), t], check=True, capture_output=True)
        utts[f"spk{i % 2}-utt{i}"] = {"wav": str(p), "text": t, "spk": f"spk{i % 2}"}
    d = str(tmp_path / "data" / "train")
    write_data_dir(d, utts)
    return d


def test_augment_data_dir_is_seeded_split_independent_and_feeds_stage_2(tmp_path):
    import yaml

    from w2p.bin import augment_data_dir, make_fbank
    from w2p.data.datadir import validate_data_dir
    from w2p.io import read_kv

    src = _data_dir(tmp_path)
    conf = str(tmp_path / "aug.yaml")
    with open(conf, "w") as f:
        yaml.safe_dump({"speed_perturb": [0.9, 1.0, 1.1], "noise": {"prob": 0.7}, "reverb": {"prob": 0.5}}, f)
    a, b = str(tmp_path / "data" / "train_aug"), str(tmp_path / "b")
    assert augment_data_dir.main(["--src", src, "--dst", a, "--config", conf, "--seed", "2"]) == 0
    for j in (1, 2):
        assert augment_data_dir.main(["--src", src, "--dst", b, "--config", conf, "--seed", "2", "--nj", "2",
                                      "--job", str(j)]) == 0
    assert augment_data_dir.main(["--src", src, "--dst", b, "--config", conf, "--seed", "2", "--finalize"]) == 0
    validate_data_dir(a, "data", check_files=True)
    wa, wb = read_kv(os.path.join(a, "wav.scp")), read_kv(os.path.join(b, "wav.scp"))
    aug = read_kv(os.path.join(a, "utt2aug"))
    assert read_kv(os.path.join(b, "utt2aug")) == aug and len(aug) == 12
    src_wav, spk = read_kv(os.path.join(src, "wav.scp")), read_kv(os.path.join(a, "utt2spk"))
    text_src, text = read_kv(os.path.join(src, "text")), read_kv(os.path.join(a, "text"))
    for u, p in wa.items():
        m = re.match(r"sp(0\.9|1\.1)-(.*)", u)
        orig = m.group(2) if m else u
        assert text[u] == text_src[orig]
        x = sf.read(p, dtype="float32")[0]
        assert np.array_equal(x, sf.read(wb[u], dtype="float32")[0])  # same seed, any job split: same audio
        if m:
            f = float(m.group(1))
            assert spk[u] == f"sp{f:g}-" + spk[orig] and aug[u].startswith(f"speed={f:g}")
            n0 = sf.info(src_wav[orig]).frames * 16000 / sf.info(src_wav[orig]).samplerate  # (22.05 kHz files)
            assert abs(len(x) - n0 / f) <= 3  # two resamplings' rounding
        else:  # keep_clean: the 1.0 copy is the original file
            assert p == src_wav[u] and aug[u] == "speed=1"
    assert any("noise=" in v for v in aug.values()) and any("rt60=" in v for v in aug.values())
    # another seed: other draws; another config on the same dir: refused
    c = str(tmp_path / "c")
    assert augment_data_dir.main(["--src", src, "--dst", c, "--config", conf, "--seed", "3"]) == 0
    assert read_kv(os.path.join(c, "utt2aug")) != aug
    assert augment_data_dir.main(["--src", src, "--dst", a, "--config", conf, "--seed", "3"]) == 1
    # stage 2 extracts features of the augmented dir like of any other
    dump = str(tmp_path / "dump")
    assert make_fbank.main(["--data_dir", str(tmp_path / "data"), "--dump_dir", dump, "--sets", "train_aug",
                            "--cmvn_set", "train_aug"]) == 0
    assert len(read_kv(os.path.join(dump, "train_aug", "feats.scp"))) == 12


def test_augment_config_errors(tmp_path):
    import yaml

    from w2p.bin import augment_data_dir

    src = _data_dir(tmp_path, n=2)
    for bad, msg in (({"speed_perturb": [1.0]}, "changes nothing"),
                     ({"noise": {"prob": 0.5}}, "keep_clean"),
                     ({"speed_perturb": [0.9, 1.0], "noise": {"prob": 2}}, "prob in"),
                     ({"speed_perturb": [0.9, 1.0], "noise": {"prob": 0.5, "kinds": ["traffic"]}}, "traffic"),
                     ({"speed_perturb": [0.9, 1.0], "noise": {"snr": 3}}, "unknown key")):
        conf = str(tmp_path / "bad.yaml")
        with open(conf, "w") as f:
            yaml.safe_dump(bad, f)
        with pytest.raises(A.AugmentError, match=msg):
            augment_data_dir.main(["--src", src, "--dst", str(tmp_path / "x"), "--config", conf, "--verbose"])


def test_recipe_augment_config_loads_and_specaug_config_turns_spec_augment_on():
    import torch

    from w2p.config import load_config
    from w2p.models.encoder import build_encoder
    from w2p.train import config as train_config

    conf = A.check_config(load_config(os.path.join(CONF_DIR, "tuning", "augment.yaml"), defaults=A.DEFAULTS))
    assert conf["speed_perturb"] == [0.9, 1.0, 1.1] and conf["noise"]["prob"] > 0
    base = os.path.join(CONF_DIR, "train_wav2prompt.yaml")
    assert "specaug" not in train_config.load_config(base)["model_conf"]["encoder"]  # off by default
    tc = train_config.load_config([base, os.path.join(CONF_DIR, "tuning", "specaug.yaml")])
    enc_conf = tc["model_conf"]["encoder"]
    assert enc_conf["num_blocks"] == 4  # the layer only adds specaug
    enc = build_encoder(enc_conf).train()
    x, lens = torch.randn(2, 300, 80) + 5, torch.tensor([300, 250])
    torch.manual_seed(0)
    y1 = enc.specaug(x, lens)
    torch.manual_seed(0)
    assert torch.equal(y1, enc.specaug(x, lens))  # deterministic for the trainer's seed
    zero_bins = (y1[0] == 0).all(0).sum()
    assert 0 < zero_bins <= 2 * 27 and (y1[0] == 0).all(1).sum() <= 2 * 40
    assert torch.equal(enc.eval().specaug(x, lens), x)  # training only
    # the multi-engine / open-vocabulary config differs from the default only where the README says it does
    rob = train_config.load_config(os.path.join(CONF_DIR, "tuning", "train_wav2prompt_robust.yaml"))
    dflt = train_config.load_config(base)
    assert rob["model_conf"]["tok_candidates"] == "sampled" and dflt["model_conf"]["ctc_warmup_steps"] == 1200
    changed = {k for k in set(rob["model_conf"]) | set(dflt["model_conf"])
               if rob["model_conf"].get(k) != dflt["model_conf"].get(k)}
    assert changed == {"tok_candidates", "tok_num_sampled"}, changed
    assert {k: v for k, v in rob.items() if k != "model_conf"} == {k: v for k, v in dflt.items() if k != "model_conf"}


def test_recipe_stages_0_to_2_with_other_engines_and_augmentation(tmp_path):
    """run.sh --augment_config: stage 2 writes data/train_aug and the features of it (not of data/train), CMVN on it;
    the corpus of stage 0 comes from three engines (--local_data_opts '--engines ...')."""
    import json

    from w2p.io import read_kv

    mini = os.path.join(ROOT, "egs", "mini_en", "w2p1")
    c, d, u = tmp_path / "corpus", tmp_path / "data", tmp_path / "dump"
    cmd = (f"./run.sh --nj 2 --max_utts 2 --tasks st --local_data_opts '--corpus_dir {c} --engines "
           f"espeak,flite,festival --heldout 0' --test_sets test --datadir {d} --dumpdir {u} "
           f"--augment_config conf/tuning/augment.yaml --stop_stage 2")
    p = subprocess.run(["bash", "-c", cmd], cwd=mini, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "augmenting" in p.stdout and "with espeak,flite,festival" in p.stdout
    assert json.load(open(c / "stats.json"))["engines"]
    assert len(read_kv(d / "train" / "wav.scp")) == 2 and len(read_kv(d / "train_aug" / "wav.scp")) == 6
    aug = u / "fbank" / "train_aug"
    assert len(read_kv(aug / "feats.scp")) == 6 and (aug / "cmvn.npz").exists()
    assert not (u / "fbank" / "train").exists()  # the augmented set replaces it from stage 2 on
    assert len(read_kv(u / "fbank" / "dev" / "feats.scp")) == 2
