"""Data layer: the mini_en generator (w2p.synth: French agreement, disjointness), audio errors, validator, corpus
preparers (w2p.data.corpora) and the recipes' set mappings (egs/*/w2p1/local/data_prep.py)."""
import json
import logging
import os
import re

import numpy as np
import pytest
import soundfile as sf

from w2p.data import corpora
from w2p.data.audio import AudioError, load_audio, resample, write_wav_atomic
from w2p.data.datadir import DataDirError, validate_data_dir, write_data_dir
from w2p.io import read_kv, write_kv
from w2p.synth import lexicon as L
from w2p.synth import mini_en

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _local_script(recipe: str, name: str = "data_prep"):
    """A recipe's local/<name>.py as a module (recipe scripts are not part of the w2p package)."""
    import importlib.util

    path = os.path.join(ROOT, "egs", recipe, "w2p1", "local", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"{recipe}_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ generator
@pytest.fixture(scope="module")
def corpus():
    return mini_en.generate(0)


def test_generator_is_deterministic_and_seeded():
    small = {k: 20 for k in mini_en.ALL_SETS}
    a, b, c = (mini_en.generate(sd, small, cover=False) for sd in (3, 3, 4))
    assert [i.text for i in a["train"]] == [i.text for i in b["train"]]
    assert [i.ref for i in a["st_test"]] == [i.ref for i in b["st_test"]]
    assert [i.text for i in a["train"]] != [i.text for i in c["train"]]


def test_default_corpus_sizes_vocabulary_and_disjointness(corpus):
    assert 7600 <= len(corpus["train"]) <= 8200 and len(corpus["dev"]) == 300 and len(corpus["test"]) == 300
    for t in mini_en.TASKS:
        assert 200 <= len(corpus[f"{t}_test"]) and 100 <= len(corpus[f"{t}_fewshot"]) <= 500
    assert len(mini_en.vocabulary(corpus)) >= 800
    keys = [mini_en.norm_key(i.text) for items in corpus.values() for i in items]
    assert len(keys) == len(set(keys)), "every sentence appears in exactly one set"
    from collections import Counter

    train = Counter(w.lower().strip("?") for i in corpus["train"] for w in i.text.split())
    for name, items in corpus.items():  # task speech must be transcribable: every word heard in training
        for it in items if name != "train" else ():
            for w in it.text.split():
                assert train[w.lower().strip("?")] >= mini_en.MIN_TRAIN_COUNT, (name, it.text, w)


def test_text_normalisation_convention(corpus):
    for items in corpus.values():
        for it in items:
            assert mini_en.MIN_WORDS <= len(it.text.split()) <= mini_en.MAX_WORDS
            assert it.text[0].isupper()
            assert re.fullmatch(r"[A-Za-z' ]+\??", it.text), it.text  # no punctuation except a final '?'
    q = [i for i in corpus["sqqa_test"] if i.text.endswith("?")]
    assert len(q) > 100 and q[0].text.split()[0] in ("What", "Which", "How", "Can", "Do")


def test_task_references(corpus):
    for it in corpus["st_test"]:
        assert it.ref and it.ref[0].isupper() and not it.ref.endswith(".")
    for it in corpus["slu_test"]:
        assert it.ref in mini_en.INTENTS
        for v in it.slots.values():
            assert v.lower() in it.text.lower(), (it.text, it.slots)
    assert len(mini_en.INTENTS) >= 12
    assert len({i.ref for i in corpus["slu_test"]}) >= 12
    for it in corpus["sqa_test"]:
        assert it.question.endswith("?") and it.ref
    n = {w: i for i, w in enumerate(mini_en.NUM_WORDS)}
    checked = 0
    for it in corpus["sqqa_test"] + corpus["sqqa_fewshot"]:
        m = re.search(r"(\w+) (plus|minus|times) (\w+)\?", it.text)
        if m:
            a, op, b = n[m.group(1)], m.group(2), n[m.group(3)]
            assert n[it.ref] == {"plus": a + b, "minus": a - b, "times": a * b}[op]
            checked += 1
        m = re.search(r"capital (?:city )?of (.+?)\??$", it.text)
        if m:
            assert dict(mini_en.CAPITALS)[m.group(1)] == it.ref
    assert checked > 20


def test_sqa_answer_is_in_statement(corpus):
    for it in corpus["sqa_test"]:
        ans = it.ref.lower()
        assert ans in it.text.lower(), (it.text, it.question, it.ref)


def _np(det, en, plural, adj=None, number=None):
    noun = next(n for n in L.NOUNS if n.en == en)
    a = next(x for x in L.ADJS if x.en == adj) if adj else None
    e, f = L.noun_phrase(det, noun, plural, a, number)
    return e, L.join_fr(L.contract_de(" ".join(f).split()))


def test_french_agreement_and_elision():
    assert _np("the", "apple", True, "red") == ("the red apples", "les pommes rouges")
    assert _np("a", "man", False, "old") == ("an old man", "un vieil homme")
    assert _np("the", "tree", False) == ("the tree", "l'arbre")
    assert _np("this", "tree", False) == ("this tree", "cet arbre")
    assert _np("this", "car", True, "white") == ("these white cars", "ces voitures blanches")
    assert _np("my", "island", False) == ("my island", "mon île")
    assert _np("some", "dog", True, "big")[1] == "de grands chiens"
    assert _np("", "cake", True, "good", 3) == ("three good cakes", "trois bons gâteaux")
    assert _np("", "box", False, None, 1)[1] == "une boîte"
    assert _np("the", "horse", True, "beautiful")[1] == "les beaux chevaux"
    assert L.join_fr(L.contract_de("près de le lit".split())) == "près du lit"
    assert L.join_fr(L.contract_de("près de le hôtel".split())) == "près de l'hôtel"
    assert L.join_fr(L.contract_de("à côté de les chaises".split())) == "à côté des chaises"
    assert L.join_fr("je ai".split()) == "j'ai" and L.join_fr("de huit".split()) == "de huit"


def test_st_sentences_translate_with_agreement():
    import random

    rng = random.Random(1)
    fem = {n for n, g in L.NAMES if g == "f"} | {"She"}
    forms = {"tired": "fatiguée", "happy": "heureuse", "ready": "prête", "kind": "gentille", "proud": "fière"}
    seen = 0
    for _ in range(3000):
        it = mini_en.gen_pred(rng)
        w = it.text.split()
        if len(w) == 3 and w[0] in fem and w[2] in forms:
            assert it.ref.split()[-1] == forms[w[2]], (it.text, it.ref)
            seen += 1
        if it.text.startswith("The ") and it.text.split()[1] in ("cars", "boxes") and it.text.endswith(" white"):
            assert it.ref.endswith("blanches"), (it.text, it.ref)
    assert seen >= 3
    for _ in range(50):
        it = mini_en.gen_past(rng)
        assert re.search(r"\b(ai|a|avons|avez|ont)\b|J'ai", it.ref), (it.text, it.ref)


# ------------------------------------------------------------------ audio
def _wav(path, n=16000, sr=16000, subtype="PCM_16", data=None):
    x = data if data is not None else (0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / sr)).astype(np.float32)
    sf.write(path, x, sr, subtype=subtype)
    return path


