"""Trainer: bucketing, config overrides, 2-process gloo == 1 process, SIGKILL + --resume, n-best averaging."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import TINY_ENCODER, fake_slurm

from w2p.config import apply_overrides
from w2p.train.config import load_config
from w2p.train.sampler import BucketSampler, bucket_batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bucket_batches_respect_budget_and_cover_all():
    lengths = [50, 300, 120, 80, 310, 90, 200, 60, 75, 150]
    batches = bucket_batches(lengths, batch_frames=400)
    assert sorted(i for b in batches for i in b) == list(range(10))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 400 or len(b) == 1
    s = BucketSampler(lengths, 400, seed=3, world_size=2, rank=1)
    s0 = BucketSampler(lengths, 400, seed=3, world_size=2, rank=0)
    assert all(len(b) >= 2 for b in s.batches)
    for (a, ga), (b, gb) in zip(s0.epoch_batches(1), s.epoch_batches(1)):
        assert ga == gb and len(a) + len(b) == ga and not set(a) & set(b)
    assert s.global_batches(1) == s.global_batches(1)
    assert s.global_batches(1) != s.global_batches(2) or len(s) < 3


def test_rng_state_survives_a_weights_only_load(tmp_path):
    """checkpoint.pt is loaded with weights_only=True, so the RNG states must be plain tuples and tensors; the
    restored streams continue exactly."""
    import random

    import numpy as np

    from w2p.train.trainer import rng_state, set_rng_state

    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    np.random.randn()  # a cached gaussian in numpy's state
    torch.save({"rng": [rng_state()]}, tmp_path / "ck.pt")
    want = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    st = torch.load(tmp_path / "ck.pt", weights_only=True)["rng"][0]
    set_rng_state(st)
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == want


def test_old_checkpoint_with_numpy_rng_still_resumes(tmp_path):
    """Checkpoints written before the weights-only format hold numpy's RNG array: they load (weights only, numpy's
    data-only reconstructor allowed) and restore the stream; a file with code in it is refused."""
    import numpy as np

    from w2p.train.trainer import load_checkpoint_file, set_rng_state

    np.random.seed(5)
    old = {"rng": [{"python": __import__("random").getstate(), "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state()}], "step": 7}
    torch.save(old, tmp_path / "old.pt")
    want = np.random.randn(3).tolist()
    ck = load_checkpoint_file(str(tmp_path / "old.pt"))
    assert ck["step"] == 7
    set_rng_state(ck["rng"][0])
    assert np.random.randn(3).tolist() == want
    torch.save({"f": subprocess.run}, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match="evil.pt: not loadable as weights only"):
        load_checkpoint_file(str(tmp_path / "evil.pt"))


def test_config_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("max_epoch: 3\noptim_conf:\n  lr: 0.002\nmodel_conf:\n  encoder:\n    output_size: 64\n")
    conf = load_config(str(p), ["--optim_conf.lr", "5e-4", "--model_conf.encoder.num_blocks", "2",
                                "--max_epoch=7"])
    assert conf["optim_conf"]["lr"] == 5e-4 and conf["optim_conf"]["betas"] == [0.9, 0.98]
    assert conf["model_conf"]["encoder"] == {"output_size": 64, "num_blocks": 2}
    assert conf["max_epoch"] == 7
    (tmp_path / "bad.yaml").write_text("max_epochs: 3\n")
    with pytest.raises(ValueError, match="unknown top-level key"):
        load_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(SystemExit):
        apply_overrides({}, ["--x"])


def test_config_layers(tmp_path):
    """A second --config states only what it changes (stage 4's CE phase over the regression config)."""
    base = tmp_path / "base.yaml"
    base.write_text("model_conf:\n  encoder: {output_size: 64, num_blocks: 2}\n  mse_weight: 1.0\n  ce_weight: 0.0\n"
                    "max_epoch: 17\noptim_conf: {lr: 0.004}\nscheduler: warmup_cosine\n"
                    "scheduler_conf: {warmup_steps: 150, final_ratio: 0.02}\n")
    layer = tmp_path / "ce.yaml"
    layer.write_text("model_conf: {ce_weight: 1.0}\nmax_epoch: 1\noptim_conf: {lr: 5.0e-4}\n"
                     "scheduler: warmup_constant\nscheduler_conf: {warmup_steps: 10}\n")
    conf = load_config([str(base), str(layer)], ["--model_conf.mse_weight", "2"])
    assert conf["model_conf"] == {"encoder": {"output_size": 64, "num_blocks": 2}, "mse_weight": 2.0, "ce_weight": 1.0}
    assert conf["max_epoch"] == 1 and conf["optim_conf"]["lr"] == 5e-4 and conf["optim_conf"]["betas"] == [0.9, 0.98]
    # another scheduler: the base's scheduler_conf (final_ratio) must not leak into it
    assert conf["scheduler"] == "warmup_constant" and conf["scheduler_conf"] == {"warmup_steps": 10}
    # the first file still replaces the (empty) default model_conf, and one path == a one-element list
    assert load_config(str(base)) == load_config([str(base)])
    (tmp_path / "bad.yaml").write_text("max_epochs: 3\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown top-level key"):
        load_config([str(base), str(tmp_path / "bad.yaml")])


def _write_conf(path, **extra):
    conf = {"model": "wav2prompt",
            "model_conf": {"encoder": dict(TINY_ENCODER), "cif": {"dropout": 0.0}, "qua_weight": 0.5,
                           "tok_weight": 0.2},
            "max_epoch": 3, "batch_frames": 400, "log_interval": 1, "save_interval_steps": 2,
            "nbest_average": 2, "scheduler_conf": {"warmup_steps": 4}, "optim_conf": {"lr": 2e-3}, **extra}
    with open(path, "w") as f:
        yaml.safe_dump(conf, f)
    return str(path)


def _cmd(conf, recipe, out, *extra):
    return [sys.executable, "-m", "w2p.bin.train", "--config", conf,
            "--train_dir", f"{recipe}/dump/fbank/train", "--valid_dir", f"{recipe}/dump/fbank/dev",
            "--output_dir", str(out), *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    env.pop("WORLD_SIZE", None)
    return env


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _train_losses(out):
    return {r["step"]: r["loss"] for r in _metrics(out) if r["phase"] == "train"}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, tiny_recipe):
    d = tmp_path_factory.mktemp("train1")
    conf = _write_conf(d / "conf.yaml")
    subprocess.run(_cmd(conf, tiny_recipe, d / "exp", "--nproc", "1"), check=True, env=_env(),
                   capture_output=True, text=True, timeout=300)
    return conf, str(d / "exp")


def test_single_process_run_outputs(single_run):
    _, out = single_run
    for f in ("model.pt", "config.yaml", "train.log", "checkpoint.pt", "history.json"):
        assert os.path.isfile(os.path.join(out, f)), f
    assert os.listdir(os.path.join(out, "tensorboard"))
    hist = json.load(open(os.path.join(out, "history.json")))
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    # model.pt is the average of the 2 best epoch snapshots (the others were pruned)
    snaps = sorted(os.listdir(os.path.join(out, "snapshots")))
    assert len(snaps) == 2
    sds = [torch.load(os.path.join(out, "snapshots", s), weights_only=True) for s in snaps]
    avg = torch.load(os.path.join(out, "model.pt"), weights_only=True)
    k = "proj.weight"
    assert torch.allclose(avg[k], (sds[0][k] + sds[1][k]) / 2, atol=1e-6)
    assert not any(k.startswith("llm") for k in avg)
    cfg = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert cfg["model_conf"]["encoder"]["cmvn"].endswith("cmvn.npz")
    losses = _train_losses(out)
    assert losses[max(losses)] < losses[1]  # it learns


def test_ce_phase_layered_over_the_stage4_config(single_run, tiny_recipe, tmp_path):
    """Stage 4's CE phase: ``--config base --config layer --init <stage-4 model>``: the same architecture, the
    layer's loss weights and schedule, the LLM cross-entropy term trained."""
    conf, out = single_run
    layer = tmp_path / "ce.yaml"
    layer.write_text("model_conf: {ce_weight: 1.0, ce_task: asr}\n"
                     "max_epoch: 1\nmax_steps: 2\nnbest_average: 1\nscheduler: warmup_constant\n"
                     "scheduler_conf: {warmup_steps: 1}\n")
    ce_out = tmp_path / "exp_ce"
    p = subprocess.run(_cmd(conf, tiny_recipe, ce_out, "--config", str(layer), "--init",
                            os.path.join(out, "model.pt")), env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    with open(ce_out / "config.yaml") as f:
        got = yaml.safe_load(f)
    with open(conf) as f:
        base = yaml.safe_load(f)
    enc = {k: v for k, v in got["model_conf"]["encoder"].items() if k != "cmvn"}  # the trainer records the CMVN
    assert enc == base["model_conf"]["encoder"] and got["model_conf"]["ce_weight"] == 1.0
    assert got["model_conf"]["qua_weight"] == base["model_conf"]["qua_weight"]
    assert got["scheduler"] == "warmup_constant" and got["scheduler_conf"] == {"warmup_steps": 1}
    rows = [r for r in _metrics(ce_out) if r["phase"] == "train"]
    assert rows and all(r["ce"] > 0 for r in rows)
    # resuming a run that stopped at max_steps takes no further step and leaves model.pt as it was
    before = open(ce_out / "model.pt", "rb").read()
    p = subprocess.run(_cmd(conf, tiny_recipe, ce_out, "--config", str(layer), "--resume", "--init",
                            os.path.join(out, "model.pt")), env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert max(r["step"] for r in _metrics(ce_out) if r["phase"] == "train") == 2
    assert "checkpoint: step 3" not in (ce_out / "train.log").read_text()
    import io
    a, b = (torch.load(io.BytesIO(x), weights_only=True) for x in (before, open(ce_out / "model.pt", "rb").read()))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_text = (ce_out / "train.log").read_text()
    assert "init from" in log_text and "0 skipped" in log_text


def _assert_same_losses(out1, out2, *, rel: float, abs_: float) -> None:
    """Two runs logged the same training steps with equal losses, and equal validation losses."""
    l1, l2 = _train_losses(str(out1)), _train_losses(str(out2))
    assert len(l1) >= 6 and l1.keys() == l2.keys()
    for s in l1:
        assert l2[s] == pytest.approx(l1[s], rel=rel, abs=abs_), f"step {s}"
    v1 = [r["loss"] for r in _metrics(str(out1)) if r["phase"] == "valid"]
    v2 = [r["loss"] for r in _metrics(str(out2)) if r["phase"] == "valid"]
    assert v2 == pytest.approx(v1, rel=rel)


def test_two_processes_gloo_equal_one_process(single_run, tiny_recipe, tmp_path):
    conf, out1 = single_run
    out2 = tmp_path / "exp2"
    r = subprocess.run(_cmd(conf, tiny_recipe, out2, "--nproc", "2"), env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_losses(out1, out2, rel=1e-4, abs_=1e-5)


def test_dataloader_workers_and_lazy_reads_equal_the_preloaded_main_process_run(single_run, tiny_recipe, tmp_path):
    """The single run preloads (auto: a small set) and reads in the main process; 2 workers reading each item from
    the ark by offset must give the same batches, hence the same losses."""
    conf, out1 = single_run
    lazy = tmp_path / "lazy.yaml"
    with open(conf) as f:
        c = yaml.safe_load(f)
    lazy.write_text(yaml.safe_dump({**c, "preload": False, "num_workers": 2}))
    out2 = tmp_path / "exp_workers"
    r = subprocess.run(_cmd(str(lazy), tiny_recipe, out2), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "(read lazily), 2 DataLoader workers" in (out2 / "train.log").read_text()
    assert "(preloaded), 0 DataLoader workers" in open(os.path.join(out1, "train.log")).read()
    _assert_same_losses(out1, out2, rel=1e-6, abs_=1e-7)


def test_sigkill_then_resume_loses_at_most_one_interval(single_run, tiny_recipe, tmp_path):
    conf, ref_out = single_run
    out = tmp_path / "exp_kill"
    proc = subprocess.Popen(_cmd(conf, tiny_recipe, out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip()]
            if steps and max(steps) >= 3:
                proc.send_signal(signal.SIGSTOP)  # freeze, read where it is, then kill hard
                steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if x.strip()]
                killed_at = max(steps)
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, "training finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model.pt").exists()
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert killed_at - ck["step"] <= 2  # save_interval_steps
    r = subprocess.run(_cmd(conf, tiny_recipe, out, "--resume"), env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.pt").exists()
    assert f"resumed from {out}/checkpoint.pt: step {ck['step']}" in (out / "train.log").read_text()
    # the resumed run continues exactly: every step's loss equals the uninterrupted run's
    ref, got = _train_losses(ref_out), {}
    for rec in _metrics(str(out)):
        if rec["phase"] == "train":
            got[rec["step"]] = rec["loss"]  # resumed steps overwrite the killed run's
    assert got.keys() == ref.keys()
    for s in ref:
        assert got[s] == pytest.approx(ref[s], rel=1e-5, abs=1e-6), f"step {s}"
    hist = json.load(open(out / "history.json"))
    assert [h["epoch"] for h in hist] == [1, 2, 3]


def test_warmup_cosine_schedule():
    from w2p.train.trainer import lr_lambda

    f = lr_lambda("warmup_cosine", {"warmup_steps": 10, "final_ratio": 0.05}, total_steps=110)
    vals = [f(s) for s in range(200)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[60] == pytest.approx(0.05 + 0.95 * 0.5, rel=1e-6)  # half-way through the decay
    assert all(a >= b for a, b in zip(vals[9:110], vals[10:111]))  # monotone decay
    assert vals[110] == pytest.approx(0.05) and vals[199] == pytest.approx(0.05)  # held at the floor after
    with pytest.raises(ValueError, match="number of training steps"):
        lr_lambda("warmup_cosine", {}, total_steps=None)
    with pytest.raises(ValueError, match="warmup_cosine"):
        lr_lambda("cosine??", {})


def test_resume_from_a_truncated_or_foreign_checkpoint_says_so(single_run, tiny_recipe, tmp_path):
    conf, out = single_run
    exp = tmp_path / "exp"
    shutil.copytree(out, exp)
    ck = exp / "checkpoint.pt"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 3])
    p = subprocess.run(_cmd(conf, tiny_recipe, exp, "--resume"), env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1 and "checkpoint.pt: cannot be read" in p.stderr and "Traceback" not in p.stderr, \
        p.stderr[-2000:]
    ck.write_bytes(data)
    other = _write_conf(tmp_path / "other.yaml", model_conf={"encoder": dict(TINY_ENCODER), "proj_hidden": 32})
    p = subprocess.run(_cmd(other, tiny_recipe, exp, "--resume"), env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1 and "does not fit this config's model" in p.stderr, p.stderr[-2000:]


MINI_EN_CONF = os.path.join(REPO, "egs", "mini_en", "w2p1", "conf", "train_wav2prompt.yaml")


def test_real_mini_en_config_two_processes_equal_one(tiny_recipe_bpe, tmp_path):
    """The real mini_en Wav2Prompt config (BatchNorm in the Conformer's conv modules, CTC warm-up, token term) on
    a tiny data set: 2 gloo processes give the losses of 1 process (BatchNorm statistics of the global batch:
    synced across ranks, every rank padded to the global batch's length; w2p/train/distributed.py)."""
    with open(MINI_EN_CONF) as f:
        assert yaml.safe_load(f)["model_conf"]["encoder"]["conv_norm"] == "batch_norm"
    over = ["--model_conf.bpe_model", f"{tiny_recipe_bpe}/bpe/bpe.model", "--batch_frames", "400",
            "--max_epoch", "2", "--max_steps", "4", "--model_conf.ctc_warmup_steps", "2", "--log_interval", "1",
            "--save_interval_steps", "0", "--scheduler_conf.warmup_steps", "2", "--num_threads", "1"]
    losses, valid = {}, {}
    for n in (1, 2):
        out = tmp_path / f"exp{n}"
        p = subprocess.run(_cmd(MINI_EN_CONF, tiny_recipe_bpe, out, "--nproc", str(n), *over), env=_env(),
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        losses[n] = _train_losses(str(out))
        valid[n] = [r["loss"] for r in _metrics(str(out)) if r["phase"] == "valid"]
    assert len(losses[1]) == 4 and losses[1].keys() == losses[2].keys()
    for s in losses[1]:
        assert losses[2][s] == pytest.approx(losses[1][s], rel=1e-4, abs=1e-5), f"step {s}"
    # validation (eval mode: the running statistics, updated identically) after the first epoch
    assert len(valid[1]) == 1 and valid[2] == pytest.approx(valid[1], rel=1e-4)
    assert "4 synced BatchNorm" in (tmp_path / "exp2" / "train.log").read_text()


def test_two_nodes_through_slurm_pl_equal_one_process(single_run, tiny_recipe, tmp_path):
    """utils/slurm.pl --num_nodes 2 with stand-in sbatch/srun: two "nodes" each start one torchrun (1 process
    each) that meet at the rendezvous slurm.pl exports; the run equals the 1-process run step by step."""
    import socket

    conf, out1 = single_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(_env(), **fake_slurm(tmp_path), W2P_RDZV_PORT=str(port))
    slurm = os.path.join(REPO, "egs", "TEMPLATE", "w2p1", "utils", "slurm.pl")
    out = tmp_path / "exp_nodes"
    cmd = [slurm, "--gpu", "0", "--num_nodes", "2", str(tmp_path / "log" / "train.log"),
           *_cmd(conf, tiny_recipe, out, "--num_nodes", "2", "--nproc", "1", "--max_steps", "2")]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log_text = (tmp_path / "log" / "train.log").read_text()
    assert p.returncode == 0, log_text[-3000:]
    assert "world 2" in (out / "train.log").read_text()
    l1, l2 = _train_losses(out1), _train_losses(str(out))
    assert sorted(l2) == [1, 2]
    for s in l2:
        assert l2[s] == pytest.approx(l1[s], rel=1e-4, abs=1e-5), f"step {s}"


_SUM_BY_KEY = """
import json, os, sys
from w2p.train.trainer import Dist
d = Dist(0)
vals = {"loss": 1.0 + d.rank, "ce": 2.0} if d.rank == 0 else {"loss": 1.0 + d.rank, "ce_st": 5.0, "mse": 0.5}
print(json.dumps(d.sum_by_key(vals)))
d.close()
"""


def test_ranks_with_different_stats_keys_reduce_over_their_union(tmp_path):
    """Validation stats may differ by rank (per-task CE only where a batch mixes tasks): the reduction agrees on
    the keys first instead of all-reducing tensors of different lengths."""
    import json
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "sum_by_key.py"
    script.write_text(_SUM_BY_KEY)
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(_env(), WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)))
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    want = {"ce": 2.0, "ce_st": 5.0, "loss": 3.0, "mse": 0.5}
    assert [json.loads(o.strip().splitlines()[-1]) for o, _ in outs] == [want, want]
