"""Few-shot fine-tuning (w2p.models.fewshot, w2p.bin.finetune): templates, loss, init, LoRA, end to end."""
import os

import numpy as np
import pytest
import torch
import yaml

from conftest import SENTENCES, TINY_ENCODER

from w2p.models.fewshot import CascadeLoRA, FewShotWav2Prompt, batch_prompts, task_target
from w2p.tasks import TASKS, intents_prompt

TINY = {"encoder": dict(TINY_ENCODER), "cif": {"dropout": 0.0}}
INTENTS = ["play_music", "set_alarm", "call_contact"]


def write_task_sets(root: str, llm, seed: int = 0) -> str:
    """dump/fbank/{st,slu,sqa}_fewshot + st_test: synthetic fbank, text, ref (+ question / intents)."""
    import kaldiio

    rng = np.random.default_rng(seed)
    fb = os.path.join(root, "dump", "fbank")
    sets = {"st_fewshot": 6, "slu_fewshot": 6, "sqa_fewshot": 4, "st_test": 2}
    for name, n in sets.items():
        d = os.path.join(fb, name)
        os.makedirs(d, exist_ok=True)
        task = name.split("_")[0]
        utts = {f"{name}-{i:03d}": SENTENCES[(i * 3 + len(name)) % len(SENTENCES)] for i in range(n)}
        with kaldiio.WriteHelper(f"ark,scp:{d}/feats.ark,{d}/feats.scp") as w:
            for u in utts:
                w(u, rng.normal(0, 1, (int(rng.integers(60, 120)), 80)).astype(np.float32))
        refs = {"st": lambda i, t: f"Phrase {i} en français", "slu": lambda i, t: INTENTS[i % 3],
                "sqa": lambda i, t: ["red", "two", "Paris", "John"][i % 4]}[task]
        with open(f"{d}/text", "w") as f:
            f.writelines(f"{u} {t}\n" for u, t in utts.items())
        with open(f"{d}/ref", "w") as f:
            f.writelines(f"{u} {refs(i, t)}\n" for i, (u, t) in enumerate(utts.items()))
        with open(f"{d}/llm_tokens", "w") as f:
            for u, ids in zip(utts, llm.tokenize(list(utts.values()))):
                f.write(f"{u} {' '.join(map(str, ids))}\n")
        if task == "slu":
            with open(f"{d}/intents", "w") as f:
                f.writelines(f"{x}\n" for x in INTENTS)
        if task == "sqa":
            with open(f"{d}/question", "w") as f:
                f.writelines(f"{u} What is it?\n" for u in utts)
    return fb


@pytest.fixture(scope="module")
def task_sets(tmp_path_factory, llm):
    return write_task_sets(str(tmp_path_factory.mktemp("fewshot")), llm)


@pytest.fixture(scope="module")
def small_llm_dir(tmp_path_factory, llm):
    """A tiny random Llama with the real tokenizer saved as an HF dir (loadable with --llm DIR): fast tests."""
    d = str(tmp_path_factory.mktemp("tiny_llm"))
    m = tiny_llm(llm, seed=2)
    m.model.save_pretrained(d, safe_serialization=True)
    llm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def small(small_llm_dir):
    from w2p.llm import FrozenLLM

    return FrozenLLM.load(small_llm_dir)


def _batch(llm, tasks, refs, texts=None, **extra):
    texts = texts or SENTENCES[:len(tasks)]
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(len(tasks), 90, 80, generator=g)
    return {"utt_ids": [f"u{i}" for i in range(len(tasks))], "feats": feats,
            "feat_lens": torch.tensor([90] * (len(tasks) - 1) + [70]), "text": texts,
            "llm_tokens": llm.tokenize(texts), "ref": refs, "task": tasks, **extra}


def test_batch_prompts_are_the_zero_shot_templates():
    batch = {"utt_ids": ["u0", "u1", "u2"], "question": ["", "", "Who is it?"],
             "intent_set": ["", "play music, set alarm", ""]}
    templates, fields = batch_prompts(batch, ["st", "slu", "sqa"])
    assert templates == [TASKS["st"].template, TASKS["slu"].template, TASKS["sqa"].template]
    assert fields == {"intents": ["", "play music, set alarm", ""], "question": ["", "", "Who is it?"]}
    assert task_target("slu", "set_alarm") == "set alarm" and task_target("st", "Bonjour") == "Bonjour"
    with pytest.raises(KeyError, match="question"):
        batch_prompts({"utt_ids": ["u0"]}, ["sqa"])


