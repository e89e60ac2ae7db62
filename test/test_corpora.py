"""Europarl-ST in its release layout (m4a recordings through ffmpeg, segments cut by time), the skip rules shared
by every corpus reader (a log line per bad utterance naming it and its file; a stop, with the list, past
max_skip_frac) and the local spoken-QA source."""
import importlib.util
import json
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from w2p.data import audio, corpora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "egs", "librispeech", "w2p1", "local", "make_fixtures.py")


def _fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def europarl(tmp_path_factory):
    """The recipe's Europarl-ST fixture (espeak-ng speeches as 44.1 kHz AAC m4a + the release's text files)."""
    root = str(tmp_path_factory.mktemp("ep") / "europarl-st")
    _fixtures().europarl_st(root, audio.ffmpeg_exe())
    return root


def _copy(src, tmp_path):
    dst = str(tmp_path / "europarl-st")
    shutil.copytree(src, dst)
    return dst


def test_europarl_st_layout_cut_by_time(europarl, tmp_path, caplog):
    out = str(tmp_path / "seg")
    with caplog.at_level(logging.WARNING):
        utts = corpora.prepare_europarl_st(europarl, "train", tgt="fr", audio_out=out)
    assert len(utts) == 10
    seg = [x.split() for x in open(os.path.join(europarl, "en", "fr", "train", "segments.lst"))]
    fr = open(os.path.join(europarl, "en", "fr", "train", "segments.fr"), encoding="utf-8").read().splitlines()
    speech, start, end = seg[0]
    u = utts[f"{speech}_{round(float(start) * 100):07d}-{round(float(end) * 100):07d}"]
    assert u["text"] == "Madam President I support this report" and u["ref"] == fr[0] and u["spk"] == speech
    info = sf.info(u["wav"])
    assert info.samplerate == 16000 and abs(info.duration - (float(end) - float(start))) < 0.01
    # the cut is the recording's own samples at those times (ffmpeg decodes the m4a)
    whole = audio.load_audio(os.path.join(europarl, "en", "audios", speech + ".m4a"))
    cut, _ = sf.read(u["wav"], dtype="float32")
    ref = whole[round(float(start) * 16000):][:len(cut)]
    assert np.abs(cut - ref).max() < 2e-4 and np.abs(cut).max() > 0.05
    # the fixture's segment timed past its recording: skipped, naming the utterance and the recording
    assert "mis-timed segment 30.00-33.50 s (segments.lst line 11)" in caplog.text
    assert ".m4a, which lasts" in caplog.text
    # a re-run reuses the cut wavs; En->Es test of the same corpus
    mtime = os.path.getmtime(u["wav"])
    assert corpora.prepare_europarl_st(europarl, "train", tgt="fr", audio_out=out) == utts
    assert os.path.getmtime(u["wav"]) == mtime
    es = corpora.prepare_europarl_st(europarl, "test", tgt="es", audio_out=out)
    assert len(es) == 4 and all(v["ref"].endswith(".") for v in es.values())


