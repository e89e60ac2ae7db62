"""Wav2Prompt (Deng, Sun, Woodland 2024): speech -> Conformer -> CIF -> projection to LLM token embeddings.

Training (ASR data only):
    L = mse_weight * MSE(prompt_i, E[y_i]) + qua_weight * |sum(alpha) - U| + ctc_weight * CTC(encoder, BPE)
        + ce_weight * CE_LLM(target | the ce_task's template with the speech prompt)
        + tok_weight * CE(cos(prompt_i, E[v]) / tok_temperature over the training vocabulary v, target y_i)
where y_1..y_U is the transcript tokenised by the frozen LLM's tokenizer (no special tokens) and E its frozen
input-embedding table. In training the CIF weights are scaled so that each utterance fires exactly U times (one
vector per target token); at inference CIF fires naturally (threshold + tail rule).

CTC warm-up (``ctc_warmup_steps``): for the first N optimiser steps only the CTC term trains (the encoder). Trained
jointly from scratch, the MSE and quantity terms pull the encoder towards a position-only solution (alpha flat,
fires evenly spaced, CTC stuck near the unigram plateau); once CTC has taught the encoder where the tokens are,
the CIF weights learn to follow them. Validation always uses the full loss, so best-epoch selection is unaffected.

Token-discrimination term (``tok_weight``, an auxiliary of ours, not in the paper): MSE pulls each prompt vector
towards its target embedding but does not push it away from the embeddings of similar-sounding words, which is
what the LLM confuses ("spoons" read as "poems"). A softmax over the cosine to the embeddings of every token of the
training transcripts (``set_train_vocab``, called by the trainer; a small set, so the term is cheap where the whole
vocabulary would not be) makes the nearest token the right one (its effect: egs/mini_en/w2p1/README.md).
``tok_candidates`` chooses the candidates: ``train`` (that set, the default), ``sampled`` (that set plus
``tok_num_sampled`` tokens drawn uniformly from the LLM's whole vocabulary, afresh every training step, a fixed draw
in validation: the prompts are also pushed away from words no transcript has; sampled softmax with uniform
negatives, no correction) or ``vocab`` (the whole vocabulary: exact, costly on CPU).

MSE is measured in units of the embedding table's standard deviation (the projection predicts E[y]/std and the
prompt is that times std), so the loss weights do not depend on the LLM's embedding scale. Every loss term is a
per-utterance mean averaged over the batch (exactly splittable across processes).
"""
from __future__ import annotations

import torch
from torch import nn

from w2p.models.abs_model import SUBSAMPLING, AbsW2PModel, SpeechPrompts
from w2p.models.encoder import build_encoder
from w2p.tasks import get_task