def test_mixed_task_ce_matches_the_reference(small):
    """The grouped, prefix-cached CE of a batch mixing tasks (per-utterance templates and fields) == the plain
    full-forward oracle on the decoder's prompts, with a cold and a warm prefix cache; gradients reach the speech."""
    llm = small
    torch.manual_seed(0)
    D = llm.embed_dim
    speech = [torch.randn(5, D), "hello there", torch.randn(3, D), torch.randn(7, D)]
    tasks = ["st", "st", "sqa", "sqa"]
    batch = {"utt_ids": ["a", "b", "c", "d"], "question": ["", "", "Who is it?", "Where is the big red house now?"]}
    templates, fields = batch_prompts(batch, tasks)
    targets = ["Le chat", "Bonjour à tous les amis", "John", "in the garden"]
    ref = llm.ce_loss_reference(templates, speech, targets, **fields)
    llm._prefix_cache.clear()
    for _ in range(2):  # cache fill, cache hit
        assert torch.allclose(llm.ce_loss(templates, speech, targets, **fields), ref, atol=1e-5)
    assert len(llm._prefix_cache) == 2
    sp = [x.clone().requires_grad_() if torch.is_tensor(x) else x for x in speech]
    llm.ce_loss(templates, sp, targets, **fields).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in sp if torch.is_tensor(x))


def test_fewshot_loss_terms_and_grads(small):
    llm = small
    torch.manual_seed(0)
    model = FewShotWav2Prompt(llm, **TINY, mse_weight=0.7, qua_weight=0.3, ce_weight=1.0)
    batch = _batch(llm, ["st", "slu", "sqa"], ["Bonjour le monde", "set_alarm", "red"],
                   question=["", "", "What colour is it?"], intent_set=["", intents_prompt(INTENTS), ""])
    loss, st = model(batch)
    assert np.isfinite(st["ce"]) and st["ce"] > 0 and st["mse"] > 0 and st["qua"] >= 0
    assert abs(st["loss"] - (st["ce"] + 0.7 * st["mse"] + 0.3 * st["qua"])) < 1e-4 * max(1.0, st["loss"])
    loss.backward()
    assert model.proj.weight.grad is not None and model.proj.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is None for p in llm.model.parameters())
    # ablation: lambda_mse = 0 drops the MSE term from the loss (it is still logged)
    nomse = FewShotWav2Prompt(llm, **TINY, mse_weight=0.0, qua_weight=0.3)
    nomse.load_state_dict(model.state_dict())
    _, s0 = nomse(batch)
    assert abs(s0["loss"] - (s0["ce"] + 0.3 * s0["qua"])) < 1e-4 * max(1.0, s0["loss"])
    assert abs(s0["ce"] - st["ce"]) < 1e-4 and s0["mse"] > 0
    # a missing per-task field is a clear error naming the utterance
    bad = dict(batch, intent_set=["", "", ""])
    with pytest.raises(KeyError, match="u1.*intent_set"):
        model(bad)


def test_init_from_stage4_wav2prompt(small):
    llm = small
    """Same parameter names as Wav2Prompt: a stage-4 state_dict loads strictly (CTC head, if any, is dropped)."""
    from w2p.models.wav2prompt import Wav2Prompt

    w2p = Wav2Prompt(llm, **TINY)
    ft = FewShotWav2Prompt(llm, **TINY, ctc_weight=0.3, bpe_vocab=50, ce_template="x {speech}",
                           ctc_warmup_steps=400, tok_weight=0.2, tok_temperature=0.1)
    # no stage-4 CTC warm-up and no token-discrimination term carried over
    assert ft._loss_weights() == (ft.mse_weight, ft.qua_weight, 0.0, 0.0)
    ft.load_state_dict(w2p.state_dict())  # strict
    assert ft.ctc_head is None
    for k, v in w2p.state_dict().items():
        assert torch.equal(ft.state_dict()[k], v)


