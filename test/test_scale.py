"""Paper scale on CPU with tiny models: embeddings-only LLM loading (one tensor read), activation checkpointing
through the frozen LLM (gradients to the prompt only), and FSDP2-sharded LLM + 2 gloo processes == 1 process for
the paper's two LLM families (Llama, BLOOM)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import TINY_ENCODER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _RecordingSafeOpen:
    """safetensors.safe_open that records every tensor read (get_tensor / get_slice)."""

    reads: list = []

    def __init__(self, real):
        self.real = real

    def __call__(self, path, *a, **k):
        handle = self.real(path, *a, **k)
        outer = self

        class H:
            def __enter__(self):
                self.f = handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def keys(self):
                return self.f.keys()

            def get_tensor(self, name):
                outer.reads.append((os.path.basename(path), name))
                return self.f.get_tensor(name)

            def get_slice(self, name):
                outer.reads.append((os.path.basename(path), name))
                return self.f.get_slice(name)
        return H()


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_embeddings_only_reads_one_tensor_of_a_sharded_checkpoint(tiny_hf_llms, family, tmp_path, monkeypatch):
    import safetensors

    from w2p.llm import FrozenLLM

    src = tiny_hf_llms[family]
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        wmap = json.load(f)["weight_map"]
    assert len(set(wmap.values())) >= 3, "the fixture must be sharded"
    full = FrozenLLM.load(src)
    # every shard but the embedding's is replaced by garbage: an embeddings-only load must not touch them
    d = tmp_path / "ckpt"
    shutil.copytree(src, d)
    emb_key = next(k for k in wmap if k.endswith(("embed_tokens.weight", "word_embeddings.weight")))
    for shard in set(wmap.values()) - {wmap[emb_key]}:
        (d / shard).write_bytes(b"\0" * 64)
    rec = _RecordingSafeOpen(safetensors.safe_open)
    rec.reads = []
    monkeypatch.setattr(safetensors, "safe_open", rec)
    emb = FrozenLLM.load(str(d), embeddings_only=True)
    assert rec.reads == [(wmap[emb_key], emb_key)]
    assert emb.embeddings_only and torch.equal(emb.embedding_weight, full.embedding_weight)
    assert (emb.embed_dim, emb.vocab_size, emb.eos_id) == (full.embed_dim, full.vocab_size, full.eos_id)
    assert emb.tokenize(["turn on the lights"]) == full.tokenize(["turn on the lights"])
    assert emb.nearest_tokens(full.embed([5, 77, 901])) == [5, 77, 901]
    with pytest.raises(RuntimeError, match="loaded embeddings-only.*ce_weight > 0"):
        emb.ce_loss("{speech}", [torch.zeros(2, emb.embed_dim)], ["hi"])
    # only the table's bytes are resident: nothing of the model beyond it
    assert sum(p.numel() for p in emb.model.parameters()) == emb.vocab_size * emb.embed_dim


def test_gguf_embeddings_read_directly_equal_the_converted_table(llm):
    """The default LLM's GGUF: token_embd.weight read (de-quantised) from the file equals the table of the
    converted safetensors dir that the full load uses."""
    from w2p.llm import _default_gguf, read_gguf_embeddings

    assert torch.equal(read_gguf_embeddings(_default_gguf()), llm.embedding_weight)


def _tiny_conf(path, **extra):
    conf = {"model": "wav2prompt",
            "model_conf": {"encoder": dict(TINY_ENCODER), "cif": {"dropout": 0.0}, "qua_weight": 0.5,
                           "tok_weight": 0.2, **extra.pop("model_conf", {})},
            "max_epoch": 1, "max_steps": 3, "batch_frames": 400, "log_interval": 1, "save_interval_steps": 0,
            "nbest_average": 1, "scheduler_conf": {"warmup_steps": 2}, "optim_conf": {"lr": 2e-3}, **extra}
    with open(path, "w") as f:
        yaml.safe_dump(conf, f)
    return conf


def _train_losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f]
    return {r["step"]: r["loss"] for r in rows if r["phase"] == "train"}, [r for r in rows if r["phase"] == "valid"]


def test_regression_phase_losses_equal_with_embeddings_only(tiny_hf_llms, tiny_recipe, tmp_path):
    """Wav2Prompt without a CE term trains to the same losses from the embeddings-only LLM as from the full one."""
    from w2p.llm import FrozenLLM
    from w2p.train.trainer import Trainer, model_needs_llm_forward

    conf = _tiny_conf(tmp_path / "c.yaml")
    assert not model_needs_llm_forward("wav2prompt", conf["model_conf"])
    assert model_needs_llm_forward("w2p_fewshot", conf["model_conf"]) and model_needs_llm_forward("encoder_llm", {})
    assert model_needs_llm_forward("wav2prompt", {**conf["model_conf"], "ce_weight": 1.0})
    from w2p.train.config import load_config

    got = {}
    for kind in ("full", "embeddings"):
        c = load_config(str(tmp_path / "c.yaml"))
        llm = FrozenLLM.load(tiny_hf_llms["llama"], embeddings_only=kind == "embeddings")
        out = str(tmp_path / kind)
        tr = Trainer(c, train_dir=f"{tiny_recipe}/dump/fbank/train", valid_dir=f"{tiny_recipe}/dump/fbank/dev",
                     output_dir=out, llm=llm)
        tr.run()
        got[kind] = _train_losses(out)
    assert len(got["full"][0]) == 3 and got["full"] == got["embeddings"]


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_checkpointed_ce_equals_the_reference_and_only_the_prompt_gets_gradients(tiny_hf_llms, family):
    from w2p.llm import FrozenLLM

    plain = FrozenLLM.load(tiny_hf_llms[family])
    ck = FrozenLLM.load(tiny_hf_llms[family])
    ck.enable_checkpointing()
    g = torch.Generator().manual_seed(0)
    speech = [torch.randn(n, plain.embed_dim, generator=g) * 0.02 for n in (3, 6, 4)]
    targets = ["turn on the lights", "what time is it", "call my sister"]
    tmpl = "Repeat: {speech}"
    grads, losses = [], []
    for llm, fn in ((plain, plain.ce_loss_reference), (ck, ck.ce_loss)):
        sp = [s.clone().requires_grad_() for s in speech]
        loss = fn(tmpl, sp, targets)
        loss.backward()
        losses.append(loss.detach())
        grads.append([s.grad for s in sp])
        assert all(p.grad is None and not p.requires_grad for p in llm.model.parameters())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(*grads):
        assert b.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def _run_train(conf_path, recipe, out, llm_dir, nproc):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "w2p.bin.train", "--config", str(conf_path), "--train_dir",
           f"{recipe}/dump/fbank/train", "--valid_dir", f"{recipe}/dump/fbank/dev", "--output_dir", str(out),
           "--llm", llm_dir, "--nproc", str(nproc), "--num_threads", "1"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return (out / "train.log").read_text()


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_fsdp_sharded_llm_two_processes_equal_one(tiny_hf_llms, tiny_recipe, tmp_path, family):
    """The CE phase with the frozen LLM sharded by FSDP2 over 2 gloo processes (activation checkpointing on, the
    speech model's gradients summed across ranks) gives the losses of 1 process at the same global batch."""
    conf = tmp_path / "c.yaml"
    _tiny_conf(conf, model_conf={"ce_weight": 1.0}, llm_fsdp=True, llm_checkpointing=True, max_steps=4,
               max_epoch=2)  # 3 steps an epoch: a validation with the sharded LLM, then one more step
    log1 = _run_train(conf, tiny_recipe, tmp_path / "one", tiny_hf_llms[family], 1)
    log2 = _run_train(conf, tiny_recipe, tmp_path / "two", tiny_hf_llms[family], 2)
    assert "FSDP False" in log1 and "FSDP True" in log2 and "checkpointing True" in log2
    (l1, v1), (l2, v2) = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert len(l1) == 4 and l1.keys() == l2.keys()
    for s in l1:
        assert l2[s] == pytest.approx(l1[s], rel=1e-4, abs=1e-5), f"step {s}"
    assert len(v1) == 1 and [r["ce"] for r in v2] == pytest.approx([r["ce"] for r in v1], rel=1e-4)
