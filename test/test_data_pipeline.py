"""The scalable data path: packed dataset metadata, lazy reads by ark offset, bucketing from utt2num_frames, the
DataLoader with workers, raw-audio dumps (fbank on the fly == the dumped fbank) and the data benchmark."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import SENTENCES, TINY_ENCODER

from w2p import features
from w2p.bin import make_fbank
from w2p.data.audio import load_audio
from w2p.data.datadir import spk2utt_from_utt2spk, validate_data_dir, write_data_dir
from w2p.io import read_kv, write_kv
from w2p.train import dataset as dsmod
from w2p.train.dataset import DumpDataset, IntLists, StringTable, batch_loader, collate
from w2p.train.sampler import BucketSampler, bucket_batches, bucket_batches_np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """data/{train,dev} of espeak-ng speech (22.05 kHz wav, one flac at 16 kHz), dumped twice by stage 2:
    dump/fbank (features) and dump/raw (--feats_type raw)."""
    root = tmp_path_factory.mktemp("speech")
    wav_dir = root / "wav"
    wav_dir.mkdir()
    sets = {"train": SENTENCES[:8], "dev": SENTENCES[8:11]}
    for name, sents in sets.items():
        utts = {}
        for i, text in enumerate(sents):
            uid = f"spk{i % 2}-{name}{i:02d}"
            p = wav_dir / f"{uid}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(p), text], check=True, capture_output=True)
            if i == 0:  # one flac at 16 kHz (LibriSpeech's format)
                x = load_audio(str(p))
                p = wav_dir / f"{uid}.flac"
                sf.write(str(p), x, 16000, subtype="PCM_16")
            utts[uid] = {"wav": str(p), "text": text, "spk": f"spk{i % 2}"}
        write_data_dir(str(root / "data" / name), utts)
    for kind in ("fbank", "raw"):
        assert make_fbank.main(["--data_dir", str(root / "data"), "--dump_dir", str(root / "dump" / kind), "--sets",
                                "train", "dev", "--nj", "2", "--cmvn_set", "train", "--feats_type", kind]) == 0
    return root


def test_num_frames_is_the_fbank_frame_count():
    for n in (399, 400, 401, 559, 560, 16000, 16161, 192000):
        assert features.num_frames(n) == features.fbank(np.zeros(n, np.float32) + 1e-3).shape[0], n


def test_packed_tables_and_numpy_bucketing_equal_their_oracles():
    words = ["a", "bé", "", "ünïcode x", "z" * 300]
    t = StringTable(words)
    assert list(t) == words and len(t) == 5 and t[-1] == words[-1]
    srt = StringTable(sorted(words))
    assert all(srt.index(w) == sorted(words).index(w) for w in words)
    with pytest.raises(KeyError):
        srt.index("nope")
    lists = [[1, 2, 3], [], [70000], list(range(50))]
    il = IntLists(lists)
    assert [il[i] for i in range(len(il))] == lists and il.flat.dtype == np.int32
    rng = np.random.default_rng(0)
    for trial in range(30):
        lengths = rng.integers(1, 500, int(rng.integers(1, 300))).tolist()
        kw = dict(batch_frames=int(rng.integers(200, 4000)), max_batch_size=[None, 7][trial % 2],
                  min_batch_size=int(rng.integers(1, 4)))
        want = bucket_batches(lengths, **kw)
        got = bucket_batches_np(np.array(lengths, np.int32), **kw)
        assert [b.tolist() for b in got] == want, trial


def test_lazy_dataset_reads_by_offset_and_equals_the_preloaded_one(tiny_recipe, monkeypatch):
    d = f"{tiny_recipe}/dump/fbank/train"
    pre = DumpDataset(d, preload=True)
    monkeypatch.setattr(dsmod, "PRELOAD_AUTO_MAX_BYTES", 1000)  # auto: this set is now "large"
    lazy = DumpDataset(d)
    assert pre.preloaded and not lazy.preloaded and lazy.feats is None
    # packed metadata: the ark named once, the utterances by (file index, byte offset)
    assert lazy._ark_files == [os.path.join(d, "feats.ark")] and lazy._ark_off.dtype == np.int64
    assert lazy.lengths().tolist() == [int(v) for v in read_kv(f"{d}/utt2num_frames").values()]
    for i in range(len(pre)):
        a, b = pre[i], lazy[i]
        assert a.keys() == b.keys() and a["utt_id"] == b["utt_id"] and a["llm_tokens"] == b["llm_tokens"]
        assert np.array_equal(a["feats"], b["feats"]) and a["text"] == b["text"]
    # one open file per ark and process, not one per read
    assert list(lazy._read_ark._fds) == [os.path.join(d, "feats.ark")]


def test_batched_fast_read_equals_kaldiio_and_falls_back(tiny_recipe, tmp_path):
    """__getitems__ reads float32 matrices straight into the batch; its oracle is collate() of kaldiio reads."""
    import kaldiio
    import shutil

    d = tmp_path / "train"
    shutil.copytree(f"{tiny_recipe}/dump/fbank/train", d)
    ds = DumpDataset(str(d), preload=False)
    idx = [3, 0, 7, 5]
    fast, oracle = ds.__getitems__(idx), collate([ds[i] for i in idx])
    assert fast.keys() == oracle.keys() and fast["utt_ids"] == oracle["utt_ids"]
    assert torch.equal(fast["feats"], oracle["feats"]) and torch.equal(fast["feat_lens"], oracle["feat_lens"])
    assert fast["llm_tokens"] == oracle["llm_tokens"] and fast["text"] == oracle["text"]
    # a float64 ark entry: kaldiio reads it (fallback), same values
    utt = ds.utt_ids[0]
    with kaldiio.WriteHelper(f"ark,scp:{d}/f64.ark,{tmp_path}/f64.scp") as w:
        w(utt, ds[0]["feats"].astype(np.float64))
    lines = (d / "feats.scp").read_text().splitlines()
    (d / "feats.scp").write_text("\n".join([(tmp_path / "f64.scp").read_text().strip()] + lines[1:]) + "\n")
    ds2 = DumpDataset(str(d), preload=False)
    assert torch.equal(ds2.__getitems__(idx)["feats"], fast["feats"])
    # a truncated ark is an error naming the utterance (feats.scp names the original ark: point it at the copy)
    ark = d / "feats.ark"
    ark.write_bytes(ark.read_bytes()[:-100])
    (d / "feats.scp").write_text((d / "feats.scp").read_text().replace(f"{tiny_recipe}/dump/fbank/train", str(d)))
    last = len(ds) - 1
    with pytest.raises(ValueError, match=f"utterance {ds.utt_ids[last]}: .*truncated ark"):
        DumpDataset(str(d), preload=False).__getitems__([1, last])


def test_num_workers_setting(tiny_recipe):
    from w2p.train.trainer import loader_workers

    pre = DumpDataset(f"{tiny_recipe}/dump/fbank/train", preload=True)
    lazy = DumpDataset(f"{tiny_recipe}/dump/fbank/train", preload=False)
    assert loader_workers("auto", pre, 1) == 0  # preloaded: nothing to overlap
    assert 1 <= loader_workers("auto", lazy, 1) <= 8 and loader_workers("auto", lazy, 64) == 1
    assert loader_workers(3, pre, 1) == 3
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        loader_workers(-1, lazy, 1)


def test_workers_give_the_batches_of_the_main_process(tiny_recipe):
    ds = DumpDataset(f"{tiny_recipe}/dump/fbank/train", preload=False)
    sampler = BucketSampler(ds.lengths(), 200, seed=5)
    idx = [b for b, _ in sampler.epoch_batches(2)]
    want = [collate([ds[i] for i in b]) for b in idx]
    for workers in (0, 2):
        state = torch.get_rng_state()
        got = list(batch_loader(ds, idx, num_workers=workers, seed=1))
        assert torch.equal(torch.get_rng_state(), state), "the loader must not draw from the global RNG"
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g["utt_ids"] == w["utt_ids"] and torch.equal(g["feats"], w["feats"])
            assert torch.equal(g["feat_lens"], w["feat_lens"]) and g["llm_tokens"] == w["llm_tokens"]


def test_raw_dump_gives_the_dumped_features(speech):
    for s in ("train", "dev"):
        raw, fb = speech / "dump" / "raw" / s, speech / "dump" / "fbank" / s
        assert (raw / "feats_type").read_text().strip() == "raw" and not (raw / "feats.scp").exists()
        assert not list((raw / "data").glob("*.ark"))  # no features written
        validate_data_dir(str(raw), "dump", check_files=True)
        # frame counts from the headers (resampled 22.05 kHz lengths included) == those of the extracted features
        assert read_kv(raw / "utt2num_frames") == read_kv(fb / "utt2num_frames")
        r, f = DumpDataset(str(raw), preload=False), DumpDataset(str(fb), preload=False)
        assert r.raw and list(r.utt_ids) == list(f.utt_ids)
        for i in range(len(r)):
            np.testing.assert_allclose(r[i]["feats"], f[i]["feats"], rtol=0, atol=1e-5)
    # CMVN: all of a small set, so the same stats as the fbank dump's
    a, b = np.load(speech / "dump/raw/train/cmvn.npz"), np.load(speech / "dump/fbank/train/cmvn.npz")
    assert int(a["count"]) == int(b["count"])
    np.testing.assert_allclose(a["sum"], b["sum"], rtol=1e-6)
    np.testing.assert_allclose(a["sum_square"], b["sum_square"], rtol=1e-6)
    # decoding reads raw dumps too
    from w2p.decode import load_set

    tr, tf = load_set(str(speech / "dump/raw/dev")), load_set(str(speech / "dump/fbank/dev"))
    u = tr.utt_ids[0]
    assert tr.num_frames == tf.num_frames
    torch.testing.assert_close(tr.feats(u), tf.feats(u), rtol=0, atol=1e-5)


def test_segments_in_both_dump_kinds_and_raw_cmvn_sample(speech, tmp_path):
    """A data dir with Kaldi segments (utterances = time spans of one long recording): stage 2 cuts the same spans
    for fbank and raw dumps; the raw loader decodes only the span."""
    wavs = sorted(read_kv(speech / "data/train/wav.scp").items())[:3]
    parts = [load_audio(p) for _, p in wavs]
    rec = str(tmp_path / "rec.wav")
    gap = np.zeros(8000, np.float32)
    sf.write(rec, np.concatenate([np.concatenate([x, gap]) for x in parts]), 16000, subtype="FLOAT")
    d = tmp_path / "data" / "seg"
    d.mkdir(parents=True)
    t, lines = 0.0, []
    for (u, _), x in zip(wavs, parts):
        lines.append(f"{u} rec1 {t:.4f} {t + len(x) / 16000:.4f}\n")
        t += (len(x) + len(gap)) / 16000
    (d / "segments").write_text("".join(lines))
    (d / "wav.scp").write_text(f"rec1 {rec}\n")
    (d / "text").write_text("".join(f"{u} words {i}\n" for i, (u, _) in enumerate(wavs)))
    (d / "utt2spk").write_text("".join(f"{u} {u.split('-')[0]}\n" for u, _ in wavs))
    write_kv(str(d / "spk2utt"), spk2utt_from_utt2spk(read_kv(d / "utt2spk")))
    validate_data_dir(str(d), "data", check_files=True)
    for kind in ("fbank", "raw"):
        assert make_fbank.main(["--data_dir", str(tmp_path / "data"), "--dump_dir", str(tmp_path / kind),
                                "--sets", "seg", "--nj", "2", "--feats_type", kind]) == 0
    raw, fb = DumpDataset(str(tmp_path / "raw/seg"), preload=False), DumpDataset(str(tmp_path / "fbank/seg"))
    assert read_kv(tmp_path / "raw/seg/wav.scp") == {"rec1": rec} and (tmp_path / "raw/seg/segments").exists()
    whole = load_audio(rec)
    segs = features.read_segments(str(d / "segments"))
    for i, (u, _) in enumerate(wavs):
        _, t0, t1 = segs[u]
        oracle = features.fbank(whole[int(round(t0 * 16000)):int(round(t1 * 16000))])
        assert raw[i]["utt_id"] == u and raw.lengths()[i] == oracle.shape[0] == fb.lengths()[i]
        np.testing.assert_array_equal(raw[i]["feats"], oracle)
        np.testing.assert_array_equal(fb[i]["feats"], oracle)
    # a segment past the end of the recording is an error naming the utterance and the file
    bad = tmp_path / "raw/seg/segments"
    bad.write_text(lines[0].rsplit(" ", 1)[0] + " 999.0\n" + "".join(lines[1:]))
    with pytest.raises(features.FeatureError, match=f"utterance '{wavs[0][0]}', file '{rec}'.*outside"):
        DumpDataset(str(tmp_path / "raw/seg"), preload=False)[0]
    # CMVN from a sample: evenly spaced utterances
    out = tmp_path / "cmvn.npz"
    st = features.compute_cmvn_raw(str(speech / "dump/raw/train"), str(out), max_utts=3)
    assert st["utts"] == 3 and int(np.load(out)["count"]) > 0


def _train(conf: dict, train: str, dev: str, out, timeout=300):
    p = out.parent / f"{out.name}.yaml"
    p.write_text(yaml.safe_dump(conf))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "w2p.bin.train", "--config", str(p), "--train_dir", train,
                        "--valid_dir", dev, "--output_dir", str(out)], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "metrics.jsonl") as f:
        rows = [json.loads(x) for x in f]
    return {r["step"]: r["loss"] for r in rows if r["phase"] == "train"}, [r["loss"] for r in rows
                                                                           if r["phase"] == "valid"]


def test_raw_and_fbank_dumps_train_alike_and_workers_change_nothing(speech, tmp_path):
    conf = {"model": "wav2prompt", "model_conf": {"encoder": dict(TINY_ENCODER), "cif": {"dropout": 0.0}},
            "max_epoch": 2, "max_steps": 4, "batch_frames": 500, "log_interval": 1, "save_interval_steps": 0,
            "nbest_average": 1, "preload": False, "num_workers": 0}
    fb, raw = speech / "dump/fbank", speech / "dump/raw"
    want, vwant = _train(conf, str(fb / "train"), str(fb / "dev"), tmp_path / "fbank")
    got, vgot = _train({**conf, "num_workers": 2}, str(raw / "train"), str(raw / "dev"), tmp_path / "raw")
    assert len(want) == 4 and want.keys() == got.keys()
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-4), s
    assert vgot == pytest.approx(vwant, rel=1e-4)
    assert "2 DataLoader workers" in (tmp_path / "raw" / "train.log").read_text()


def test_benchmark_prints_a_table_of_numbers(tmp_path):
    from w2p.bin import benchmark_data

    r = subprocess.run([sys.executable, "-m", "w2p.cli", "benchmark_data", "--sizes", "60,200", "--workers", "1",
                        "--frames", "40", "--distinct", "7", "--batches", "2", "--batch_frames", "2000", "--raw",
                        "--workdir", str(tmp_path), "--json", str(tmp_path / "rows.json")],
                       env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and not ln.startswith("| utts")]
    assert len(rows) == 2
    for ln in rows:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        assert len(cells) == 10
        for c in cells:
            if c != "-":
                float(c)  # every cell a number
    assert cells[5] != "-" and cells[6] != "-"  # the larger size has a slope; a worker has its memory measured
    got = json.loads((tmp_path / "rows.json").read_text())
    assert [(x["utts"], x["workers"], x.get("mode")) for x in got] == [(60, 1, None), (200, 1, None), (60, 1, "raw")]
    assert all(x["batch_s"] > 0 and x["n_workers_seen"] == x["workers"] for x in got)
    raw = [ln for ln in r.stdout.splitlines() if ln.startswith("# raw-audio dump")]
    assert len(raw) == 1 and all(float(re.search(r"workers: ([0-9.]+) utt/s", ln)[1]) > 0 for ln in raw)
    assert "281241 utterances" in r.stdout and "the goal, 10x, is" in r.stdout
    assert benchmark_data.LIBRISPEECH_960H_UTTS == 281241


def test_recipe_stage_2_feats_type_raw(tmp_path):
    """run.sh --feats_type raw: stage 2 writes raw dump dirs that later stages accept; fbank over it replaces it."""
    mini = os.path.join(REPO, "egs", "mini_en", "w2p1")
    c, d, u = tmp_path / "corpus", tmp_path / "data", tmp_path / "dump"
    base = (f"./run.sh --nj 2 --max_utts 2 --tasks st --local_data_opts '--corpus_dir {c} --heldout 0' "
            f"--test_sets test --datadir {d} --dumpdir {u} --stop_stage 2")
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.run(["bash", "-c", base + " --feats_type raw"], cwd=mini, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "feats_type raw" in p.stdout
    for s in ("train", "dev", "test", "st_fewshot", "st_test"):
        dd = u / "fbank" / s
        assert (dd / "feats_type").read_text().strip() == "raw" and not (dd / "feats.scp").exists()
        assert len(read_kv(dd / "wav.scp")) == 2
        validate_data_dir(str(dd), "dump", check_files=True)  # what stages 3-9 check
    assert int(np.load(u / "fbank" / "train" / "cmvn.npz")["count"]) == sum(
        int(v) for v in read_kv(u / "fbank" / "train" / "utt2num_frames").values())
    raw_frames = read_kv(u / "fbank" / "dev" / "utt2num_frames")
    p = subprocess.run(["bash", "-c", base + " --stage 2"], cwd=mini, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    dd = u / "fbank" / "dev"
    assert (dd / "feats.scp").exists() and not (dd / "feats_type").exists() and not (dd / "wav.scp").exists()
    assert read_kv(dd / "utt2num_frames") == raw_frames