def tiny_llm(llm, seed=0):
    """A randomly initialised 2-layer Llama with the real tokenizer (LoRA tests must not touch the session LLM)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from w2p.llm import FrozenLLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=llm.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=llm.eos_id, pad_token_id=llm.pad_id)
    return FrozenLLM(LlamaForCausalLM(cfg), llm.tokenizer)


def test_lora_trains_adapters_and_leaves_base_weights_untouched(llm):
    small = tiny_llm(llm)
    base = {n: p.detach().clone() for n, p in small.model.named_parameters()}
    model = FewShotWav2Prompt(small, **TINY, llm_lora=True, lora_conf={"r": 4, "alpha": 8})
    sd = model.state_dict()
    assert any(k.startswith("lora.") for k in sd)
    assert not any(("embed_tokens" in k or "q_proj.base_layer" in k or "mlp" in k) for k in sd)
    opt_params = [p for p in model.parameters() if p.requires_grad]
    lora_ids = {id(p) for p in model.lora.parameters()}
    assert lora_ids <= {id(p) for p in opt_params}
    opt = torch.optim.Adam(opt_params, lr=1e-2)
    batch = _batch(small, ["st", "st"], ["Bonjour", "Au revoir"])
    probe = small.build_inputs(TASKS["st"].template, ["hello world"])
    with torch.no_grad():
        before_out = small.model(inputs_embeds=probe.inputs_embeds, attention_mask=probe.attention_mask).logits
    for _ in range(3):
        opt.zero_grad()
        loss, _ = model(batch)
        loss.backward()
        opt.step()
    after = dict(small.model.named_parameters())
    for n, p in base.items():  # base weights: same values, still frozen (peft renames q_proj -> q_proj.base_layer)
        q = after[n] if n in after else after[n.replace("q_proj.", "q_proj.base_layer.")
                                               .replace("v_proj.", "v_proj.base_layer.")]
        assert torch.equal(q, p) and not q.requires_grad, n
    assert any(float(m.weight.detach().abs().sum()) > 0 for k, m in model.lora.items() if k.endswith("__B"))
    with torch.no_grad():
        tuned = small.model(inputs_embeds=probe.inputs_embeds, attention_mask=probe.attention_mask).logits
        from peft.tuners.lora import LoraLayer

        for m in small.model.modules():
            if isinstance(m, LoraLayer):
                m.enable_adapters(False)
        off = small.model(inputs_embeds=probe.inputs_embeds, attention_mask=probe.attention_mask).logits
    assert not torch.allclose(tuned, before_out)  # the adapters do act
    assert torch.allclose(off, before_out, atol=1e-6)  # without them the LLM is exactly the original
    with pytest.raises(RuntimeError, match="already carries LoRA"):
        small.attach_lora(None)


def _spm(tmp_path):
    import sentencepiece as spm

    txt = tmp_path / "bpe.txt"
    txt.write_text("\n".join(SENTENCES * 4) + "\n")
    spm.SentencePieceTrainer.train(input=str(txt), model_prefix=str(tmp_path / "bpe"), vocab_size=40,
                                   model_type="bpe", minloglevel=2)
    return str(tmp_path / "bpe.model")


def test_cascade_lora_trains_only_adapters(llm, tmp_path):
    small = tiny_llm(llm, seed=1)
    bpe = _spm(tmp_path)
    with pytest.raises(ValueError, match="llm_lora"):
        CascadeLoRA(small, encoder=dict(TINY_ENCODER), bpe_model=bpe, llm_lora=False)
    model = CascadeLoRA(small, encoder=dict(TINY_ENCODER), bpe_model=bpe, lora_conf={"r": 2})
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("lora.") for n in trainable)
    model.train()
    assert not model.encoder.training  # the frozen ASR transcribes in eval mode
    batch = _batch(small, ["slu", "slu"], ["set_alarm", "play_music"], intent_set=[intents_prompt(INTENTS)] * 2)
    loss, st = model(batch)
    loss.backward()
    assert np.isfinite(st["ce"]) and set(model._transcripts) == {"u0", "u1"}
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("lora."))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.lora.parameters())


def test_finetune_end_to_end_then_decode(small, small_llm_dir, task_sets, tmp_path):
    llm = small
    """Stage-4-like exp -> w2p.bin.finetune (union of task sets, --init) -> model.pt decodable by w2p.decode."""
    from w2p.bin import finetune
    from w2p.decode import System, decode_task, load_set
    from w2p.models import load_trained
    from w2p.models.wav2prompt import Wav2Prompt

    init = tmp_path / "w2p"
    init.mkdir()
    torch.manual_seed(0)
    w2p = Wav2Prompt(llm, **TINY, ctc_weight=0.0)
    torch.save(w2p.state_dict(), init / "model.pt")
    (init / "config.yaml").write_text(yaml.safe_dump({"model": "wav2prompt", "llm": small_llm_dir, "model_conf": {
        **TINY, "ce_template": "Repeat: {speech}", "mse_weight": 1.0, "encoder": {**TINY_ENCODER,
                                                                                  "cmvn": "/nonexistent.npz"}}}))
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump({"model_conf": {"mse_weight": 0.5, "qua_weight": 0.2}, "max_epoch": 1,
                                   "max_epoch_per_task": {"slu": 2},
                                   "batch_frames": 1000, "max_batch_size": 4, "optim_conf": {"lr": 1e-3},
                                   "scheduler": "none", "log_interval": 1, "nbest_average": 1}))
    out = tmp_path / "w2p_fewshot"
    sets = [os.path.join(task_sets, s) for s in ("st_fewshot", "slu_fewshot", "sqa_fewshot")]
    rc = finetune.main(["--config", str(cfg), "--init_exp", str(init), "--train_sets", *sets, "--output_dir",
                        str(out), "--n_valid", "1"])
    assert rc == 0
    conf = yaml.safe_load((out / "config.yaml").read_text())
    assert conf["model"] == "w2p_fewshot" and conf["model_conf"]["mse_weight"] == 0.5
    assert conf["max_epoch"] == 2 and "max_epoch_per_task" not in conf
    assert "ce_template" not in conf["model_conf"] and "cmvn" not in conf["model_conf"]["encoder"]
    tr = dict(line.split(maxsplit=1) for line in (out / "data" / "train" / "task").read_text().splitlines())
    va = (out / "data" / "valid" / "task").read_text().split()
    assert sorted(set(tr.values())) == ["slu", "sqa", "st"] and len(tr) == 13 and len(va) == 6
    iset = (out / "data" / "train" / "intent_set").read_text()
    assert intents_prompt(INTENTS) in iset
    hist = [h for h in map(yaml.safe_load, (out / "metrics.jsonl").read_text().splitlines()) if h["phase"] == "valid"]
    assert hist and {"ce_st", "ce_slu", "ce_sqa"} <= set(hist[-1])
    # the fine-tuned weights moved away from the initial ones
    ft = torch.load(out / "model.pt", weights_only=True)
    assert not torch.equal(ft["proj.weight"], w2p.state_dict()["proj.weight"])
    # stage 8: the decoder loads it like any system and decodes with the zero-shot template
    model, _ = load_trained(str(out), llm)
    ts = load_set(os.path.join(task_sets, "st_test"))
    hyps, timing = decode_task(llm, System("w2p_fewshot", "wav2prompt", model), "st", ts, beam=1,
                               max_new_tokens=3, batch_size=2)
    assert set(hyps) == set(ts.utt_ids) and timing["template"] == TASKS["st"].template


def test_finetune_lora_saves_adapters_and_skips_cascade_without_lora(small_llm_dir, task_sets, tmp_path, llm):
    """--llm_lora true: the adapters are in model.pt and come back when the decoder rebuilds the system on a fresh
    LLM; the cascade's few-shot run is a no-op without LoRA (--only_with_lora)."""
    from w2p.bin import finetune
    from w2p.llm import FrozenLLM
    from w2p.models import load_trained
    from w2p.models.wav2prompt import Wav2Prompt

    small = FrozenLLM.load(small_llm_dir)
    init = tmp_path / "w2p"
    init.mkdir()
    torch.save(Wav2Prompt(small, **TINY).state_dict(), init / "model.pt")
    (init / "config.yaml").write_text(yaml.safe_dump({"model": "wav2prompt", "llm": small_llm_dir,
                                                      "model_conf": TINY}))
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump({"model_conf": {"lora_conf": {"r": 2, "alpha": 4}}, "max_epoch": 1,
                                   "batch_frames": 1000, "max_batch_size": 4, "optim_conf": {"lr": 1e-2},
                                   "scheduler": "none", "nbest_average": 1}))
    out = tmp_path / "fs_lora"
    st = os.path.join(task_sets, "st_fewshot")
    skipped = tmp_path / "cascade"
    assert finetune.main(["--config", str(cfg), "--init_exp", str(tmp_path / "missing_asr"), "--train_sets", st,
                          "--output_dir", str(skipped), "--only_with_lora"]) == 0
    assert not skipped.exists()
    assert finetune.main(["--config", str(cfg), "--init_exp", str(init), "--train_sets", st, "--output_dir",
                          str(out), "--n_valid", "1", "--llm_lora", "true"]) == 0
    sd = torch.load(out / "model.pt", weights_only=True)
    b_keys = [k for k in sd if k.startswith("lora.") and k.endswith("__B.weight")]
    assert b_keys and any(float(sd[k].abs().sum()) > 0 for k in b_keys)
    fresh = FrozenLLM.load(small_llm_dir)
    model, conf = load_trained(str(out), fresh)
    assert conf["model_conf"]["llm_lora"] is True
    assert torch.equal(model.state_dict()[b_keys[0]], sd[b_keys[0]])
