"""CTC ASR for the ASR->LLM cascade: the shared Conformer encoder + a linear CTC head over the sentencepiece BPE
of stage 3 (data/lang/bpe/bpe.model). Decoding: greedy or CTC prefix beam search (no LM).

conf (YAML ``model_conf``): encoder: {...} (w2p.models.encoder.build_encoder), bpe_model: path, vocab_size (read
from bpe_model when omitted). The blank is an extra class appended after the BPE vocabulary (index vocab_size),
so every BPE piece keeps its sentencepiece id.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict

import torch
from torch import nn

from w2p.models.abs_model import AbsW2PModel


class CTCASR(AbsW2PModel):
    def __init__(self, llm=None, *, encoder: dict | None = None, bpe_model: str | None = None,
                 vocab_size: int | None = None, dropout: float = 0.0):
        super().__init__()
        from w2p.models.encoder import build_encoder

        self.bpe_model = bpe_model
        self._sp = None
        if vocab_size is None:
            if bpe_model is None:
                raise ValueError("asr_ctc: give model_conf.bpe_model (data/lang/bpe/bpe.model) or vocab_size")
            vocab_size = self.sp.get_piece_size()
        self.vocab_size = int(vocab_size)
        self.blank = self.vocab_size
        self.encoder = build_encoder(encoder or {})
        self.dropout = nn.Dropout(dropout)
        # named like Wav2Prompt's auxiliary CTC head (same BPE, blank = last index), so --init from a trained
        # Wav2Prompt can start the cascade ASR from its encoder + CTC head
        self.ctc_head = nn.Linear(self.encoder.output_size(), self.vocab_size + 1)
        self.ctc = nn.CTCLoss(blank=self.blank, reduction="sum", zero_infinity=True)

    needs_llm = False  # a class attribute: the trainer can tell before building that no LLM is needed

    @property
    def sp(self):
        if self._sp is None:
            import sentencepiece as spm

            if not self.bpe_model or not os.path.isfile(self.bpe_model):
                raise FileNotFoundError(f"asr_ctc: BPE model {self.bpe_model!r} not found (run stage 3)")
            self._sp = spm.SentencePieceProcessor(model_file=self.bpe_model)
        return self._sp

    def log_probs(self, feats: torch.Tensor, feat_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, h_lens = self.encoder(feats, feat_lens)
        return torch.log_softmax(self.ctc_head(self.dropout(h)).float(), -1), h_lens

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        if "bpe_tokens" not in batch:
            raise KeyError("asr_ctc needs bpe_tokens in the batch (stage 3 writes data/lang/bpe/bpe.model)")
        lp, h_lens = self.log_probs(batch["feats"], batch["feat_lens"])
        tgt = [torch.as_tensor(t, dtype=torch.long) for t in batch["bpe_tokens"]]
        tgt_lens = torch.tensor([len(t) for t in tgt], dtype=torch.long)
        flat = torch.cat(tgt).to(lp.device) if tgt else torch.zeros(0, dtype=torch.long)
        B = lp.shape[0]
        loss = self.ctc(lp.transpose(0, 1), flat, h_lens.cpu(), tgt_lens) / B
        stats = {"loss": float(loss.detach()), "loss_ctc": float(loss.detach())}
        if not self.training:
            hyps = self.greedy_ids(lp, h_lens)
            import jiwer

            # token error rate of greedy decoding on the validation batch (a dev-set learning signal)
            o = jiwer.process_words([" ".join(map(str, t.tolist())) for t in tgt],
                                    [" ".join(map(str, h)) or "<empty>" for h in hyps])
            stats["ter"] = 100.0 * (o.substitutions + o.deletions + o.insertions) / max(1, int(tgt_lens.sum()))
        return loss, stats

    # -- decoding ------------------------------------------------------------------------------------------------
    def greedy_ids(self, lp: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
        best = lp.argmax(-1).cpu()
        out = []
        for b in range(lp.shape[0]):
            seq, prev = [], None
            for t in best[b, : int(lens[b])].tolist():
                if t != prev and t != self.blank:
                    seq.append(t)
                prev = t
            out.append(seq)
        return out

    def prefix_beam_ids(self, lp: torch.Tensor, lens: torch.Tensor, beam: int = 5,
                        prune: float = -12.0) -> list[list[int]]:
        """CTC prefix beam search (Hannun et al. 2014), no LM; log-domain; tokens below ``prune`` skipped."""
        out = []
        lp = lp.cpu()
        for b in range(lp.shape[0]):
            beams: dict[tuple, tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (p_blank, p_nonblank)
            for t in range(int(lens[b])):
                row = lp[b, t]
                cand = (row > prune).nonzero().flatten().tolist() or [int(row.argmax())]
                nxt: dict[tuple, list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
                for prefix, (pb, pnb) in beams.items():
                    ptot = _lse(pb, pnb)
                    for c in cand:
                        p = float(row[c])
                        if c == self.blank:
                            e = nxt[prefix]
                            e[0] = _lse(e[0], ptot + p)
                            continue
                        last = prefix[-1] if prefix else None
                        new = prefix + (c,)
                        e = nxt[new]
                        if c == last:
                            e[1] = _lse(e[1], pb + p)  # repeated token needs a blank in between
                            same = nxt[prefix]
                            same[1] = _lse(same[1], pnb + p)  # collapse
                        else:
                            e[1] = _lse(e[1], ptot + p)
                beams = dict(sorted(((k, (v[0], v[1])) for k, v in nxt.items()), key=lambda kv: -_lse(*kv[1]))[:beam])
            out.append(list(max(beams.items(), key=lambda kv: _lse(*kv[1]))[0]))
        return out

    @torch.inference_mode()
    def transcribe(self, feats: torch.Tensor, feat_lens: torch.Tensor, *, beam: int = 1) -> list[str]:
        lp, lens = self.log_probs(feats, feat_lens)
        ids = self.greedy_ids(lp, lens) if beam <= 1 else self.prefix_beam_ids(lp, lens, beam=beam)
        return [self.sp.decode(x) for x in ids]


def _lse(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))
