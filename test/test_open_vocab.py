"""Open vocabulary (WordNet example sentences in mini_en's train) and the held-out split test_heldout: new
sentences and words, spoken only by engines that speak none of the training sets (leave-one-engine-out)."""
from __future__ import annotations

import json
import os
import re

import pytest
import soundfile as sf

from w2p.synth import mini_en
from w2p.synth import wordnet as W

SIZES = {s: 40 for s in mini_en.ALL_SETS}


def test_wordnet_pool_is_speakable_english():
    pool = W.sentences()
    assert len(pool) > 20000  # WordNet 3.0: ~29.5k after the filters
    assert len({mini_en.norm_key(s) for s in pool}) == len(pool)
    for s in pool:
        assert re.fullmatch(r"[A-Z][A-Za-z]*( [A-Za-z]+)*\??", s), s
        assert W.MIN_WORDS <= len(s.split()) <= W.MAX_WORDS, s
    words = {w.lower().strip("?") for s in pool for w in s.split()}
    assert len(words) > 20000 and {"umbrella", "yesterday", "slowly"} <= words
    assert W._clean('the 3 dogs') is None and W._clean("he didn't go home") is None
    assert W._clean("the FBI came to town") is None and W._clean("what a bastard he is") is None
    assert W._clean("Dickens wrote novels") is None  # (the profanity filter is a prefix match: a few false hits)
    assert W._clean("the cockpit was small") is None and W._clean("she sang, loudly, all night.") == \
        "She sang loudly all night"


def test_missing_wordnet_names_the_package(tmp_path, monkeypatch):
    from w2p.info import collect

    assert collect()["wordnet"].startswith(f"{len(W.sentences())} example sentences in ")
    monkeypatch.setenv("W2P_WORDNET", str(tmp_path))
    with pytest.raises(W.WordNetMissing, match="apt-get install wordnet-base"):
        W.sentences()
    assert collect()["wordnet"] == "missing (apt-get install wordnet-base)"
    from w2p.synth import make_corpus as mk

    with pytest.raises(SystemExit, match="wordnet-base"):
        mk.main(["--corpus", str(tmp_path / "c"), "--max_utts", "2", "--open_vocab", "0.5"])


def test_open_vocab_and_heldout_text():
    base = mini_en.generate(3, SIZES, cover=False)
    sets = mini_en.generate(3, SIZES, cover=False, open_vocab=0.5, heldout=30)
    # task, dev and test sentences (and their references) are those of the original generator
    for s in mini_en.ALL_SETS:
        if s != "train":
            assert [(i.text, i.ref, i.question, i.slots) for i in sets[s]] == \
                [(i.text, i.ref, i.question, i.slots) for i in base[s]], s
    train = sets["train"]
    assert len(train) == 40 and sum(i.family == "wordnet" for i in train) == 20
    assert [i.text for i in train[:20]] == [i.text for i in base["train"][:20]]
    words = lambda items: {w for i in items for w in mini_en._words(i.text)}  # noqa: E731
    new = words(train) - mini_en.vocabulary(base)  # words no pattern family says
    assert len(new) > 30 and new <= words(i for i in train if i.family == "wordnet")
    held = sets["test_heldout"]
    assert len(held) == 30 and {i.family for i in held} == {"heldout"}
    # no shared sentence; each held-out sentence has a word train never says; every word of test_heldout outside
    # the pattern families' vocabulary (its new words) is absent from train
    keys = {mini_en.norm_key(i.text) for s in sets.values() for i in s if s is not held}
    assert not keys & {mini_en.norm_key(i.text) for i in held}
    tw = words(train)
    assert all(set(mini_en._words(i.text)) - tw for i in held)
    families = words([i for s, items in sets.items() for i in items if i.family not in ("wordnet", "heldout")])
    assert not (words(held) - families) & tw
    # seeded: the same call gives the same corpus, another seed another one
    again = mini_en.generate(3, SIZES, cover=False, open_vocab=0.5, heldout=30)
    assert [i.text for i in again["train"] + again["test_heldout"]] == [i.text for i in train + held]
    other = mini_en.generate(4, SIZES, cover=False, open_vocab=0.5, heldout=30)
    assert [i.text for i in other["test_heldout"]] != [i.text for i in held]
    with pytest.raises(ValueError, match="fraction"):
        mini_en.generate(3, SIZES, open_vocab=1.5)