def _pad_ids(seqs: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(s) for s in seqs], dtype=torch.long, device=device)
    out = torch.full((len(seqs), max(1, int(lens.max()))), pad, dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        if s:
            out[i, :len(s)] = torch.tensor(s, dtype=torch.long, device=device)
    return out, lens


def regression_terms(pred: torch.Tensor, tgt: torch.Tensor, alphas: torch.Tensor, U: torch.Tensor):
    """Wav2Prompt's embedding regression, shared by stage 4 and few-shot fine-tuning.

    pred, tgt: (B, U_max, D) prompt vectors and target embeddings (units of the embedding std); U: (B,) target
    lengths. Returns (mse, quantity, umask): per-utterance means averaged over the batch, and the (B, U_max) mask."""
    umask = (torch.arange(pred.shape[1], device=pred.device)[None, :] < U[:, None]).float()
    mse = ((((pred - tgt) ** 2).mean(-1) * umask).sum(1) / U.float()).mean()
    qua = (alphas.float().sum(1) - U.float()).abs().mean()
    return mse, qua, umask


class Wav2Prompt(AbsW2PModel):
    needs_llm = True

    @classmethod
    def needs_llm_forward(cls, model_conf: dict) -> bool:
        """Only the CE term runs the LLM; MSE, quantity, CTC, the token term and readout use its embedding table."""
        return float((model_conf or {}).get("ce_weight", 0.0) or 0.0) > 0

    def __init__(self, llm, encoder: dict | None = None, cif: dict | None = None, proj_hidden: int = 0,
                 mse_weight: float = 1.0, qua_weight: float = 1.0, ctc_weight: float = 0.0, ce_weight: float = 0.0,
                 bpe_vocab: int | None = None, bpe_model: str | None = None, ce_task: str = "asr",
                 ce_target: str = "text", ce_template: str | None = None, ce_reduction: str = "utterance",
                 ce_fields: list[str] | None = None, ctc_warmup_steps: int = 0, tok_weight: float = 0.0,
                 tok_temperature: float = 0.1, tok_candidates: str = "train", tok_num_sampled: int = 4096,
                 tok_seed: int = 0):
        super().__init__()
        if llm is None:
            raise ValueError("Wav2Prompt needs the frozen LLM (its tokenizer and embedding table)")
        from w2p.cif import CifWeightPredictor

        object.__setattr__(self, "llm", llm)  # not a submodule: never saved, optimised or moved with the model
        self.encoder = build_encoder(encoder or {})
        d = self.encoder.output_size()
        cif = dict(cif or {})
        self.threshold = float(cif.pop("threshold", 1.0))
        self.tail_threshold = float(cif.pop("tail_threshold", 0.5))
        self.cif_backend = cif.pop("backend", "auto")
        self.predictor = CifWeightPredictor(d, **cif)
        D = llm.embed_dim
        if proj_hidden:
            self.proj = nn.Sequential(nn.Linear(d, proj_hidden), nn.GELU(), nn.Linear(proj_hidden, D))
        else:
            self.proj = nn.Linear(d, D)
        self.register_buffer("emb_scale", llm.embedding_weight.detach().float().std().reshape(1).cpu())
        self.mse_weight, self.qua_weight = float(mse_weight), float(qua_weight)
        self.ctc_weight, self.ce_weight = float(ctc_weight), float(ce_weight)
        self.ctc_head = None
        if self.ctc_weight > 0:
            if not bpe_vocab and bpe_model:
                import os

                import sentencepiece as spm

                if not os.path.isfile(bpe_model):
                    raise FileNotFoundError(f"model_conf.bpe_model {bpe_model} not found (run stage 3)")
                bpe_vocab = spm.SentencePieceProcessor(model_file=bpe_model).get_piece_size()
            if not bpe_vocab:
                raise ValueError("ctc_weight > 0 needs model_conf.bpe_vocab or bpe_model (data/lang/bpe/bpe.model)")
            self.bpe_vocab = int(bpe_vocab)
            self.ctc_head = nn.Linear(d, self.bpe_vocab + 1)  # blank = last index; BPE ids unchanged
        # the CE term asks the LLM for the ce_target text through the task's own template (ASR: "repeat")
        self.ce_task, self.ce_template, self.ce_target = ce_task, get_task(ce_task).template, ce_target
        if ce_template is not None and ce_template != self.ce_template:  # configs written before ce_task
            raise ValueError(f"model_conf.ce_template {ce_template!r}: the CE term uses a task's own template; set "
                             f"model_conf.ce_task (e.g. asr: {self.ce_template!r}) and drop ce_template")
        self.ce_reduction = ce_reduction
        self.ce_fields = list(ce_fields or [])
        self.ctc_warmup_steps = int(ctc_warmup_steps or 0)
        if self.ctc_warmup_steps and self.ctc_head is None:
            raise ValueError("model_conf.ctc_warmup_steps > 0 needs ctc_weight > 0 (the warm-up trains CTC only)")
        self._train_step = 0
        self.tok_weight, self.tok_temperature = float(tok_weight), float(tok_temperature)
        if self.tok_weight > 0 and self.tok_temperature <= 0:
            raise ValueError(f"model_conf.tok_temperature must be > 0, got {tok_temperature}")
        if tok_candidates not in ("train", "sampled", "vocab"):
            raise ValueError(f"model_conf.tok_candidates must be train, sampled or vocab, got {tok_candidates!r}")
        if tok_candidates == "sampled" and int(tok_num_sampled) < 1:
            raise ValueError(f"model_conf.tok_num_sampled must be >= 1, got {tok_num_sampled}")
        self.tok_candidates, self.tok_num_sampled, self.tok_seed = tok_candidates, int(tok_num_sampled), int(tok_seed)
        self._train_vocab: torch.Tensor | None = None
        self._train_vocab_emb: torch.Tensor | None = None

    def set_train_vocab(self, token_ids) -> None:
        """The candidates of the token-discrimination term."""
        self._train_vocab = torch.tensor(sorted({int(t) for t in token_ids}), dtype=torch.long)
        self._train_vocab_emb = None  # their unit-norm embeddings, computed once on first use (the LLM is frozen)

    def set_train_step(self, step: int) -> None:
        self._train_step = int(step)

    def _loss_weights(self) -> tuple[float, float, float, float]:
        if self.training and self._train_step < self.ctc_warmup_steps:
            return 0.0, 0.0, 0.0, 0.0
        return self.mse_weight, self.qua_weight, self.ce_weight, self.tok_weight

    # -- pieces ----------------------------------------------------------------------------------------------
    def encode(self, feats: torch.Tensor, feat_lens: torch.Tensor):
        h, h_lens = self.encoder(feats, feat_lens)
        mask = torch.arange(h.shape[1], device=h.device)[None, :] < h_lens[:, None]
        alphas = self.predictor(h, mask)
        return h, h_lens, alphas

    def _cif(self, h, alphas, h_lens, target_lengths=None):
        from w2p.cif import cif

        return cif(h.float(), alphas.float(), h_lens, threshold=self.threshold, target_lengths=target_lengths,
                   tail_threshold=self.tail_threshold, backend=self.cif_backend)

    @torch.no_grad()
    def prompts(self, feats: torch.Tensor, feat_lens: torch.Tensor, *,
                target_lengths: torch.Tensor | None = None) -> SpeechPrompts:
        """Inference: CIF fires naturally (or ``target_lengths`` times) -> one (U_i, embed_dim) tensor each."""
        was = self.training
        self.eval()
        h, h_lens, alphas = self.encode(feats, feat_lens)
        out = self._cif(h, alphas, h_lens, target_lengths=target_lengths)
        vec = self.proj(out.out) * self.emb_scale
        self.train(was)
        n = [int(x) for x in out.out_lengths]
        return SpeechPrompts([vec[i, :n[i]] for i in range(len(n))], alphas=alphas, alpha_lengths=h_lens,
                             fire_frames=[out.fire_frames[i, :n[i]].tolist() for i in range(len(n))],
                             frame_shift=0.01 * SUBSAMPLING)

    # -- training --------------------------------------------------------------------------------------------
    def forward(self, batch: dict):
        feats, feat_lens = batch["feats"], batch["feat_lens"]
        if "llm_tokens" not in batch:
            raise KeyError("batch has no llm_tokens: run stage 3 (w2p.bin.prepare_llm) or give the dataset an llm")
        dev = feats.device
        ids, U = _pad_ids(batch["llm_tokens"], 0, dev)
        if int(U.min()) == 0:
            bad = [u for u, n in zip(batch["utt_ids"], U.tolist()) if n == 0]
            raise ValueError(f"empty transcript for utterance(s) {bad[:3]}: fix data/<set>/text")
        h, h_lens, alphas = self.encode(feats, feat_lens)
        out = self._cif(h, alphas, h_lens, target_lengths=U)
        pred = self.proj(out.out.to(h.dtype)).float()  # (B, U_max, D) in units of emb_scale
        with torch.no_grad():
            tgt = self.llm.embed(ids.to(self.llm.device)).to(dev).float() / self.emb_scale
        # alignment of CIF outputs: out_lengths == U by construction in training
        n = min(pred.shape[1], tgt.shape[1])
        pred, tgt = pred[:, :n], tgt[:, :n]
        mse, qua, umask = regression_terms(pred, tgt, alphas, U)
        w_mse, w_qua, w_ce, w_tok = self._loss_weights()
        loss = w_mse * mse + w_qua * qua
        stats = {"mse": float(mse.detach()), "qua": float(qua.detach())}
        with torch.no_grad():
            cos = nn.functional.cosine_similarity(pred, tgt, dim=-1)
            stats["cos"] = float(((cos * umask).sum(1) / U.float()).mean())
            # readout accuracy in training is expensive (49k-way); only in eval
        if self.tok_weight > 0:
            tok = self._token_discrimination(pred, ids, umask, U)
            loss = loss + w_tok * tok
            stats["tok"] = float(tok.detach())
        if self.ctc_head is not None:
            if "bpe_tokens" not in batch:
                raise KeyError("ctc_weight > 0 but the batch has no bpe_tokens (data/lang/bpe missing: stage 3)")
            logp = self.ctc_head(h).float().log_softmax(-1)
            bpe, blen = _pad_ids(batch["bpe_tokens"], 0, dev)
            ctc = nn.functional.ctc_loss(logp.transpose(0, 1), bpe, h_lens, blen, blank=self.bpe_vocab,
                                         reduction="none", zero_infinity=True)
            ctc = (ctc / blen.clamp(min=1).float()).mean()
            loss = loss + self.ctc_weight * ctc
            stats["ctc"] = float(ctc.detach())
        if w_ce > 0:
            speech = [pred[i, :int(U[i])] * self.emb_scale for i in range(len(U))]
            fields = {f: batch[f] for f in self.ce_fields}
            ce = self.llm.ce_loss(self.ce_template, speech, batch[self.ce_target], reduction=self.ce_reduction,
                                  **fields).to(dev)
            loss = loss + w_ce * ce
            stats["ce"] = float(ce.detach())
        if not self.training:
            stats.update(self._eval_stats(h, h_lens, alphas, pred, ids, U))
        stats["loss"] = float(loss.detach())
        return loss, stats

    def _tok_sample(self, dev) -> torch.Tensor:
        """``tok_num_sampled`` distinct token ids drawn uniformly from the whole vocabulary: a function of (tok_seed,
        training step) in training, so every process draws the same; one fixed draw in validation."""
        V = int(self.llm.embedding_weight.shape[0])
        g = torch.Generator().manual_seed(self.tok_seed * 1_000_003 + (self._train_step + 1 if self.training else 0))
        return torch.randperm(V, generator=g)[:min(V, self.tok_num_sampled)].to(dev)

    def _token_discrimination(self, pred, ids, umask, U) -> torch.Tensor:
        """Per-utterance mean of CE(cos(pred, E[cand]) / T, target), cand = the training vocabulary (the batch's
        own tokens when none was set; ``tok_candidates``: plus a uniform sample of the whole vocabulary, or all of
        it). A validation token outside cand is left out of the mean, so that the term does not depend on how the
        batches are split across processes."""
        dev = pred.device
        ids = ids[:, :pred.shape[1]]
        if self.tok_candidates == "vocab":
            cand = torch.arange(int(self.llm.embedding_weight.shape[0]), device=dev)
        else:
            cand = self._train_vocab.to(dev) if self._train_vocab is not None else torch.unique(ids[umask.bool()])
        cached = self._train_vocab is not None or self.tok_candidates == "vocab"
        En = self._train_vocab_emb if cached else None
        if self.tok_candidates == "sampled":  # a fresh draw each step: never cached
            cand, En = torch.unique(torch.cat([cand, self._tok_sample(dev)])), None
        if En is None or En.device != dev:
            with torch.no_grad():
                E = self.llm.embedding_weight.detach()[cand.to(self.llm.embedding_weight.device)].to(dev).float()
                En = nn.functional.normalize(E, dim=-1)
            if cached and self.tok_candidates != "sampled":
                self._train_vocab_emb = En
        logits = nn.functional.normalize(pred, dim=-1) @ En.T / self.tok_temperature  # (B, U_max, |cand|)
        tgt = torch.searchsorted(cand, ids).clamp(max=len(cand) - 1)
        umask = umask * (cand[tgt] == ids).float()
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none") * umask
        return (ce.sum(1) / umask.sum(1).clamp(min=1)).mean()

    @torch.no_grad()
    def _eval_stats(self, h, h_lens, alphas, pred, ids, U) -> dict:
        """Natural-firing length accuracy and nearest-token readout accuracy (validation only)."""
        nat = self._cif(h, alphas, h_lens)
        exact = (nat.out_lengths.to(U.device) == U).float().mean()
        hit = total = 0
        for i in range(len(U)):
            near = self.llm.nearest_tokens(pred[i, :int(U[i])])
            hit += sum(int(a == b) for a, b in zip(near, ids[i, :int(U[i])].tolist()))
            total += int(U[i])
        return {"len_exact": float(exact), "readout_acc": hit / max(1, total)}
