"""A table of bad inputs walked through the public entry points (CLI, Python API, loaders); each must give a clear
message naming what is wrong (and, where there is one, the fix), or behave correctly where the table says so."""
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_ENCODER

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pack(tmp_path_factory, tiny_recipe, llm):
    from w2p.infer import pack_model
    from w2p.models import build_model

    root = tmp_path_factory.mktemp("bad")
    exp = root / "exp"
    exp.mkdir()
    conf = {"encoder": dict(TINY_ENCODER, cmvn=os.path.join(tiny_recipe, "dump", "fbank", "train", "cmvn.npz")),
            "cif": {"dropout": 0.0}}
    torch.manual_seed(0)
    (exp / "config.yaml").write_text(yaml.safe_dump({"model": "wav2prompt", "model_conf": conf}))
    torch.save(build_model("wav2prompt", conf, llm).state_dict(), exp / "model.pt")
    return pack_model(str(exp), str(root / "packed"), llm=llm, decode={"beam": 1})


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    p = tmp_path_factory.mktemp("w") / "a.wav"
    subprocess.run(["espeak-ng", "-w", str(p), "turn on the lights"], check=True, capture_output=True)
    return str(p)


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "w2p.bin.infer", *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, **kw)


# -- command line: parse-time checks, before anything is loaded ------------------------------------------------
CLI_CASES = [
    (["--beam", "0"], "--beam: must be > 0"),
    (["--max_new_tokens", "0"], "--max_new_tokens: must be > 0"),
    (["--repetition_penalty", "0"], "--repetition_penalty: must be > 0"),
    (["--batch_size", "-2"], "--batch_size: must be > 0"),
    (["--beam", "two"], "--beam: 'two' is not an integer"),
    (["--task", "slu", "--intents", "conf/intents.txt"], "--intents conf/intents.txt: file not found"),
    (["--template", "Say it"], "exactly one {speech} placeholder"),
    (["--task", "translate"], "unknown task 'translate'"),
    (["--task", "sqa"], "placeholder(s) ['question'] have no value"),
]


@pytest.mark.parametrize("args, msg", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_rejects_bad_options_with_a_clear_message(args, msg, wav):
    p = _cli(["--model", "nowhere", "--wav", wav, *args])
    assert p.returncode != 0 and msg in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_cli_rejects_missing_audio_pipes_and_missing_models(tmp_path, wav):
    p = _cli(["--model", "nowhere"])
    assert p.returncode != 0 and "no audio" in p.stderr
    scp = tmp_path / "wav.scp"
    scp.write_text(f"a sox {wav} -t wav - |\n")
    p = _cli(["--model", "nowhere", "--wav_scp", str(scp)])
    assert p.returncode != 0 and "piped wav.scp commands are not supported" in p.stderr
    p = _cli(["--model", str(tmp_path / "nowhere"), "--wav", wav])
    assert p.returncode != 0 and "not a directory" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only torch")
def test_cli_cuda_on_a_cpu_torch(wav):
    p = _cli(["--model", "nowhere", "--wav", wav, "--device", "cuda"])
    assert p.returncode != 0 and "sees no CUDA device" in p.stderr and "--device cpu" in p.stderr


def test_cli_stdout_holds_only_the_answers(pack, wav):
    p = _cli(["--model", pack, "--wav", wav, "--wav", wav, "--max_new_tokens", "3"])
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith(wav) for line in lines), p.stdout


# -- Python API -------------------------------------------------------------------------------------------------
def test_api_int16_audio_is_scaled_like_a_file(pack, wav, llm):
    import soundfile as sf

    from w2p.infer import Wav2PromptPipeline

    pipe = Wav2PromptPipeline.from_pretrained(pack, llm=llm)
    x16, sr = sf.read(wav, dtype="int16")
    xf, _ = sf.read(wav, dtype="float32")
    assert torch.allclose(pipe.features((x16, sr)), pipe.features((xf, sr)), atol=1e-4)
    assert torch.allclose(pipe.features((x16, sr)), pipe.features(wav), atol=1e-4)


