"""No code runs from data or models, and a packed model is self-contained.

Each payload writes a marker file when it runs; the tests plant it where a careless loader would execute it and
assert that loading refuses (or ignores it) and that the marker never appears."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import SENTENCES, TINY_ENCODER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _payload(marker) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')\n"


def test_a_packed_model_cannot_name_an_importable_class(tmp_path, monkeypatch, llm):
    """config.yaml of a pack names ``module:Class`` of a module shipped beside it: never imported."""
    from w2p.models import load_trained

    marker = tmp_path / "marker"
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "evil.py").write_text(_payload(marker) + "class Evil:\n    pass\n")
    (pack / "config.yaml").write_text(yaml.safe_dump({"model": "evil:Evil", "model_conf": {}}))
    torch.save({}, pack / "model.pt")
    monkeypatch.chdir(pack)  # the module is importable from the cwd
    monkeypatch.syspath_prepend(str(pack))
    with pytest.raises(ValueError, match="unknown model 'evil:Evil'"):
        load_trained(str(pack), llm)
    assert not marker.exists()


def test_llm_dir_with_custom_code_is_never_run(tmp_path):
    """An LLM dir whose config.json points (auto_map) at its own modeling code: the loader does not ask on stdin
    and does not run it; a known architecture loads with the library's own class."""
    from w2p.llm import default_cache_root

    src = os.path.join(default_cache_root(), "smollm2-135m")
    if not os.path.isdir(src):
        pytest.skip("the default LLM is converted by the session fixture first")  # conftest's llm fixture makes it
    marker = tmp_path / "marker"
    d = tmp_path / "llm"
    d.mkdir()
    for f in os.listdir(src):
        if f.endswith(".safetensors"):
            os.symlink(os.path.join(src, f), d / f)
        elif os.path.isfile(os.path.join(src, f)):
            shutil.copy(os.path.join(src, f), d / f)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil_code.EvilConfig", "AutoModelForCausalLM": "evil_code.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((d / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": ["evil_code.EvilTokenizer", None]}
    (d / "tokenizer_config.json").write_text(json.dumps(tok))
    (d / "evil_code.py").write_text(_payload(marker))
    code = f"from w2p.llm import FrozenLLM; llm = FrozenLLM.load({str(d)!r}); print(type(llm.model).__name__)"
    p = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=300, cwd=str(tmp_path))
    assert not marker.exists(), p.stdout + p.stderr
    assert p.returncode == 0 and "LlamaForCausalLM" in p.stdout, p.stdout + p.stderr


def test_packed_model_runs_from_anywhere_with_the_recipe_deleted(tmp_path, monkeypatch, tiny_recipe, llm):
    """A model with a CTC head reads the stage-3 units (bpe_model, relative to the recipe dir): packing copies them
    in; the pack then runs from another directory after the recipe is gone."""
    import sentencepiece as spm

    from w2p.infer import Wav2PromptPipeline, pack_model
    from w2p.models import build_model

    recipe = tmp_path / "recipe"
    (recipe / "data" / "lang" / "bpe").mkdir(parents=True)
    txt = tmp_path / "bpe.txt"
    txt.write_text("\n".join(SENTENCES * 4) + "\n")
    spm.SentencePieceTrainer.train(input=str(txt), model_prefix=str(recipe / "data" / "lang" / "bpe" / "bpe"),
                                   vocab_size=40, model_type="bpe", minloglevel=2)
    shutil.copy(os.path.join(tiny_recipe, "dump", "fbank", "train", "cmvn.npz"), recipe / "cmvn.npz")
    monkeypatch.chdir(recipe)
    conf = {"encoder": dict(TINY_ENCODER, cmvn="cmvn.npz"), "cif": {"dropout": 0.0}, "ctc_weight": 0.5,
            "bpe_model": "data/lang/bpe/bpe.model"}
    model = build_model("wav2prompt", conf, llm)
    (recipe / "exp").mkdir()
    (recipe / "exp" / "config.yaml").write_text(yaml.safe_dump({"model": "wav2prompt", "model_conf": conf}))
    torch.save(model.state_dict(), recipe / "exp" / "model.pt")
    pack_model("exp", "packed", llm=llm, decode={"beam": 1})
    assert yaml.safe_load(open("packed/config.yaml"))["model_conf"]["bpe_model"] == "bpe.model"
    moved = tmp_path / "elsewhere" / "pack"
    shutil.move(str(recipe / "packed"), str(moved))
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(recipe)
    wav = tmp_path / "a.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "turn on the lights"], check=True, capture_output=True)
    pipe = Wav2PromptPipeline.from_pretrained(str(moved), llm=llm)
    out = pipe.generate([str(wav)], task="asr", max_new_tokens=4, beam=1)
    assert len(out) == 1 and isinstance(out[0], str)
    assert pipe.model.ctc_head is not None and pipe.model.bpe_vocab == 40


def _planted_dump(tiny_recipe, tmp_path, marker):
    """A copy of a dump dir whose feats.scp has one Kaldi pipe entry that would write the marker."""
    src = os.path.join(tiny_recipe, "dump", "fbank", "train")
    d = tmp_path / "dump" / "fbank" / "train"
    shutil.copytree(src, d)
    lines = (d / "feats.scp").read_text().splitlines()
    utts = [ln.split()[0] for ln in lines]
    if not (d / "utt2spk").exists():  # the validator wants the speaker maps of a full dump dir
        (d / "utt2spk").write_text("".join(f"{u} spk\n" for u in utts))
        (d / "spk2utt").write_text("spk " + " ".join(utts) + "\n")
    utt = utts[1]
    lines[1] = f"{utt} touch {marker} |"
    (d / "feats.scp").write_text("\n".join(lines) + "\n")
    return str(d), utt


def test_kaldi_pipe_entries_in_feats_scp_are_never_run(tiny_recipe, tmp_path, llm):
    from w2p.data.datadir import DataDirError, validate_data_dir
    from w2p.decode import load_set
    from w2p.features import compute_cmvn
    from w2p.io import UnsafeScpError, read_scp
    from w2p.train.dataset import DumpDataset

    marker = tmp_path / "marker"
    d, utt = _planted_dump(tiny_recipe, tmp_path, marker)
    scp = os.path.join(d, "feats.scp")
    for load in (lambda: DumpDataset(d, llm=llm), lambda: DumpDataset(d, llm=llm, preload=False),
                 lambda: load_set(d), lambda: compute_cmvn(scp, str(tmp_path / "cmvn.npz"))):
        with pytest.raises(UnsafeScpError, match=f"utterance '{utt}' is a shell command.*--allow_scp_pipes"):
            load()
    with pytest.raises(DataDirError, match="shell commands"):
        validate_data_dir(d, "dump")
    assert not marker.exists() and not (tmp_path / "cmvn.npz").exists()
    assert read_scp(scp, allow_pipes=True)[utt].endswith("|")  # the explicit opt-in passes it through


def test_training_cli_refuses_a_planted_pipe(tiny_recipe, tmp_path):
    marker = tmp_path / "marker"
    d, utt = _planted_dump(tiny_recipe, tmp_path, marker)
    cfg = tmp_path / "conf.yaml"
    cfg.write_text(yaml.safe_dump({"model": "wav2prompt", "model_conf": {"encoder": dict(TINY_ENCODER)},
                                   "max_steps": 1}))
    p = subprocess.run([sys.executable, "-m", "w2p.bin.train", "--config", str(cfg), "--train_dir", d,
                        "--valid_dir", d, "--output_dir", str(tmp_path / "exp")], capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode != 0 and "is a shell command" in p.stderr, p.stderr[-2000:]
    assert not marker.exists()
