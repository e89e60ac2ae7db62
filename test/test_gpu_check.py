"""tools/gpu_check.sh's CPU side: the preparation (wheel download for cp312/manylinux, the embeddings-only GGUF of
the default LLM, the carried features) and the dry run's step list; the smoke step's command runs here on the CPU
for 2 steps on the carried files (the GPU steps themselves run on a CUDA machine)."""
import json
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    env.pop("WORLD_SIZE", None)
    return env


def test_prepare_and_dry_run(tiny_recipe_bpe, tmp_path):
    carry, out = tmp_path / "carry", tmp_path / "out"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_prepare.py"), "--carry", str(carry),
                        "--features_from", f"{tiny_recipe_bpe}/dump/fbank", "--bpe_model",
                        f"{tiny_recipe_bpe}/bpe/bpe.model", "--feature_mb", "0.05"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    wheels = sorted(os.listdir(carry / "wheels"))
    assert [w.split("-")[0].lower() for w in wheels] == ["espnet", "gguf", "kaldiio", "torch_cif", "typeguard"]
    assert all(w.endswith(("py3-none-any.whl", "cp312-manylinux2014_x86_64.whl")) for w in wheels), wheels
    man = json.loads((carry / "MANIFEST.json").read_text())
    assert man["total_mib"] < man["limit_mib"] <= 60
    # the feature budget is kept (0.05 MB: a few utterances), every field follows the kept utterances
    n = len((carry / "data" / "train" / "feats.scp").read_text().splitlines())
    assert 1 <= n < 16 and (carry / "data" / "train" / "feats.ark").stat().st_size <= 0.05e6
    for f in ("text", "llm_tokens", "bpe_tokens", "utt2num_frames"):
        assert len((carry / "data" / "train" / f).read_text().splitlines()) == n, f
    d = subprocess.run([os.path.join(ROOT, "tools", "gpu_check.sh"), "--dry-run", "--carry", str(carry), "--out",
                        str(out)], env=_env(), capture_output=True, text=True, timeout=120)
    assert d.returncode == 0, d.stderr
    names = re.findall(r"^\[(\w+)\] \(timeout (\d+)s\)$", d.stdout, re.M)
    assert [x for x, _ in names] == ["env", "install", "tests", "memcheck", "racecheck", "bench", "smoke"]
    assert all(int(t) <= 200 for _, t in names) and "all steps within 470s" in d.stdout  # 8 min on the GPU
    text = d.stdout
    assert "8x250x512,16x500x1024,32x1000x1024,32x1000x4096" in text and "bfloat16" in text
    assert "--no-index --no-deps" in text and "compute-sanitizer --tool racecheck" in text
    assert "test/test_cif_cuda.py" in text and "--amp true --max_steps 200" in text
    # the smoke step's command, on the CPU for 2 steps: the carried features, CTC units and embeddings-only GGUF
    # LLM (tokenizer and config read from the GGUF) train as the GPU run will
    smoke = text.split("[smoke]")[1].strip().splitlines()[1].split(" && ")[0]
    args = shlex.split(smoke)
    assert args[:3] == ["python3", "-m", "w2p.bin.train"]
    args = [sys.executable] + args[1:]
    for opt, val in (("--ngpu", "0"), ("--amp", "false"), ("--max_steps", "2"), ("--batch_frames", "400"),
                     ("--log_interval", "1")):
        args[args.index(opt) + 1] = val
    r = subprocess.run(args + ["--num_threads", "1"], env=_env(), capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    s = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gpu_check_steps.py"), "smoke",
                        str(out / "smoke")], capture_output=True, text=True, timeout=60)
    assert s.returncode == 1 and "train loss by step: 1:" in s.stdout and "over 2 steps" in s.stdout  # no trend yet
    assert "LLM embeddings only" in (out / "smoke" / "train.log").read_text()
