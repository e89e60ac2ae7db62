"""Decoding (stage 6) and scoring (stage 9) end to end on tiny random models, plus closed-set scoring."""
import json
import os
import shutil

import pytest
import torch
import yaml
from conftest import SENTENCES, TINY_ENCODER

from w2p.decode import calibrate_scores, choose, load_set
from w2p.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")



def test_choice_logprobs_equal_full_forward(llm):
    tpl = "Which is it? {speech}"
    cands = ["set alarm", "play music now", "red"]
    inputs = llm.build_inputs(tpl, ["wake me up at seven", "play some jazz please"])
    scores = llm.choice_logprobs(inputs, cands)
    assert scores.shape == (2, 3)
    for b in range(2):
        m = inputs.attention_mask[b].bool()
        prompt = inputs.inputs_embeds[b][m]
        for k, c in enumerate(cands):
            ids = llm.tokenize([c])[0] + [llm.eos_id]
            e = torch.cat([prompt, llm.embed(torch.tensor(ids))], 0)[None]
            with torch.no_grad():
                lp = torch.log_softmax(llm.model(inputs_embeds=e).logits[0].float(), -1)
            ref = sum(float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(ids))
            assert float(scores[b, k]) == pytest.approx(ref, abs=2e-3)
    # calibration subtracts the same per-label prior from every row
    raw = choose(llm, tpl, ["wake me up at seven"], cands, calibrate=False)
    assert raw == [int(scores[0].argmax())]


def test_batch_calibration_removes_label_prior():
    """A label the LLM prefers whatever the input wins every raw argmax; batch calibration divides its mean
    probability out, so the input-dependent part decides again. No LLM call is needed in batch mode."""
    torch.manual_seed(0)
    n, k = 40, 5
    truth = torch.arange(n) % k
    signal = torch.nn.functional.one_hot(truth, k).float() * 2.0 + 0.3 * torch.randn(n, k)
    prior = torch.tensor([4.0, 0.0, -1.0, 0.5, 0.0])  # log-prior bias toward label 0
    scores = signal + prior
    assert (scores.argmax(1) == 0).float().mean() > 0.9
    cal = calibrate_scores(None, scores, "batch", "", [])
    assert (cal.argmax(1) == truth).float().mean() > 0.9
    # the per-label mean probability after calibration is flat (the prior is gone)
    mean_p = torch.logsumexp(torch.log_softmax(cal, 1), 0) - torch.log(torch.tensor(float(n)))
    assert float(mean_p.max() - mean_p.min()) < 1.0
    assert torch.equal(calibrate_scores(None, scores, "none", "", []), scores)


def test_batch_calibration_needs_many_inputs(llm):
    """One input estimates no prior (every label calibrates to 0): content-free calibration is used instead."""
    tpl = "Which is it? {speech}"
    cands = ["set alarm", "play music", "red"]
    sc = llm.choice_logprobs(llm.build_inputs(tpl, ["wake me up at seven"]), cands)
    got = calibrate_scores(llm, sc, "batch", tpl, cands)
    assert torch.allclose(got, calibrate_scores(llm, sc, "content_free", tpl, cands))
    with pytest.raises(ValueError, match="calibrate"):
        choose(llm, tpl, ["x"], cands, calibrate="platt")


