"""Shared fixtures.

``packed``: a tiny untrained Wav2Prompt model packed with w2p.infer.pack_model (beam 1), and the model itself.
``wavs``: two espeak-ng utterances (+ an empty and a garbage wav and a wav.scp).

``llm``: the default frozen LLM, loaded once per test session (converted from the GGUF into
<repo>/tools/cache/llm/ the first time, ~20 s; later loads take about a second).
``tiny_hf_llms``: tiny random LLMs of the paper's two families (Llama, BLOOM) built from transformers configs with
the default LLM's tokenizer, saved as sharded safetensors dirs (no hub access).
``tiny_recipe``: a recipe-like dir with dump/fbank/{train,dev}/ (synthetic fbank ark/scp, text, llm_tokens,
cmvn.npz) small enough for training tests that run in seconds.
"""
import os
import subprocess

import numpy as np
import pytest
import torch
import yaml

SENTENCES = [
    "turn on the lights", "what time is it", "play some music", "call my sister", "open the door",
    "set an alarm for seven", "how is the weather today", "stop the music", "close the window please",
    "read my messages", "turn off the radio", "where is the station", "book a table for two",
    "send a text to john", "is it going to rain", "start the timer",
]


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): the CPU is
    shared, and two OpenMP threads fighting other processes are many times slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def llm():
    from w2p.llm import DEFAULT_LLM, FrozenLLM

    return FrozenLLM.load(DEFAULT_LLM, dtype=torch.float32, device="cpu")


def write_tiny_dump(root: str, llm, n_train: int = 16, n_dev: int = 4, seed: int = 0) -> str:
    """Synthetic recipe dir: every LLM token gets a fixed random 80-dim pattern held for 12 frames, plus noise."""
    import kaldiio

    rng = np.random.default_rng(seed)
    protos: dict[int, np.ndarray] = {}
    sums, sq, count = np.zeros(80), np.zeros(80), 0
    for name, n in (("train", n_train), ("dev", n_dev)):
        d = os.path.join(root, "dump", "fbank", name)
        os.makedirs(d, exist_ok=True)
        texts = {f"{name}_{i:03d}": SENTENCES[(i * 5 + (name == "dev")) % len(SENTENCES)] for i in range(n)}
        toks = dict(zip(texts, llm.tokenize(list(texts.values()))))
        with kaldiio.WriteHelper(f"ark,scp:{d}/feats.ark,{d}/feats.scp") as w:
            for u, ids in toks.items():
                frames = []
                for t in ids:
                    if t not in protos:
                        protos[t] = rng.normal(0, 3, 80)
                    frames.append(np.repeat(protos[t][None], 12, 0))
                m = (np.concatenate(frames) + rng.normal(0, 0.5, (12 * len(ids), 80))).astype(np.float32)
                w(u, m)
                if name == "train":
                    sums += m.sum(0)
                    sq += (m.astype(np.float64) ** 2).sum(0)
                    count += len(m)
        with open(f"{d}/text", "w") as f:
            f.writelines(f"{u} {t}\n" for u, t in texts.items())
        with open(f"{d}/llm_tokens", "w") as f:
            f.writelines(f"{u} {' '.join(map(str, ids))}\n" for u, ids in toks.items())
        with open(f"{d}/utt2num_frames", "w") as f:
            f.writelines(f"{u} {12 * len(ids)}\n" for u, ids in toks.items())
    np.savez(os.path.join(root, "dump", "fbank", "train", "cmvn.npz"), count=np.array(count), sum=sums,
             sum_square=sq)
    return root


@pytest.fixture(scope="session")
def tiny_recipe(tmp_path_factory, llm):
    return write_tiny_dump(str(tmp_path_factory.mktemp("tiny_recipe")), llm)


@pytest.fixture(scope="session")
def tiny_recipe_bpe(tiny_recipe, tmp_path_factory):
    """The tiny recipe with stage 3's CTC units (a character sentencepiece model in bpe/, bpe_tokens)."""
    import shutil

    from w2p.bin.prepare_llm import main as prepare

    d = tmp_path_factory.mktemp("bpe_recipe")
    shutil.copytree(os.path.join(tiny_recipe, "dump"), d / "dump")
    assert prepare(["--dump_dir", str(d / "dump" / "fbank"), "--bpe_dir", str(d / "bpe"), "--nbpe", "40",
                    "--bpe_type", "char"]) == 0
    return str(d)


