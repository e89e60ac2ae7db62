"""Metrics (jiwer / sacreBLEU wrappers, accuracies), decode-dir scoring and the RESULTS.md table."""
import json

import pytest

from w2p.io import write_kv_atomic
from w2p.score import bleu, chrf, contains_gold, exact_match, intent_acc, results_markdown, score_decode_dir, wer


def test_wer_uses_normalised_words():
    assert wer(["The cat sat."], ["the cat sat"]) == 0.0
    assert wer(["the cat sat on the mat"], ["the cat sit on mat"]) == pytest.approx(100 * 2 / 6)
    assert wer(["a b c"], [""]) == pytest.approx(100.0)  # empty hypothesis = all deletions
    with pytest.raises(ValueError, match="empty"):
        wer([""], ["x"])


def test_bleu_chrf_and_accuracies():
    refs = ["le chat est noir", "il a vu les fenêtres"]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert chrf(refs, refs) == pytest.approx(100.0)
    assert bleu(refs, ["xx yy", "zz"]) < 5
    assert intent_acc(["set_alarm", "play_music"], ["Set Alarm", "tell_joke"]) == 50.0
    assert exact_match(["Nairobi", "13"], ["nairobi.", "The capital is Nairobi"]) == 50.0
    assert contains_gold(["Nairobi", "red"], ["The capital of Kenya is Nairobi.", "It is reddish"]) == 50.0


def test_score_decode_dir_and_missing_hyp(tmp_path):
    d = tmp_path / "decode_sqqa_sqqa_test"
    d.mkdir()
    write_kv_atomic(str(d / "ref"), {"u1": "Paris", "u2": "thirteen"})
    with pytest.raises(FileNotFoundError, match="stage 6"):
        score_decode_dir(str(d), "sqqa")
    write_kv_atomic(str(d / "hyp"), {"u1": "The capital of France is Paris.", "u2": "13"})
    (d / "timing.json").write_text(json.dumps({"decode_sec": 1.0, "audio_sec": 4.0}))
    s = score_decode_dir(str(d), "sqqa")
    assert s == {"exact": 50.0, "contains": 100.0, "n_utts": 2, "rtf": 0.25}
    assert json.loads((d / "scores.json").read_text()) == s
    write_kv_atomic(str(d / "hyp"), {"u1": "Paris"})
    with pytest.raises(ValueError, match="no hypothesis for 1 utterance"):
        score_decode_dir(str(d), "sqqa")


def test_results_markdown_table():
    res = {"wav2prompt": {"st": {"bleu": 10.0, "chrf": 30.0, "rtf": 0.1, "n_utts": 5},
                          "slu": {"intent_acc": 40.0, "rtf": 0.3, "n_utts": 5}},
           "gold": {"st": {"bleu": 12.5, "chrf": 31.0, "n_utts": 5}}}
    md = results_markdown(res, system_labels={"gold": "gold-text topline"}, config={"LLM": "x"},
                          figures=["images/a.png"], commit="abc123", date="2026-01-01")
    lines = md.splitlines()
    head = next(line for line in lines if line.startswith("| system"))
    assert "st bleu ↑" in head and "slu intent_acc ↑" in head and "RTF ↓" in head
    assert "| wav2prompt | 10.00 | 30.00 | 40.00 | 0.20 |" in md
    assert "| gold-text topline | 12.50 | 31.00 | – | – |" in md
    assert "abc123" in md and "- LLM: x" in md and "![a.png](images/a.png)" in md


def test_echo_rate_flags_answers_that_repeat_the_input(tmp_path):
    from w2p.score import echo_rate

    said = ["he saw the windows", "she likes her kites"]
    assert echo_rate(said, ["He saw the windows.", "Elle aime ses cerfs-volants"]) == 50.0
    d = tmp_path / "decode_st_st_test"
    d.mkdir()
    write_kv_atomic(str(d / "ref"), {"u1": "Il a vu les fenêtres", "u2": "Elle aime ses cerfs-volants"})
    write_kv_atomic(str(d / "hyp"), {"u1": "He saw the windows", "u2": "He saw the windows"})
    write_kv_atomic(str(d / "text"), {"u1": said[0], "u2": said[1]})
    s = score_decode_dir(str(d), "st")
    assert s["echo"] == 50.0
    md = results_markdown({"encoder_llm": {"st": s}}, commit="x", date="y")
    assert "| encoder_llm | 50.00 |" in md and "st echo ↓" in md