def _write_exp(root, name, model_name, conf, llm, bpe=None):
    torch.manual_seed(0)
    model = build_model(model_name, conf, llm)
    d = os.path.join(root, "exp", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.yaml"), "w") as f:
        yaml.safe_dump({"model": model_name, "model_conf": conf, "llm": "smollm2-135m"}, f)
    torch.save(model.state_dict(), os.path.join(d, "model.pt"))
    with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        for s in (1, 2, 3):
            f.write(json.dumps({"phase": "train", "step": s, "epoch": 1, "loss": 5.0 / s, "loss_ce": 3.0 / s}) + "\n")
        f.write(json.dumps({"phase": "valid", "step": 3, "epoch": 1, "loss": 2.5}) + "\n")
    return d


@pytest.fixture(scope="module")
def task_recipe(tmp_path_factory, tiny_recipe, llm):
    """Recipe dir with test / slu_test / sqa_test dump dirs (copies of the tiny dev set) and 3 tiny systems."""
    import sentencepiece as spm

    root = str(tmp_path_factory.mktemp("task_recipe"))
    fb = os.path.join(root, "dump", "fbank")
    for s in ("test", "slu_test", "sqa_test"):
        shutil.copytree(os.path.join(tiny_recipe, "dump", "fbank", "dev"), os.path.join(fb, s))
    shutil.copytree(os.path.join(tiny_recipe, "dump", "fbank", "train"), os.path.join(fb, "train"))
    utts = sorted(load_set(os.path.join(fb, "test")).utt_ids)
    with open(os.path.join(fb, "slu_test", "ref"), "w") as f:
        f.writelines(f"{u} {['set_alarm', 'play_music'][i % 2]}\n" for i, u in enumerate(utts))
    with open(os.path.join(fb, "slu_test", "intents"), "w") as f:
        f.write("set_alarm\nplay_music\ntell_joke\n")
    with open(os.path.join(fb, "sqa_test", "ref"), "w") as f:
        f.writelines(f"{u} music\n" for u in utts)
    with open(os.path.join(fb, "sqa_test", "question"), "w") as f:
        f.writelines(f"{u} What is it about?\n" for u in utts)
    bpe = os.path.join(root, "bpe")
    with open(bpe + ".txt", "w") as f:
        f.write("\n".join(SENTENCES * 4) + "\n")
    spm.SentencePieceTrainer.train(input=bpe + ".txt", model_prefix=bpe, vocab_size=50, model_type="bpe",
                                   hard_vocab_limit=False, minloglevel=2)
    cmvn = os.path.join(fb, "train", "cmvn.npz")
    enc = dict(TINY_ENCODER, cmvn=cmvn)
    _write_exp(root, "w2p", "wav2prompt", {"encoder": enc, "cif": {"dropout": 0.0}}, llm)
    _write_exp(root, "asr_ctc", "asr_ctc", {"encoder": enc, "bpe_model": bpe + ".model"}, None)
    _write_exp(root, "encoder_llm", "encoder_llm", {"encoder": enc, "stack": 4}, llm)
    conf = {"beam": 1, "repetition_penalty": 1.2, "batch_size": 2, "max_utts": 3, "asr_beam": 2,
            "max_new_tokens": {"asr": 3, "sqa": 3},
            "tasks": {"asr": "test", "slu": "slu_test", "sqa": "sqa_test"},
            "systems": {"wav2prompt": {"kind": "wav2prompt", "exp": "exp/w2p", "label": "Wav2Prompt (zero-shot)"},
                        "cascade": {"kind": "cascade", "exp": "exp/asr_ctc", "out": "exp/cascade",
                                    "label": "ASR→LLM cascade (CTC)"},
                        "encoder_llm": {"kind": "encoder_llm", "exp": "exp/encoder_llm",
                                        "label": "Encoder-LLM (prior work)"},
                        "gold": {"kind": "gold", "out": "exp/gold_text", "label": "gold-text topline"}}}
    with open(os.path.join(root, "decode.yaml"), "w") as f:
        yaml.safe_dump(conf, f)
    return root


def test_decode_and_score_stages(task_recipe, monkeypatch, llm):
    from w2p.bin import decode as dec
    from w2p.bin import score as sc
    from w2p.llm import FrozenLLM

    monkeypatch.chdir(task_recipe)
    monkeypatch.setattr(FrozenLLM, "load", classmethod(lambda cls, *a, **k: llm))  # reuse the session LLM
    assert dec.main(["--config", "decode.yaml"]) == 0
    for system in ("exp/w2p", "exp/cascade", "exp/encoder_llm", "exp/gold_text"):
        for task, s in (("asr", "test"), ("slu", "slu_test"), ("sqa", "sqa_test")):
            d = os.path.join(system, f"decode_{task}_{s}")
            hyp = dict(line.rstrip("\n").partition(" ")[::2] for line in open(os.path.join(d, "hyp")))
            ref = dict(line.rstrip("\n").partition(" ")[::2] for line in open(os.path.join(d, "ref")))
            assert len(hyp) == 3 and set(hyp) == set(ref)
            if task == "slu":
                assert set(hyp.values()) <= {"set_alarm", "play_music", "tell_joke"}
            t = json.load(open(os.path.join(d, "timing.json")))
            assert t["n_utts"] == 3 and t["decode_sec"] > 0 and t["audio_sec"] > 0
    assert os.path.isfile("exp/cascade/decode_asr_test/asr_hyp")
    # the gold system fills {speech} with the reference transcript: its ASR references are the transcripts
    ref = open("exp/gold_text/decode_asr_test/ref").read()
    assert any(s in ref for s in SENTENCES)
    assert sc.main(["--config", "decode.yaml"]) == 0
    md = open("RESULTS.md").read()
    for label in ("Wav2Prompt (zero-shot)", "ASR→LLM cascade", "Encoder-LLM", "gold-text topline"):
        assert label in md
    assert "asr wer ↓" in md and "slu intent_acc ↑" in md and "sqa contains ↑" in md
    for png in ("images/cif_alignment.png", "images/training_curves.png"):
        assert os.path.getsize(png) > 5000
        assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    s = json.load(open("exp/gold_text/decode_slu_slu_test/scores.json"))
    assert 0 <= s["intent_acc"] <= 100 and s["n_utts"] == 3 and s["rtf"] > 0


def test_decode_errors(task_recipe, tmp_path):
    from w2p.bin import decode as dec

    with pytest.raises(SystemExit, match="unknown system 'nope'"):
        dec.main(["--config", os.path.join(task_recipe, "decode.yaml"), "--systems", "nope"])
    with pytest.raises(FileNotFoundError, match="stage 2"):
        load_set(str(tmp_path / "missing"))


def test_max_utts_samples_evenly(task_recipe):
    """A capped test set is spread over the sorted ids: ids start with the voice, so the first n would be one
    voice's (on a multi-engine set, one engine's)."""
    from w2p.io import evenly_spaced

    assert evenly_spaced(list(range(10)), 4) == [0, 2, 5, 7]
    assert evenly_spaced(list(range(3)), 5) == [0, 1, 2] and evenly_spaced([1, 2], None) == [1, 2]
    every = sorted(load_set(os.path.join(task_recipe, "dump", "fbank", "test")).utt_ids)
    n = len(every) // 2
    capped = list(load_set(os.path.join(task_recipe, "dump", "fbank", "test"), max_utts=n).utt_ids)
    assert len(capped) == n and capped[0] == every[0] and capped != every[:n]
    assert capped == [every[i * len(every) // n] for i in range(n)]