TINY_ENCODER = {"output_size": 32, "attention_heads": 2, "linear_units": 64, "num_blocks": 1,
                "cnn_module_kernel": 5, "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
                "attention_dropout_rate": 0.0}


@pytest.fixture(scope="session")
def packed(tmp_path_factory, tiny_recipe, llm):
    from w2p.infer import pack_model
    from w2p.models import build_model

    root = tmp_path_factory.mktemp("infer")
    exp = root / "exp"
    exp.mkdir()
    cmvn = os.path.join(tiny_recipe, "dump", "fbank", "train", "cmvn.npz")
    conf = {"encoder": dict(TINY_ENCODER, cmvn=cmvn), "cif": {"dropout": 0.0}}
    torch.manual_seed(0)
    model = build_model("wav2prompt", conf, llm)
    (exp / "config.yaml").write_text(yaml.safe_dump({"model": "wav2prompt", "model_conf": conf,
                                                     "llm": "smollm2-135m"}))
    torch.save(model.state_dict(), exp / "model.pt")
    out = pack_model(str(exp), str(root / "packed"), llm=llm, decode={"beam": 1})
    pack_model(str(exp), out, llm=llm, decode={"beam": 1})  # re-packing over an existing dir is atomic/safe
    return out, model


@pytest.fixture(scope="session")
def wavs(tmp_path_factory):
    d = tmp_path_factory.mktemp("wavs")
    paths = []
    for i, text in enumerate(["turn on the lights", "what time is it"]):
        p = d / f"u{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(p), text], check=True, capture_output=True)
        paths.append(str(p))
    (d / "empty.wav").write_bytes(b"")
    (d / "garbage.wav").write_bytes(b"RIFF1234WAVEnot really audio at all" * 3)
    (d / "wav.scp").write_text(f"a {paths[0]}\nb {paths[1]}\n")
    return d, paths


TINY_LLM_CONFIGS = {
    "llama": ("LlamaConfig", {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
                              "tie_word_embeddings": False}),
    "bloom": ("BloomConfig", {"hidden_size": 64, "n_layer": 2, "n_head": 4}),
}


@pytest.fixture(scope="session")
def tiny_hf_llms(tmp_path_factory, llm):
    """{family: dir}: random tiny Llama and BLOOM models with the default LLM's tokenizer (so the tiny recipe's
    llm_tokens fit), each saved in several safetensors shards plus model.safetensors.index.json."""
    import shutil

    import transformers

    root = tmp_path_factory.mktemp("tiny_llms")
    out = {}
    for fam, (cfg_name, kw) in TINY_LLM_CONFIGS.items():
        cfg = getattr(transformers, cfg_name)(vocab_size=llm.vocab_size, eos_token_id=llm.eos_id,
                                              bos_token_id=llm.eos_id, pad_token_id=llm.pad_id, **kw)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        d = root / fam
        model.save_pretrained(d, max_shard_size="200KB", safe_serialization=True)
        for f in os.listdir(llm.path):
            if f.startswith(("tokenizer", "chat_template", "special_tokens")):
                shutil.copy(os.path.join(llm.path, f), d / f)
        out[fam] = str(d)
    return out


FAKE_SBATCH = """#!/usr/bin/env bash
# stand-in for sbatch: records its arguments, runs the script once per array index (as Slurm would)
echo "$@" >> "$FAKE_ARGS"
for a in "$@"; do case $a in --array=*) r=${a#--array=}; r=${r%%%*};; esac; script=$a; done
rc=0
for ((i=${r%-*}; i<=${r#*-}; i++)); do SLURM_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$i bash "$script" || rc=1; done
echo 12345; exit $rc
"""
FAKE_SRUN = """#!/usr/bin/env bash
# stand-in for srun: records its arguments, runs the command once per node (concurrently), as a job step would
echo "srun $@" >> "$FAKE_ARGS"
n=1
while [ $# -gt 0 ]; do case $1 in --nodes=*) n=${1#--nodes=}; shift;; --*) shift;; *) break;; esac; done
pids=()
for ((i=0; i<n; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0; for p in "${pids[@]}"; do wait $p || rc=1; done; exit $rc
"""


def fake_slurm(tmp_path) -> dict:
    """Stand-in sbatch and srun on PATH (they record their arguments in $FAKE_ARGS): the env for a subprocess."""
    fake = tmp_path / "fake_slurm"
    fake.mkdir(exist_ok=True)
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    return {"PATH": f"{fake}:{os.environ['PATH']}", "FAKE_ARGS": str(tmp_path / "fake_args")}
