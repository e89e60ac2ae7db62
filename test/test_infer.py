"""Packing (stage 10), the Python inference API and the w2p.bin.infer CLI, including bad input."""
import json
import os
import shutil

import pytest
import torch
import yaml


pytestmark = pytest.mark.usefixtures("one_thread")


def test_pack_contents(packed, llm):
    out, model = packed
    assert sorted(os.listdir(out)) == ["README.md", "cmvn.npz", "config.yaml", "decode.json", "llm.json",
                                       "model.safetensors"]
    ref = json.load(open(os.path.join(out, "llm.json")))
    assert ref["source"] == "smollm2-135m" and ref["embed_dim"] == llm.embed_dim
    conf = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert conf["model_conf"]["encoder"]["cmvn"] == "cmvn.npz"
    from safetensors.torch import load_file

    sd = load_file(os.path.join(out, "model.safetensors"))
    assert set(sd) == set(model.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_python_api_tasks_and_custom_template(packed, wavs, llm):
    from w2p.infer import Wav2PromptPipeline

    out, model = packed
    pipe = Wav2PromptPipeline.from_pretrained(out, llm=llm)

    _, paths = wavs
    # same prompt vectors as the unpacked model
    feats = pipe.features(paths[0])
    assert feats.shape[1] == 80 and feats.shape[0] > 50
    with torch.no_grad():
        ref = model.eval().prompts(feats[None], torch.tensor([feats.shape[0]])).vectors[0]
    assert torch.allclose(pipe.prompts([paths[0]])[0], ref, atol=1e-5)
    res = pipe.generate(paths, task="st", max_new_tokens=3)
    assert len(res) == 2 and all(isinstance(r, str) for r in res)
    res = pipe.generate(paths[0], task="sqa", question="What is it?", max_new_tokens=2)
    assert len(res) == 1
    res = pipe.generate(paths, task="slu", intents=["set_alarm", "lights_on"])
    assert set(res) <= {"set_alarm", "lights_on"}
    assert len(pipe.generate(paths, template="Say {speech} in {lang}", lang="German", max_new_tokens=2)) == 2
    with pytest.raises(ValueError, match="unknown task"):
        pipe.generate(paths, task="summarise")
    with pytest.raises(ValueError, match=r"\['question'\] have no value"):
        pipe.generate(paths, task="sqa")
    with pytest.raises(ValueError, match=r"exactly one \{speech\}"):
        pipe.generate(paths, template="Translate this")
    with pytest.raises(ValueError, match="needs intents"):
        pipe.generate(paths, task="slu")


def test_cli(packed, wavs, llm, monkeypatch, capsys):
    from w2p.bin import infer
    from w2p.llm import FrozenLLM

    monkeypatch.setattr(FrozenLLM, "load", classmethod(lambda cls, *a, **k: llm))
    out, _ = packed
    d, paths = wavs
    assert infer.main(["--model", out, "--task", "st", "--wav_scp", str(d / "wav.scp"), "--max_new_tokens", "2",
                       "--beam", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [x.split()[0] for x in lines] == ["a", "b"]
    assert infer.main(["--model", out, "--task", "slu", "--intents", "set_alarm,lights_on", "--wav", paths[0]]) == 0
    assert capsys.readouterr().out.split()[1] in {"set_alarm", "lights_on"}
    for argv, msg in [
        (["--task", "nope", "--wav", paths[0]], "unknown task 'nope'"),
        (["--task", "sqa", "--wav", paths[0]], "question"),
        (["--template", "no placeholder", "--wav", paths[0]], r"\{speech\}"),
        (["--task", "st", "--wav", str(d / "empty.wav")], "empty.*empty.wav|empty.wav.*empty"),
        (["--task", "st", "--wav", str(d / "missing.wav")], "missing.wav.*does not exist"),
        (["--task", "st", "--wav", str(d / "garbage.wav")], "garbage.wav"),
        (["--task", "st"], "no audio"),
    ]:
        with pytest.raises(SystemExit, match=msg):
            infer.main(["--model", out] + argv)
    bad = d / "notpacked"
    bad.mkdir(exist_ok=True)
    with pytest.raises(SystemExit, match="not a packed model"):
        infer.main(["--model", str(bad), "--wav", paths[0]])


def test_pack_needs_trained_model(tmp_path):
    from w2p.bin import pack_model

    with pytest.raises(SystemExit, match="train the model first"):
        pack_model.main(["--exp_dir", str(tmp_path), "--out_dir", str(tmp_path / "o")])
    shutil.rmtree(tmp_path)