@pytest.mark.parametrize("audio, msg", [
    ((np.zeros(16000, dtype=np.float32), 0), "sample rate must be a positive integer"),
    ((np.zeros(16000, dtype=np.float32), -8000), "sample rate must be a positive integer"),
    ((np.zeros(16000, dtype=np.uint8), 16000), "dtype uint8"),
    ((np.array(["a"] * 800), 16000), "give float samples"),
    ((np.full(16000, np.nan, dtype=np.float32), 16000), "NaN/inf"),
    ((np.zeros(100, dtype=np.float32), 16000), ">= 400 samples"),
])
def test_api_rejects_bad_arrays(pack, llm, audio, msg):
    from w2p.infer import Wav2PromptPipeline

    with pytest.raises(ValueError, match=msg):
        Wav2PromptPipeline.features(audio)


@pytest.mark.parametrize("kw, msg", [({"beam": 0}, "num_beams must be an integer >= 1"),
                                     ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
                                     ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0")])
def test_api_zero_is_an_error_not_the_default(pack, wav, llm, kw, msg):
    from w2p.infer import Wav2PromptPipeline

    pipe = Wav2PromptPipeline.from_pretrained(pack, llm=llm)
    with pytest.raises(ValueError, match=msg):
        pipe.generate([wav], task="asr", **kw)


def test_8khz_audio_is_upsampled_with_a_warning(tmp_path, wav, caplog):
    from w2p.data.audio import load_audio

    low = tmp_path / "low.wav"
    subprocess.run(["sox", wav, "-r", "8000", str(low)], check=True)
    with caplog.at_level(logging.WARNING, logger="w2p.data.audio"):
        x = load_audio(str(low), target_sr=16000)
    assert x.dtype == np.float32 and len(x) > 8000
    assert "8000 Hz audio upsampled to 16000 Hz" in caplog.text and "mel bins above 4000 Hz are empty" in caplog.text


# -- LLM sources --------------------------------------------------------------------------------------------------
def test_garbage_gguf_named_like_the_default_is_refused(tmp_path):
    from w2p.llm import resolve_llm

    bad = tmp_path / "smollm2-135m.gguf"
    bad.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ValueError, match="not a GGUF file"):
        resolve_llm(str(bad), cache_root=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")


def test_two_different_ggufs_with_one_name_get_two_conversions(tmp_path):
    from w2p.llm import _name_for

    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for p, body in ((a, b"GGUF" + b"1" * 40), (b, b"GGUF" + b"2" * 40)):
        p.parent.mkdir()
        p.write_bytes(body)
    assert _name_for(str(a)) != _name_for(str(b)) and _name_for(str(a)).startswith("model-")
    assert _name_for(str(a)) == _name_for(str(a))


def test_truncated_llm_weights_give_a_clear_error(tmp_path):
    from w2p.llm import FrozenLLM, default_cache_root

    src = os.path.join(default_cache_root(), "smollm2-135m")
    d = tmp_path / "llm"
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("*.safetensors"))
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        (d / "model.safetensors").write_bytes(f.read(1 << 20))  # the first MiB only
    with pytest.raises(ValueError, match="the LLM cannot be loaded.*truncated download"):
        FrozenLLM.load(str(d))


def test_prompt_longer_than_the_llm_context(llm):
    too_long = torch.zeros(llm.max_positions + 1, llm.embed_dim)
    with pytest.raises(ValueError, match="longer than the LLM's context"):
        llm.build_inputs("Repeat: {speech}", [too_long])
    fits = llm.build_inputs("Repeat: {speech}", [too_long[: llm.max_positions - 40]])
    with pytest.raises(ValueError, match="prompt plus max_new_tokens"):
        llm.generate(fits, max_new_tokens=64, num_beams=1)


# -- packed models and checkpoints --------------------------------------------------------------------------------
def _copy_pack(pack, tmp_path):
    d = tmp_path / "pack"
    shutil.copytree(pack, d)
    return d


def test_broken_pack_files_give_clear_errors(pack, tmp_path, llm):
    from w2p.infer import Wav2PromptPipeline

    d = _copy_pack(pack, tmp_path)
    (d / "config.yaml").write_text("model: wav2prompt\nmodel_conf: {encoder: [unclosed\n")
    with pytest.raises(ValueError, match=r"config.yaml: not valid YAML"):
        Wav2PromptPipeline.from_pretrained(str(d), llm=llm)
    shutil.copy(os.path.join(pack, "config.yaml"), d / "config.yaml")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors: cannot be read as weights.*truncated"):
        Wav2PromptPipeline.from_pretrained(str(d), llm=llm)


def test_broken_pack_json_names_the_file(pack, tmp_path, llm):
    from w2p.infer import Wav2PromptPipeline

    d = _copy_pack(pack, tmp_path)
    (d / "llm.json").write_text('{"source": "smollm2-135m", ')
    with pytest.raises(ValueError, match=r"llm.json: not valid JSON"):
        Wav2PromptPipeline.from_pretrained(str(d), llm=llm)
    (d / "llm.json").write_text('{"source": "smollm2-135m"}')
    with pytest.raises(ValueError, match=r"llm.json: no \['embed_dim', 'vocab_size'\]"):
        Wav2PromptPipeline.from_pretrained(str(d), llm=llm)
    shutil.copy(os.path.join(pack, "llm.json"), d / "llm.json")
    (d / "decode.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"decode.json: expected a JSON object"):
        Wav2PromptPipeline.from_pretrained(str(d), llm=llm)


def test_nan_features_in_a_training_dump_name_the_utterance(tiny_recipe, tmp_path, llm):
    import kaldiio

    from w2p.train.dataset import DumpDataset

    d = tmp_path / "train"
    shutil.copytree(os.path.join(tiny_recipe, "dump", "fbank", "train"), d)
    ark, scp = str(d / "bad.ark"), str(tmp_path / "bad.scp")
    first = (d / "feats.scp").read_text().splitlines()[0].split()[0]
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        w(first, np.full((30, 80), np.nan, dtype=np.float32))
    lines = (d / "feats.scp").read_text().splitlines()
    lines[0] = open(scp).read().strip()
    (d / "feats.scp").write_text("\n".join(lines) + "\n")
    for preload in (True, False):
        with pytest.raises(ValueError, match=f"utterance {first} has NaN/inf features"):
            ds = DumpDataset(str(d), llm=llm, preload=preload)
            ds[0]


def test_weights_of_another_config_give_a_clear_error(pack, tmp_path, llm):
    from w2p.models import load_trained

    d = _copy_pack(pack, tmp_path)
    conf = yaml.safe_load((d / "config.yaml").read_text())
    conf["model_conf"]["proj_hidden"] = 64  # another architecture than the weights
    (d / "config.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(ValueError, match="do not fit the model described by .*config.yaml"):
        load_trained(str(d), llm)


# -- configs ------------------------------------------------------------------------------------------------------
def test_config_errors_name_the_file_and_the_known_keys(tmp_path):
    from w2p.config import ConfigError
    from w2p.decode import load_config
    from w2p.train.config import load_config as load_train_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("beam: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    bad.write_bytes(b"beam: \xff\xfe\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    bad.write_text("beam: 5\nbeem: 3\n")
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) \['beem'\]"):
        load_config(str(bad))
    with pytest.raises(SystemExit, match="unknown option --max_epochs"):
        load_train_config(None, ["--max_epochs", "3"])


def test_cmvn_of_nan_features_names_the_utterance(tmp_path):
    import kaldiio

    from w2p.features import FeatureError, compute_cmvn

    ark, scp = str(tmp_path / "f.ark"), str(tmp_path / "feats.scp")
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        w("good", np.zeros((10, 80), dtype=np.float32))
        w("bad", np.full((10, 80), np.nan, dtype=np.float32))
    with pytest.raises(FeatureError, match="utterance 'bad' has NaN/inf features"):
        compute_cmvn(scp, str(tmp_path / "cmvn.npz"))
    assert not (tmp_path / "cmvn.npz").exists()


def test_audio_over_the_length_limit_is_refused(pack, llm):
    from w2p.infer import Wav2PromptPipeline

    pipe = Wav2PromptPipeline.from_pretrained(pack, llm=llm, max_seconds=5)
    long = (np.random.default_rng(0).standard_normal(16000 * 6).astype(np.float32) * 0.1, 16000)
    with pytest.raises(ValueError, match=r"<array>: 6\.0 s of audio, over the limit of 5 s.*split it"):
        pipe.generate([long], task="asr")


# -- data files, runs that were killed ----------------------------------------------------------------------------
def test_non_utf8_text_names_the_file_and_line(tmp_path):
    from w2p.io import read_kv

    p = tmp_path / "text"
    p.write_bytes(b"u1 hello\nu2 caf\xe9 au lait\n")
    with pytest.raises(ValueError, match=r"text:2: not UTF-8 text.*iconv"):
        read_kv(str(p))


def test_temporaries_of_a_killed_write_are_removed_by_the_next_write(tmp_path):
    from w2p.io import TMP_MARK, atomic_path, write_atomic

    import socket

    host = socket.gethostname().split(".")[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "feats.1.ark"
    stale = tmp_path / f".feats.1.ark.{host}-{dead.pid}.abc123{TMP_MARK}"  # its writer was killed
    stale.write_bytes(b"half")
    live = tmp_path / f".feats.1.ark.{host}-{os.getppid()}.abc123{TMP_MARK}"  # a running writer's: kept
    live.write_bytes(b"x")
    other = tmp_path / f".other.ark.{host}-{dead.pid}.abc123{TMP_MARK}"  # any dead writer's temporary goes
    other.write_bytes(b"x")
    foreign = tmp_path / f".x.ark.otherhost-{dead.pid}.abc123{TMP_MARK}"  # another host's writer may be alive
    foreign.write_bytes(b"x")
    write_atomic(str(target), b"data")
    assert target.read_bytes() == b"data" and not stale.exists() and live.exists() and not other.exists()
    assert foreign.exists()
    live.unlink()
    with pytest.raises(OSError):  # a failed write (e.g. a full disk) leaves no temporary and the old file
        with atomic_path(str(target)) as tmp:
            open(tmp, "wb").write(b"partial")
            raise OSError(28, "No space left on device")
    assert target.read_bytes() == b"data" and not list(tmp_path.glob(f".feats.1.ark.*{TMP_MARK}*"))


def test_test_sets_fail_rather_than_shrink(tmp_path, wav):
    from w2p.bin import make_fbank
    from w2p.data.datadir import write_data_dir
    from w2p.decode import load_set

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEgarbage" * 4)
    utts = {f"u{i}": {"wav": wav, "text": "turn on the lights", "spk": "s"} for i in range(3)}
    utts["u9"] = {"wav": str(bad), "text": "broken", "spk": "s"}
    for name in ("test", "train"):
        write_data_dir(str(tmp_path / "data" / name), utts)
    args = ["--data_dir", str(tmp_path / "data"), "--dump_dir", str(tmp_path / "dump"), "--nj", "1",
            "--max_skip_ratio", "0.5"]
    assert make_fbank.main(args + ["--sets", "train"]) == 0  # a training set may lose a bad utterance
    assert make_fbank.main(args + ["--sets", "test"]) == 1  # a test set stops (error: line, exit 1)
    assert make_fbank.main(args + ["--sets", "test", "--allow_test_skips"]) == 0
    ts = load_set(str(tmp_path / "dump" / "test"))
    assert len(ts.utt_ids) == 3 and ts.n_dropped == 1


def test_results_state_dropped_utterances():
    from w2p.score import results_markdown

    md = results_markdown({"w2p": {"asr": {"wer": 10.0, "n_utts": 39, "n_dropped": 1}}}, commit="x", date="d")
    assert "Test utterances scored per task: asr 39; dropped from the test sets because their audio failed in " \
           "stage 2: asr 1." in md


def test_commands_print_one_error_line_and_a_traceback_only_with_verbose(tmp_path):
    cmd = [sys.executable, "-m", "w2p.bin.make_fbank", "--data_dir", str(tmp_path), "--dump_dir", str(tmp_path),
           "--sets", "nothing", "--nj", "1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.count("error: ") == 1 and "Traceback" not in p.stderr, p.stderr
    assert "wav.scp" in p.stderr
    p = subprocess.run(cmd + ["--verbose"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "Traceback" in p.stderr
    p = subprocess.run(cmd[:-2] + ["--nj", "0"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--nj: must be > 0" in p.stderr