def test_resampler_is_band_limited_and_accurate():
    sr = 22050
    t = np.arange(sr * 2) / sr
    y = resample(np.sin(2 * np.pi * 1000 * t), sr, 16000)
    assert len(y) == 32000
    ref = np.sin(2 * np.pi * 1000 * np.arange(len(y)) / 16000)
    assert np.abs(y - ref)[100:-100].max() < 1e-3
    alias = resample(np.sin(2 * np.pi * 10000 * t), sr, 16000)  # above the new Nyquist: must vanish
    assert np.sqrt(np.mean(alias[100:-100] ** 2)) < 1e-3


def test_load_audio_bad_inputs_name_utt_and_file(tmp_path):
    good = _wav(str(tmp_path / "good.wav"))
    assert load_audio(good, utt="u0").shape == (16000,)
    with pytest.raises(AudioError, match=r"'u1'.*missing\.wav.*does not exist"):
        load_audio(str(tmp_path / "missing.wav"), utt="u1")
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(AudioError, match=r"'u2'.*zero\.wav.*zero-byte"):
        load_audio(str(tmp_path / "zero.wav"), utt="u2")
    empty = _wav(str(tmp_path / "empty.wav"), n=0)
    with pytest.raises(AudioError, match=r"'u3'.*empty\.wav.*too short"):
        load_audio(empty, utt="u3")
    w8 = _wav(str(tmp_path / "sr8k.wav"), n=8000, sr=8000)
    with pytest.raises(AudioError, match=r"'u4'.*8000 Hz.*resampling is off"):
        load_audio(w8, utt="u4", resample_ok=False)
    assert load_audio(w8, utt="u4").shape == (16000,)
    data = open(good, "rb").read()
    (tmp_path / "trunc.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"'u5'.*trunc\.wav.*truncated"):
        load_audio(str(tmp_path / "trunc.wav"), utt="u5")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFX" + os.urandom(2000))
    with pytest.raises(AudioError, match=r"'u6'.*corrupt\.wav.*cannot decode"):
        load_audio(str(tmp_path / "corrupt.wav"), utt="u6")
    bad = np.zeros(1600, np.float32)
    bad[7] = np.nan
    nanf = _wav(str(tmp_path / "nan.wav"), subtype="FLOAT", data=bad)
    with pytest.raises(AudioError, match=r"'u7'.*nan\.wav.*NaN"):
        load_audio(nanf, utt="u7")
    os.chmod(good, 0)
    try:
        if not os.access(good, os.R_OK):  # root can read anything: only checkable as a normal user
            with pytest.raises(AudioError, match="not readable"):
                load_audio(good, utt="u8")
    finally:
        os.chmod(good, 0o644)


def test_write_wav_atomic_roundtrip(tmp_path):
    p = str(tmp_path / "a" / "x.wav")
    write_wav_atomic(p, np.full(800, 0.5, np.float32))
    x, sr = sf.read(p, dtype="int16")
    assert sr == 16000 and x[0] == 16384 and sf.info(p).subtype == "PCM_16"
    assert os.listdir(os.path.dirname(p)) == ["x.wav"]


# ------------------------------------------------------------------ data dirs + validator
def _datadir(tmp_path, n=3):
    utts = {f"spk{i % 2}-u{i}": {"wav": _wav(str(tmp_path / f"u{i}.wav")), "text": f"Hello number {i}",
                                  "spk": f"spk{i % 2}", "ref": "set_alarm", "slots": {"time": "six"}} for i in range(n)}
    d = str(tmp_path / "data" / "s")
    write_data_dir(d, utts, intents=["set_alarm", "play_music"])
    return d


def test_validator_accepts_good_dir_and_cli(tmp_path):
    from w2p.bin import validate_data_dir as cli

    d = _datadir(tmp_path)
    s = validate_data_dir(d, check_files=True)
    assert s["utts"] == 3 and s["speakers"] == 2
    assert read_kv(os.path.join(d, "spk2utt"))["spk0"] == "spk0-u0 spk0-u2"
    assert cli.main([d, "--check_files"]) == 0


@pytest.mark.parametrize("damage,pattern", [
    ("mismatch", r"ids in text and wav.scp do not match; only in wav.scp: \['spk1-u1'\]"),
    ("empty_text", r"empty transcript for utterance 'spk1-u1'"),
    ("unsorted", r"text: not sorted"),
    ("duplicate", r"duplicate utterance id 'spk0-u0'"),
    ("spk2utt", r"spk2utt is not the inverse of utt2spk"),
    ("slots", r"slots: utterance 'spk0-u0' value is not a JSON object"),
    ("intent", r"intents not listed in the intents file: \['weather_query'\]"),
    ("missing_wav", r"audio files missing, e.g. utterance 'spk0-u0'"),
    ("no_wavscp", r"missing or empty required file wav.scp.*run stage 1"),
])
def test_validator_reports_each_problem(tmp_path, damage, pattern):
    d = _datadir(tmp_path)
    t = read_kv(os.path.join(d, "text"))
    if damage == "mismatch":
        del t["spk1-u1"]
        write_kv(os.path.join(d, "text"), t)
    elif damage == "empty_text":
        t["spk1-u1"] = ""
        write_kv(os.path.join(d, "text"), t)
    elif damage == "unsorted":
        with open(os.path.join(d, "text"), "w") as f:
            f.writelines(f"{k} {v}\n" for k, v in reversed(t.items()))
    elif damage == "duplicate":
        with open(os.path.join(d, "text"), "a") as f:
            f.write("spk0-u0 again\n")
    elif damage == "spk2utt":
        write_kv(os.path.join(d, "spk2utt"), {"spk0": "spk0-u0", "spk1": "spk1-u1"})
    elif damage == "slots":
        s = read_kv(os.path.join(d, "slots"))
        s["spk0-u0"] = "{not json"
        write_kv(os.path.join(d, "slots"), s)
    elif damage == "intent":
        r = read_kv(os.path.join(d, "ref"))
        r["spk0-u0"] = "weather_query"
        write_kv(os.path.join(d, "ref"), r)
    elif damage == "missing_wav":
        os.remove(str(tmp_path / "u0.wav"))
    elif damage == "no_wavscp":
        os.remove(os.path.join(d, "wav.scp"))
    with pytest.raises(DataDirError, match=pattern):
        validate_data_dir(d, check_files=True, hint="run stage 1 first")


# ------------------------------------------------------------------ corpus preparers (real layouts)
def test_normalize_transcript():
    got = corpora.normalize_transcript("HE HOPED THERE WOULD BE STEW", lower_first=True)
    assert got == "He hoped there would be stew"
    assert corpora.normalize_transcript("i don't know, said i.", lower_first=True) == "I don't know said I"
    assert corpora.normalize_transcript("Where is the \u201cstation\u201d?") == "Where is the station?"
    assert corpora.normalize_transcript(" ... ") == ""


def _librispeech(root):
    """<root>/train-clean-100/<spk>/<chapter>/<spk>-<chapter>-NNNN.flac + .trans.txt."""
    lines = {("19", "198"): ["19-198-0000 HELLO WORLD", "19-198-0001 THE CAT SAT", "19-198-0002 "],
             ("26", "495"): ["26-495-0000 A DOG RAN AWAY", "26-495-0003 MISSING AUDIO LINE"]}
    for (spk, ch), ls in lines.items():
        d = os.path.join(root, "train-clean-100", spk, ch)
        os.makedirs(d)
        with open(os.path.join(d, f"{spk}-{ch}.trans.txt"), "w") as f:
            f.write("\n".join(ls) + "\n")
        for ln in ls:
            uid = ln.split()[0]
            if uid != "26-495-0003":
                sf.write(os.path.join(d, f"{uid}.flac"), np.random.default_rng(0).normal(0, .1, 8000), 16000)
    sf.write(os.path.join(root, "train-clean-100", "26", "495", "26-495-0009.flac"), np.zeros(8000), 16000)


def test_prepare_librispeech_layout_and_skips(tmp_path, caplog):
    _librispeech(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        utts = corpora.prepare_librispeech(str(tmp_path), "train-clean-100")
    assert sorted(utts) == ["19-198-0000", "19-198-0001", "26-495-0000"]
    assert utts["19-198-0001"]["text"] == "The cat sat" and utts["26-495-0000"]["spk"] == "26"
    log = caplog.text
    assert "19-198-0002: empty transcript" in log
    assert "26-495-0003: audio file" in log and "26-495-0003.flac missing" in log
    assert "26-495-0009: audio" in log and "no transcript line" in log
    with pytest.raises(corpora.CorpusError, match="19-198-0002: empty transcript"):
        corpora.prepare_librispeech(str(tmp_path), "train-clean-100", strict=True)
    with pytest.raises(corpora.CorpusError, match="LIBRISPEECH in db.sh"):
        corpora.prepare_librispeech(str(tmp_path / "nope"), "train-clean-100")
    d = str(tmp_path / "data" / "train")
    write_data_dir(d, utts)
    assert validate_data_dir(d, check_files=True)["utts"] == 3


def _covost(root, bad_mp3=False):
    os.makedirs(os.path.join(root, "clips"))
    rows = [("common_voice_en_1.mp3", "Where is the station?", "Où est la gare ?", "aaaa1111"),
            ("common_voice_en_2.mp3", "I like green apples.", "J'aime les pommes vertes.", "bbbb2222"),
            ("common_voice_en_3.mp3", "", "Vide", "cccc3333")]
    with open(os.path.join(root, "covost_v2.en_fr.test.tsv"), "w") as f:
        f.write("path\tsentence\ttranslation\tclient_id\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    x = (0.2 * np.sin(np.arange(48000) * 2 * np.pi * 300 / 48000)).astype(np.float32)
    for r in rows:
        sf.write(os.path.join(root, "clips", r[0]), x, 48000, format="MP3")
    if bad_mp3:
        with open(os.path.join(root, "clips", rows[1][0]), "wb") as f:
            f.write(b"ID3" + os.urandom(500))


def test_prepare_covost2_mp3_clips(tmp_path, caplog):
    _covost(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        utts = corpora.prepare_covost2(str(tmp_path), "test")
    assert len(utts) == 2 and "empty sentence" in caplog.text
    u = utts["aaaa1111-common_voice_en_1"]
    assert u["text"] == "Where is the station?" and u["ref"] == "Où est la gare ?"
    assert utts["bbbb2222-common_voice_en_2"]["text"] == "I like green apples"
    x = load_audio(u["wav"], utt="aaaa1111-common_voice_en_1")  # 48 kHz mp3 -> 16 kHz
    assert abs(len(x) - 16000) < 1200
    with pytest.raises(corpora.CorpusError, match="covost_v2.en_fr.train.tsv missing"):
        corpora.prepare_covost2(str(tmp_path), "train")


def test_corrupt_mp3_is_a_clear_error(tmp_path):
    _covost(str(tmp_path), bad_mp3=True)
    p = str(tmp_path / "clips" / "common_voice_en_2.mp3")
    with pytest.raises(AudioError, match=r"'cv2'.*common_voice_en_2\.mp3"):
        load_audio(p, utt="cv2")


def _slurp(root):
    d = os.path.join(root, "dataset", "slurp")
    a = os.path.join(root, "audio", "slurp_real")
    os.makedirs(d)
    os.makedirs(a)
    recs = {"train": [{"slurp_id": 1, "sentence": "wake me up at five am this week", "intent": "alarm_set",
                       "sentence_annotation": "wake me up at [time : five am] [date : this week]",
                       "recordings": [{"file": "audio-1-headset.flac"}, {"file": "audio-1.flac"}]}],
            "devel": [{"slurp_id": 2, "sentence": "olly play jazz", "intent": "play_music",
                       "sentence_annotation": "olly play [music_genre : jazz]", "recordings": []}],
            "test": [{"slurp_id": 3, "sentence": "what is the weather in paris", "intent": "weather_query",
                      "sentence_annotation": "what is the weather in [place_name : paris]",
                      "recordings": [{"file": "audio-3.flac"}, {"file": "audio-3-missing.flac"}]}]}
    for split, rs in recs.items():
        with open(os.path.join(d, f"{split}.jsonl"), "w") as f:
            for r in rs:
                f.write(json.dumps(r) + "\n")
    for name in ("audio-1-headset.flac", "audio-1.flac", "audio-3.flac"):
        sf.write(os.path.join(a, name), np.random.default_rng(1).normal(0, .1, 8000), 16000)


def test_prepare_slurp_layout(tmp_path, caplog):
    _slurp(str(tmp_path))
    utts, intents = corpora.prepare_slurp(str(tmp_path), "train")
    assert intents == ["alarm_set", "play_music", "weather_query"]
    assert sorted(utts) == ["slurp1-audio-1", "slurp1-audio-1-headset"]
    u = utts["slurp1-audio-1"]
    assert u["ref"] == "alarm_set" and u["slots"] == {"time": "five am", "date": "this week"}
    assert u["text"] == "Wake me up at five am this week"
    with caplog.at_level(logging.WARNING):
        test, _ = corpora.prepare_slurp(str(tmp_path), "test")
    assert list(test) == ["slurp3-audio-3"] and "slurp3-audio-3-missing: audio file" in caplog.text
    d = str(tmp_path / "data" / "slu_test")
    write_data_dir(d, test, intents)
    assert validate_data_dir(d, check_files=True)["utts"] == 1


def test_librispeech_local_data_prep_maps_recipe_sets(tmp_path):
    prepare_data = _local_script("librispeech")
    ls, cv, sl = (str(tmp_path / x) for x in ("ls", "cv", "slurp"))
    _librispeech(ls)
    for sub in ("dev-clean", "test-clean"):
        os.symlink(os.path.join(ls, "train-clean-100"), os.path.join(ls, sub))
    _covost(cv)
    os.symlink(os.path.join(cv, "covost_v2.en_fr.test.tsv"), os.path.join(cv, "covost_v2.en_fr.train.tsv"))
    _slurp(sl)
    out = str(tmp_path / "data")
    # CoVoST 2 as the ST source; the LibriSpeech fixture skips half its utterances (above the default 0.1)
    args = ["--out", out, "--librispeech", ls, "--covost2", cv, "--slurp", sl, "--st_corpus", "covost2",
            "--max_skip_frac", "0.5",
            "--sets", "train", "dev", "test", "st_fewshot", "st_test", "slu_fewshot", "slu_test"]
    assert prepare_data.main(args) == 0
    assert read_kv(os.path.join(out, "st_test", "ref"))["aaaa1111-common_voice_en_1"] == "Où est la gare ?"
    assert open(os.path.join(out, "slu_test", "intents")).read().split() == ["alarm_set", "play_music", "weather_query"]
    with pytest.raises(SystemExit, match=r"COVOST2 -> .*nope.*does not exist"):
        prepare_data.main(args[:5] + [str(tmp_path / "nope")] + args[6:] + ["--check_only"])
    with pytest.raises(SystemExit, match=r"set 'mt_test' has no source in the librispeech recipe.*--tasks"):
        prepare_data.main(args[:-1] + ["mt_test", "--check_only"])
    with pytest.raises(SystemExit, match=r"SQA -> '' does not exist \(needed by set sqa_test\)"):
        prepare_data.main(args[:-1] + ["sqa_test", "--check_only"])


def test_prepare_mini_en_reads_the_synthesised_manifests(tmp_path):
    c = str(tmp_path / "corpus")
    with pytest.raises(corpora.CorpusError, match=r"stats.json missing.*run stage 0 first"):
        corpora.prepare_mini_en(c, "train")
    os.makedirs(c)
    wav = _wav(str(tmp_path / "a.wav"))
    rec = {"id": "s1-slu_test-00000", "spk": "s1", "wav": wav, "dur": 1.0, "text": "Wake me up at six am",
           "ref": "set_alarm", "slots": {"time": "six am"}}
    with open(os.path.join(c, "slu_test.jsonl"), "w") as f:
        f.write(json.dumps(rec) + "\n")
    with open(os.path.join(c, "stats.json"), "w") as f:
        json.dump({"utterances": {"slu_test": 1, "train": 5}}, f)
    with pytest.raises(corpora.CorpusError, match=r"intents missing"):
        corpora.prepare_mini_en(c, "slu_test")
    with open(os.path.join(c, "intents"), "w") as f:
        f.write("play_music\nset_alarm\n")
    utts, intents = corpora.prepare_mini_en(c, "slu_test")
    assert intents == ["play_music", "set_alarm"] and utts["s1-slu_test-00000"]["slots"] == {"time": "six am"}
    with pytest.raises(corpora.CorpusError, match=r"set 'st_test' is not part of the mini_en corpus.*--tasks"):
        corpora.prepare_mini_en(c, "st_test")
    with pytest.raises(corpora.CorpusError, match=r"train.jsonl missing although.*stats.json lists it"):
        corpora.prepare_mini_en(c, "train")
    with open(os.path.join(c, "train.jsonl"), "w") as f:
        f.write("{not json\n")
    with pytest.raises(corpora.CorpusError, match=r"train.jsonl:1: not a manifest line"):
        corpora.prepare_mini_en(c, "train")
    assert _local_script("mini_en").main(["--src", c, "--out", str(tmp_path / "data"), "--sets", "slu_test"]) == 0
    assert read_kv(str(tmp_path / "data" / "slu_test" / "ref")) == {"s1-slu_test-00000": "set_alarm"}
    assert _local_script("mini_en").main(["--src", c, "--out", str(tmp_path / "data"), "--sets", "st_test"]) == 1
