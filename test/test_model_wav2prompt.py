"""Wav2Prompt: losses, exact firing in training, natural firing at inference, gradients to the encoder only."""
import pytest
import torch
from conftest import TINY_ENCODER

from w2p.models import build_model
from w2p.train.dataset import DumpDataset, collate


def _model(llm, **kw):
    torch.manual_seed(0)
    conf = {"encoder": dict(TINY_ENCODER), "cif": {"dropout": 0.0}, **kw}
    return build_model("wav2prompt", conf, llm)


def _batch(tiny_recipe, llm, n=4):
    ds = DumpDataset(f"{tiny_recipe}/dump/fbank/train", llm=llm)
    return collate([ds[i] for i in range(n)])


def _fit(model, batch, steps: int, key: str) -> tuple[float, float]:
    """Adam steps on one batch; the stat ``key`` before the first and at the last step."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seen = []
    for _ in range(steps):
        loss, stats = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen.append(stats[key])
    return seen[0], seen[-1]


def _fingerprint(llm):
    return [float(p.double().sum()) for p in llm.model.parameters()]


def test_grads_reach_encoder_and_llm_stays_frozen(llm, tiny_recipe):
    model = _model(llm, ce_weight=1.0, mse_weight=1.0, qua_weight=1.0)
    batch = _batch(tiny_recipe, llm)
    before = _fingerprint(llm)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss, stats = model(batch)
    loss.backward()
    assert {"mse", "qua", "ce", "cos", "loss"} <= set(stats)
    assert stats["ce"] > 0 and stats["mse"] > 0
    enc_grads = [p.grad for n, p in model.named_parameters() if n.startswith("encoder.conformer.")]
    assert enc_grads and all(g is not None for g in enc_grads)
    assert sum(float(g.abs().sum()) for g in enc_grads) > 0
    assert model.predictor.proj.weight.grad.abs().sum() > 0  # quantity loss reaches the weight predictor
    opt.step()
    assert all(p.grad is None for p in llm.model.parameters())
    assert _fingerprint(llm) == before
    # the LLM is never part of the model's state or parameters
    assert not any(k.startswith("llm") for k in model.state_dict())
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_training_fires_exactly_once_per_target_token(llm, tiny_recipe):
    model = _model(llm)
    batch = _batch(tiny_recipe, llm)
    h, h_lens, alphas = model.encode(batch["feats"], batch["feat_lens"])
    U = torch.tensor([len(t) for t in batch["llm_tokens"]])
    out = model._cif(h, alphas, h_lens, target_lengths=U)
    assert torch.equal(out.out_lengths.cpu(), U)
    # inference fires naturally: count follows sum(alpha), not U
    prompts = model.prompts(batch["feats"], batch["feat_lens"]).vectors
    assert len(prompts) == 4 and all(p.shape[1] == llm.embed_dim for p in prompts)
    sums = alphas.detach().sum(1)
    for p, s in zip(prompts, sums):
        assert abs(p.shape[0] - float(s)) <= 1.0


def test_mse_learns_targets_on_one_batch(llm, tiny_recipe):
    model = _model(llm, qua_weight=0.5)
    batch = _batch(tiny_recipe, llm)
    first, last = _fit(model, batch, 30, "mse")
    assert last < 0.8 * first
    model.eval()
    _, ev = model(batch)
    assert {"len_exact", "readout_acc"} <= set(ev)


def test_ctc_branch_and_config_errors(llm, tiny_recipe):
    with pytest.raises(ValueError, match="bpe_vocab"):
        _model(llm, ctc_weight=0.3)
    model = _model(llm, ctc_weight=0.3, bpe_vocab=20)
    batch = _batch(tiny_recipe, llm)
    batch["bpe_tokens"] = [[i % 20 for i in range(len(t))] for t in batch["llm_tokens"]]
    loss, stats = model(batch)
    loss.backward()
    assert stats["ctc"] > 0 and model.ctc_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the frozen LLM"):
        build_model("wav2prompt", {"encoder": dict(TINY_ENCODER)}, None)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("nope", {}, llm)


def test_ctc_warmup_trains_only_ctc_then_everything(llm, tiny_recipe):
    with pytest.raises(ValueError, match="ctc_warmup_steps"):
        _model(llm, ctc_warmup_steps=5)
    model = _model(llm, ctc_weight=0.5, bpe_vocab=20, ctc_warmup_steps=3, mse_weight=1.0, qua_weight=1.0)
    batch = _batch(tiny_recipe, llm)
    batch["bpe_tokens"] = [[i % 20 for i in range(len(t))] for t in batch["llm_tokens"]]

    def grads_at(step, train=True):
        model.zero_grad(set_to_none=True)
        model.train(train)
        model.set_train_step(step)
        torch.manual_seed(1)
        loss, stats = model(batch)
        if train:
            loss.backward()
        return loss, stats

    loss, stats = grads_at(2)  # warm-up: the loss is the CTC term alone; MSE/quantity give no gradient
    assert loss.item() == pytest.approx(0.5 * stats["ctc"], rel=1e-5)
    assert model.proj.weight.grad.abs().sum() == 0
    assert model.ctc_head.weight.grad.abs().sum() > 0
    loss, stats = grads_at(3)  # after it: every term
    assert loss.item() == pytest.approx(stats["mse"] + stats["qua"] + 0.5 * stats["ctc"], rel=1e-5)
    assert model.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():  # validation (eval mode) always scores the full loss, even during the warm-up
        loss, stats = grads_at(0, train=False)
    assert loss.item() == pytest.approx(stats["mse"] + stats["qua"] + 0.5 * stats["ctc"], rel=1e-5)


def test_token_discrimination_matches_a_per_token_oracle_and_trains(llm, tiny_recipe):
    with pytest.raises(ValueError, match="tok_temperature"):
        _model(llm, tok_weight=0.5, tok_temperature=0.0)
    model = _model(llm, tok_weight=0.5, tok_temperature=0.2, mse_weight=0.0, qua_weight=0.0)
    model.eval()  # no CIF dropout: the same prompts for the oracle
    batch = _batch(tiny_recipe, llm)
    with torch.no_grad():
        h, h_lens, alphas = model.encode(batch["feats"], batch["feat_lens"])
        out = model._cif(h, alphas, h_lens, target_lengths=torch.tensor([len(t) for t in batch["llm_tokens"]]))
        pred = model.proj(out.out).float()

    def oracle(vocab):
        """each target token in vocab against every vocab token; the per-utterance means averaged"""
        cand = sorted(vocab)
        E = llm.embedding_weight.detach().float()[cand]
        per_utt = []
        for i, ids in enumerate(batch["llm_tokens"]):
            ces = [-torch.log_softmax(torch.nn.functional.cosine_similarity(pred[i, j][None], E, dim=-1) / 0.2,
                                      0)[cand.index(t)] for j, t in enumerate(ids) if t in vocab]
            per_utt.append(torch.stack(ces).mean())
        return float(torch.stack(per_utt).mean())

    batch_vocab = {t for ids in batch["llm_tokens"] for t in ids}
    _, stats = model(batch)  # no training vocabulary set: the batch's own tokens are the candidates
    assert stats["tok"] == pytest.approx(oracle(batch_vocab), rel=1e-4)
    vocab = batch_vocab | {7, 123, 4567}  # training-vocabulary tokens that are not in this batch
    model.set_train_vocab(vocab)
    loss, stats = model(batch)
    assert loss.item() == pytest.approx(0.5 * stats["tok"], rel=1e-5)
    assert stats["tok"] == pytest.approx(oracle(vocab), rel=1e-4)
    # a token outside the training vocabulary (validation) is left out of the mean, not scored against others
    vocab.discard(batch["llm_tokens"][0][0])
    model.set_train_vocab(vocab)
    _, stats = model(batch)
    assert stats["tok"] == pytest.approx(oracle(vocab), rel=1e-4)
    # it trains: the term falls on one batch and its gradient reaches the projection
    model.train()
    first, last = _fit(model, batch, 20, "tok")
    assert model.proj.weight.grad.abs().sum() > 0
    assert last < 0.7 * first


def test_token_discrimination_negatives_from_the_whole_vocabulary(llm, tiny_recipe):
    """tok_candidates: vocab = a softmax over every LLM token (oracle); sampled = the training vocabulary plus a
    uniform sample of the whole vocabulary, drawn per training step (seeded), fixed in validation; sampling all of
    the vocabulary gives the vocab term."""
    with pytest.raises(ValueError, match="tok_candidates"):
        _model(llm, tok_weight=0.5, tok_candidates="all")
    kw = {"tok_weight": 0.5, "tok_temperature": 0.2, "mse_weight": 0.0, "qua_weight": 0.0}
    batch = _batch(tiny_recipe, llm)
    V = int(llm.embedding_weight.shape[0])
    full = _model(llm, tok_candidates="vocab", **kw).eval()
    with torch.no_grad():
        h, h_lens, alphas = full.encode(batch["feats"], batch["feat_lens"])
        out = full._cif(h, alphas, h_lens, target_lengths=torch.tensor([len(t) for t in batch["llm_tokens"]]))
        pred = full.proj(out.out).float()
    E = torch.nn.functional.normalize(llm.embedding_weight.detach().float(), dim=-1)

    def oracle(cand):
        cand = sorted(cand)
        per_utt = []
        for i, ids in enumerate(batch["llm_tokens"]):
            logits = torch.nn.functional.normalize(pred[i, :len(ids)], dim=-1) @ E[cand].T / 0.2
            pos = torch.tensor([cand.index(t) for t in ids])
            per_utt.append(torch.nn.functional.cross_entropy(logits, pos))
        return float(torch.stack(per_utt).mean())

    train_vocab = {t for ids in batch["llm_tokens"] for t in ids}
    full.set_train_vocab(train_vocab)  # ignored: every token is a candidate
    _, stats = full(batch)
    assert stats["tok"] == pytest.approx(oracle(range(V)), rel=1e-4)
    assert stats["tok"] > oracle(train_vocab)  # more negatives, a harder softmax
    every = _model(llm, tok_candidates="sampled", tok_num_sampled=V + 10, **kw).eval()
    every.set_train_vocab(train_vocab)
    assert every(batch)[1]["tok"] == pytest.approx(stats["tok"], rel=1e-5)
    samp = _model(llm, tok_candidates="sampled", tok_num_sampled=300, tok_seed=4, **kw).eval()
    samp.set_train_vocab(train_vocab)
    fixed = samp._tok_sample("cpu")
    assert len(set(fixed.tolist())) == 300 and torch.equal(fixed, samp._tok_sample("cpu"))
    assert samp(batch)[1]["tok"] == pytest.approx(oracle(train_vocab | set(fixed.tolist())), rel=1e-4)
    samp.train()
    samp.set_train_step(7)
    s7 = samp._tok_sample("cpu")
    other = _model(llm, tok_candidates="sampled", tok_num_sampled=300, tok_seed=4, **kw).train()
    other.set_train_step(7)
    assert torch.equal(s7, other._tok_sample("cpu"))  # a function of (seed, step): every process draws the same
    samp.set_train_step(8)
    assert not torch.equal(s7, samp._tok_sample("cpu")) and not torch.equal(s7, fixed)
    loss, st = samp(batch)
    loss.backward()
    assert st["tok"] > 0 and samp.proj.weight.grad.abs().sum() > 0


def test_ce_term_uses_the_task_template(llm):
    from w2p.tasks import get_task

    model = _model(llm, ce_weight=1.0)
    assert model.ce_task == "asr" and model.ce_template == get_task("asr").template
    _model(llm, ce_template=get_task("asr").template)  # configs written before ce_task, with the same template
    with pytest.raises(ValueError, match="set model_conf.ce_task"):
        _model(llm, ce_template="Say it again: {speech}")
    with pytest.raises(ValueError, match="unknown task"):
        _model(llm, ce_task="dictation")
