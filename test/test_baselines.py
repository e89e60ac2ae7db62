"""Baselines: CTC ASR (cascade front end) and Encoder-LLM."""
import math
import os

import pytest
import torch
from conftest import SENTENCES, TINY_ENCODER

from w2p.models import build_model
from w2p.train.dataset import DumpDataset, collate

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("bpe")
    (d / "text").write_text("\n".join(SENTENCES * 4) + "\n")
    spm.SentencePieceTrainer.train(input=str(d / "text"), model_prefix=str(d / "bpe"), vocab_size=60,
                                   model_type="bpe", character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2)
    return str(d / "bpe.model")


def _ctc(bpe_model):
    torch.manual_seed(0)
    return build_model("asr_ctc", {"encoder": dict(TINY_ENCODER), "bpe_model": bpe_model}, None)


def test_ctc_asr_trains_and_reports_dev_ter(tiny_recipe, bpe_model):
    model = _ctc(bpe_model)
    assert model.needs_llm is False and model.blank == model.vocab_size
    ds = DumpDataset(f"{tiny_recipe}/dump/fbank/train", bpe_model=bpe_model)
    batch = collate([ds[i] for i in range(4)])
    assert "bpe_tokens" in batch
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss, stats = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["loss"])
    assert math.isfinite(losses[0]) and losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        _, stats = model(batch)
    assert 0.0 <= stats["ter"] <= 200.0
    out = model.transcribe(batch["feats"], batch["feat_lens"], beam=3)
    assert len(out) == 4 and all(isinstance(t, str) for t in out)


def test_ctc_greedy_and_prefix_beam_decoding(bpe_model):
    model = _ctc(bpe_model)
    B = model.blank
    # frames: a a blank a b b  -> greedy collapse "a a b" (blank separates the repeated a)
    path = [3, 3, B, 3, 5, 5]
    lp = torch.full((1, len(path), model.vocab_size + 1), -20.0)
    for t, c in enumerate(path):
        lp[0, t, c] = -0.01
    lens = torch.tensor([len(path)])
    assert model.greedy_ids(lp, lens) == [[3, 3, 5]]
    assert model.prefix_beam_ids(lp, lens, beam=4) == [[3, 3, 5]]
    # a case where the best path is not the best labelling: P(blank)=0.4 and P(x)=0.35+0.25 split over 2 labels
    lp = torch.full((1, 2, model.vocab_size + 1), -30.0)
    lp[0, :, B] = math.log(0.4)
    lp[0, :, 7] = math.log(0.35)
    lp[0, :, 8] = math.log(0.25)
    assert model.greedy_ids(lp, torch.tensor([2])) == [[]]
    # labelling "7": 0.35*0.35 + 2*0.35*0.4 = 0.4025 > "" 0.16
    assert model.prefix_beam_ids(lp, torch.tensor([2]), beam=5) == [[7]]


def test_ctc_needs_bpe_model_or_vocab():
    with pytest.raises(ValueError, match="bpe_model"):
        build_model("asr_ctc", {"encoder": dict(TINY_ENCODER)}, None)


def test_encoder_llm_ce_only_grads_reach_encoder_not_llm(llm, tiny_recipe):
    torch.manual_seed(0)
    model = build_model("encoder_llm", {"encoder": dict(TINY_ENCODER), "stack": 2}, llm)
    assert model.needs_llm and "llm" not in dict(model.named_children())
    assert not any(n.startswith("llm.") for n in model.state_dict())
    ds = DumpDataset(f"{tiny_recipe}/dump/fbank/train", llm=llm)
    batch = collate([ds[i] for i in range(3)])
    before = [float(p.double().sum()) for p in llm.model.parameters()][:5]
    loss, stats = model(batch)
    loss.backward()
    assert math.isfinite(stats["loss_ce"]) and stats["loss_ce"] > 0
    assert model.connector.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("encoder.conformer."))
    assert all(p.grad is None for p in llm.model.parameters())
    assert [float(p.double().sum()) for p in llm.model.parameters()][:5] == before
    # stacking: one vector per `stack` encoder frames, in the LLM embedding space
    model.eval()
    with torch.no_grad():
        h, h_lens = model.encoder(batch["feats"], batch["feat_lens"])
        vecs = model.prompts(batch["feats"], batch["feat_lens"]).vectors
    assert [v.shape[0] for v in vecs] == [(int(n) + 1) // 2 for n in h_lens]
    assert all(v.shape[1] == llm.embed_dim for v in vecs)


CONF = os.path.join(os.path.dirname(__file__), "..", "egs", "mini_en", "w2p1", "conf")


@pytest.mark.parametrize("name", ["train_asr_ctc", "train_encoder_llm", "train_wav2prompt_nomse"])
def test_recipe_configs_build(name, llm):
    import yaml

    from w2p.tasks import get_task

    conf = yaml.safe_load(open(os.path.join(CONF, f"{name}.yaml")))
    mc = dict(conf["model_conf"])
    if conf["model"] == "asr_ctc":
        mc = dict(mc, bpe_model=None, vocab_size=500)  # the BPE model is made by stage 3
    elif "bpe_model" in mc:
        mc = {k: v for k, v in mc.items() if k != "bpe_model"} | {"bpe_vocab": 500}
    model = build_model(conf["model"], mc, llm)
    assert sum(p.numel() for p in model.parameters()) > 1e5
    if name == "train_wav2prompt_nomse":
        assert conf["model_conf"]["mse_weight"] == 0 and conf["model_conf"]["ce_weight"] > 0
        assert model.ce_template == get_task("asr").template
    if name == "train_encoder_llm":
        assert model.template == get_task("asr").template


def test_decode_configs_name_every_system_and_task():
    import yaml

    from w2p.decode import System
    from w2p.synth import mini_en
    from w2p.tasks import TASKS

    for f in ("decode.yaml", "decode_gpu.yaml"):
        conf = yaml.safe_load(open(os.path.join(CONF, f)))
        # every task of the mini_en corpus (st_es / st_de are the librispeech recipe's Europarl-ST / CoVoST 2 tasks)
        assert set(conf["tasks"]) == {"asr", *mini_en.TASKS} and set(conf["tasks"]) <= set(TASKS)
        assert "systems" not in conf  # the recipe's one list is conf/systems.yaml (test_systems.py)
        System("gold", "gold")  # kinds are the ones System accepts
        assert conf["beam"] >= 1 and conf["repetition_penalty"] >= 1.0