def test_heldout_plan_has_the_spoken_questions_of_sqqa_test_in_heldout_voices(tmp_path):
    """sqqa_test_heldout: sqqa_test's items (texts and references) spoken by the held-out engines only, ids like the
    other sets'; every other set's draws and ids are those of the plan without a held-out split."""
    from w2p.synth import make_corpus as mk

    args = (5, 4, str(tmp_path), ("espeak", "flite"), 0.0)
    with_h = mk.plan(*args, heldout=3, heldout_engines=("festival",))
    by_set: dict = {}
    for u in with_h:
        by_set.setdefault(u["set"], []).append(u)
    assert list(by_set)[-2:] == ["test_heldout", "sqqa_test_heldout"]
    q, src = by_set["sqqa_test_heldout"], by_set["sqqa_test"]
    assert len(q) == len(src) == 4  # capped by max_utts as sqqa_test is
    assert [vars(u["item"]) for u in q] == [vars(u["item"]) for u in src] and src[0]["item"].ref
    assert {u["engine"] for u in q} == {"festival"} and {u["engine"] for u in src} <= {"espeak", "flite"}
    for i, u in enumerate(q):
        assert u["id"] == f"{u['spk']}-sqqa_test_heldout-{i:05d}" and u["spk"].startswith("festival_")
        assert u["wav"] == os.path.join(str(tmp_path), "wav", "sqqa_test_heldout", u["id"] + ".wav")
    assert len({u["id"] for u in with_h}) == len(with_h)
    rest = [u for u in with_h if u["set"] not in ("test_heldout", "sqqa_test_heldout")]
    assert [(u["id"], u["voice"], u["speed"], u["pitch"], u["item"].text) for u in rest] == [
        (u["id"], u["voice"], u["speed"], u["pitch"], u["item"].text) for u in mk.plan(*args)]
    assert "sqqa_test_heldout" not in {u["set"] for u in mk.plan(*args)}


def test_heldout_corpus_is_spoken_by_the_heldout_engine_only(tmp_path):
    from w2p.data import corpora
    from w2p.synth import make_corpus as mk

    c = str(tmp_path / "c")
    args = ["--corpus", c, "--max_utts", "1", "--seed", "2", "--engines", "espeak,flite", "--open_vocab", "1",
            "--heldout", "3", "--heldout_engines", "festival"]
    # max_utts caps test_heldout too: 1 utterance per set
    assert mk.main(args) == 0 and mk.main(args + ["--finalize"]) == 0
    recs = {f[:-6]: [json.loads(x) for x in open(os.path.join(c, f))] for f in os.listdir(c) if f.endswith(".jsonl")}
    held = ("test_heldout", "sqqa_test_heldout")
    assert set(recs) == set(mini_en.ALL_SETS) | set(held)
    assert {r["engine"] for s in held for r in recs[s]} == {"festival"}
    assert {r["engine"] for s, rs in recs.items() if s not in held for r in rs} <= {"espeak", "flite"}
    # the held-out spoken questions: sqqa_test's manifest fields but for the voice ones
    voice = {"id", "spk", "wav", "dur", "engine", "voice", "speed", "pitch"}
    q, src = recs["sqqa_test_heldout"][0], recs["sqqa_test"][0]
    assert set(q) == set(src) and {k: v for k, v in q.items() if k not in voice} == {
        k: v for k, v in src.items() if k not in voice} and q["ref"] and sf.info(q["wav"]).duration > 0.5
    h = recs["test_heldout"][0]
    assert sf.info(h["wav"]).duration > 0.5 and h["family"] == "heldout"
    assert recs["train"][0]["family"] == "wordnet"  # open_vocab 1: all of train
    train_words = {w for r in recs["train"] for w in mini_en._words(r["text"])}
    assert set(mini_en._words(h["text"])) - train_words
    stats = json.load(open(os.path.join(c, "stats.json")))
    assert stats["engines"]["festival"] == 2 and stats["train_vocabulary_size"] == len(train_words)
    assert stats["utterances"]["sqqa_test_heldout"] == 1
    cfg = json.load(open(os.path.join(c, ".config.json")))
    assert cfg["open_vocab"] == 1.0 and cfg["heldout"] == 3 and cfg["heldout_engines"] == ["festival"]
    utts, _ = corpora.prepare_mini_en(c, "test_heldout")
    assert len(utts) == 1
    utts, _ = corpora.prepare_mini_en(c, "sqqa_test_heldout")
    assert [u["ref"] for u in utts.values()] == [src["ref"]]
    # a held-out corpus stamped before sqqa_test_heldout existed (its plan: this one without that set, which comes
    # last) is completed, not refused
    stamp = os.path.join(c, ".config.json")
    cfg = json.load(open(stamp))
    plan = mk.plan(2, 1, c, ("espeak", "flite"), 1.0, 3, ("festival",))
    old = dict(cfg, plan_sha256=mk._plan_digest([u for u in plan if u["set"] != "sqqa_test_heldout"]))
    assert old != cfg
    with open(stamp, "w") as f:
        json.dump(old, f)
    assert mk.main(args + ["--finalize"]) == 0 and json.load(open(stamp)) == cfg
    # a held-out engine that also speaks training is refused; so is another configuration on the same dir
    with pytest.raises(SystemExit, match="not used in training"):
        mk.main(["--corpus", str(tmp_path / "x"), "--max_utts", "1", "--engines", "espeak,festival",
                 "--heldout", "2", "--heldout_engines", "festival"])
    with pytest.raises(SystemExit, match="remove"):
        mk.main(args[:-4])