def test_europarl_st_bad_segments_are_skipped_then_stop_past_the_fraction(europarl, tmp_path, caplog):
    root = _copy(europarl, tmp_path)
    d = os.path.join(root, "en", "fr", "test")
    seg = open(os.path.join(d, "segments.lst")).read().splitlines()
    s0 = seg[0].split()
    seg[0] = f"{s0[0]} {s0[2]} {s0[1]}"  # end before start
    open(os.path.join(d, "segments.lst"), "w").write("\n".join(seg) + "\n")
    en = open(os.path.join(d, "segments.en"), encoding="utf-8").read().splitlines()
    en[1] = " "
    open(os.path.join(d, "segments.en"), "w", encoding="utf-8").write("\n".join(en) + "\n")
    second = seg[2].split()[0]  # the test split's second speech: unreadable recording
    with open(os.path.join(root, "en", "audios", second + ".m4a"), "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypM4A " + os.urandom(300))
    with caplog.at_level(logging.WARNING), pytest.raises(corpora.CorpusError, match="no usable segments"):
        corpora.prepare_europarl_st(root, "test", tgt="fr", audio_out=str(tmp_path / "o"))
    log = caplog.text
    assert "mis-timed segment" in log and "empty transcript at line 2 of" in log and "segments.en" in log
    assert f"recording {os.path.join(root, 'en', 'audios', second + '.m4a')} unreadable" in log
    os.remove(os.path.join(root, "en", "audios", second + ".m4a"))
    with pytest.raises(corpora.CorpusError, match="4 of 4 utterances would be skipped") as e:
        corpora.prepare_europarl_st(root, "test", tgt="fr", audio_out=str(tmp_path / "o2"), max_skip_frac=0.1)
    listed = str(e.value).split("Skipped:")[1]
    assert "mis-timed" in listed and "empty transcript" in listed and listed.count(".m4a missing") == 2
    with pytest.raises(corpora.CorpusError, match="empty transcript at line 2"):
        corpora.prepare_europarl_st(root, "test", tgt="fr", audio_out=str(tmp_path / "o3"), strict=True)


def test_europarl_st_path_errors_name_the_fix(europarl, tmp_path, monkeypatch):
    with pytest.raises(corpora.CorpusError, match="EUROPARL_ST in db.sh"):
        corpora.prepare_europarl_st(str(tmp_path / "nope"), "test", audio_out=str(tmp_path / "o"))
    with pytest.raises(corpora.CorpusError, match=r"en/de/test missing \(language pairs found under .*: es fr\)"):
        corpora.prepare_europarl_st(europarl, "test", tgt="de", audio_out=str(tmp_path / "o"))
    root = _copy(europarl, tmp_path)
    with open(os.path.join(root, "en", "es", "dev", "segments.es"), "a", encoding="utf-8") as f:
        f.write("Una línea de más.\n")
    with pytest.raises(corpora.CorpusError, match="must be line-aligned"):
        corpora.prepare_europarl_st(root, "dev", tgt="es", audio_out=str(tmp_path / "o"))
    # no ffmpeg: the error names the fix, once, instead of skipping every recording
    monkeypatch.setattr(audio, "ffmpeg_exe", lambda: None)
    with pytest.raises(corpora.CorpusError, match="needs ffmpeg.*apt-get install ffmpeg.*imageio-ffmpeg"):
        corpora.prepare_europarl_st(europarl, "test", audio_out=str(tmp_path / "o4"))
    with pytest.raises(audio.AudioError, match="needs ffmpeg"):
        audio.load_audio(next(iter(sorted(
            os.path.join(europarl, "en", "audios", x) for x in os.listdir(os.path.join(europarl, "en", "audios"))))))


def test_spoken_qa_source(tmp_path, caplog):
    wav = tmp_path / "q1.flac"
    sf.write(str(wav), _fixtures().say("what is the capital of france", 0), 16000, format="FLAC")
    recs = [{"id": "q1", "audio": "q1.flac", "text": "What is the capital of France?", "answer": "Paris",
             "question": "Which city?"},
            {"id": "q2", "audio": "missing.flac", "text": "Who wrote Hamlet?", "answer": "Shakespeare",
             "question": "Who?"},
            {"id": "q3", "audio": "q1.flac", "text": "No answer here", "question": "Why?"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with caplog.at_level(logging.WARNING):
        u = corpora.prepare_spoken_qa(str(tmp_path), "test", "sqa", var="SQA")
    assert list(u) == ["q1"] and u["q1"]["ref"] == "Paris" and u["q1"]["question"] == "Which city?"
    assert u["q1"]["text"] == "What is the capital of France?"
    assert "q2: audio file" in caplog.text and "q3:" in caplog.text and "has no answer" in caplog.text
    with pytest.raises(corpora.CorpusError, match="fewshot.jsonl missing. Fix: SQQA in db.sh"):
        corpora.prepare_spoken_qa(str(tmp_path), "fewshot", "sqqa")
