"""Few-shot end-to-end fine-tuning through the frozen LLM (recipe stage 7; paper §3).

``FewShotWav2Prompt`` is Wav2Prompt (same parameters and names, so ``--init exp/w2p/model.pt`` loads the stage-4
model as is) trained on task data with

    L = ce_weight * CE_LLM(task output | the task's zero-shot template with the speech prompt)
        + mse_weight * MSE(prompt, E[transcript tokens]) + qua_weight * |sum(alpha) - U|

The template is exactly the zero-shot one of ``w2p.tasks`` (same chat rendering), so decoding a fine-tuned model
is stage-6 decoding with another exp dir. Utterances of several tasks can share a batch: every utterance carries
its task name (``task`` field of the dump dir, written by ``w2p.bin.finetune``) and its own template fields.
Where the split has transcripts (all mini_en task sets do), CIF fires exactly U times (U = transcript length in
LLM tokens) so that the MSE term can keep every prompt vector close to its token's embedding ("text-like");
``mse_weight: 0`` is the ablation. The frozen LLM gets gradients only as a path to the speech prompt.

Optional ``llm_lora: true``: LoRA adapters (``peft``) are injected into the LLM's attention projections and trained
with the speech model. The base weights keep ``requires_grad=False`` and are never written (only the adapters are
in this model's state_dict / optimiser). The adapters are injected IN PLACE into the FrozenLLM handed to the model,
so one FrozenLLM can serve at most one LoRA system at a time (decode LoRA systems in their own process).

``CascadeLoRA`` is the matching few-shot baseline for the ASR->LLM cascade: the CTC ASR (``--init
exp/asr_ctc/model.pt``) stays frozen and transcribes the split; only LoRA adapters on the LLM are trained with the
same task CE on those ASR transcripts. It decodes as a ``cascade`` system (it is a CTCASR with ``transcribe``).
"""
from __future__ import annotations

import torch

from w2p.models.wav2prompt import Wav2Prompt, _pad_ids, regression_terms
from w2p.tasks import get_task, readable_intent

TASK_FIELD = "task"  # per-utterance task name (st, slu, sqqa, sqa) in a fine-tuning dump dir
INTENT_SET_FIELD = "intent_set"  # per-utterance {intents} value (readable, comma-separated label set) for SLU


# -- task prompts ---------------------------------------------------------------------------------------------------
def task_target(task: str, ref: str) -> str:
    """What the LLM must write: the reference, or for SLU the intent in the readable form the decoder scores."""
    return readable_intent(ref) if get_task(task).mode == "choice" else ref


def batch_tasks(batch: dict, default: str | None) -> list[str]:
    n = len(batch["utt_ids"])
    if TASK_FIELD in batch:
        return list(batch[TASK_FIELD])
    if default is None:
        raise KeyError(f"batch has no '{TASK_FIELD}' field and model_conf.task is not set: build the fine-tuning "
                       "dir with w2p.bin.finetune (it writes <dir>/task) or set model_conf.task")
    return [default] * n


def batch_prompts(batch: dict, tasks: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Each utterance's zero-shot task template and its per-utterance template fields (FrozenLLM.ce_loss)."""
    fields: dict[str, list[str]] = {}
    for i, (u, t) in enumerate(zip(batch["utt_ids"], tasks)):
        for name in get_task(t).fields:
            key = INTENT_SET_FIELD if name == "intents" else name
            if key not in batch or not batch[key][i]:
                raise KeyError(f"utterance {u} (task {t}) has no '{key}': the fine-tuning dir needs it "
                               "(w2p.bin.finetune writes it from the task set's files)")
            fields.setdefault(name, [""] * len(tasks))[i] = batch[key][i]
    return [get_task(t).template for t in tasks], fields


# -- models -------------------------------------------------------------------------------------------------------
class FewShotWav2Prompt(Wav2Prompt):
    needs_llm = True

    @classmethod
    def needs_llm_forward(cls, model_conf: dict) -> bool:
        return True  # the task CE always runs the LLM (Wav2Prompt's rule looks at ce_weight only)

    def __init__(self, llm, *, mse_weight: float = 1.0, qua_weight: float = 1.0, ce_weight: float = 1.0,
                 task: str | None = None, llm_lora: bool = False, lora_conf: dict | None = None, **w2p_conf):
        # the stage-4 auxiliary losses (CTC, "repeat" CE) are not part of fine-tuning; their heads are not built
        for k in ("ce_task", "ce_template", "ce_target", "ce_fields", "ce_reduction"):
            w2p_conf.pop(k, None)
        w2p_conf["ctc_weight"] = 0.0
        w2p_conf.pop("ctc_warmup_steps", None)  # a stage-4 schedule; fine-tuning trains every term from step 0
        w2p_conf["tok_weight"] = 0.0  # the stage-4 token-discrimination term: fine-tuning is task CE (+ MSE) only
        w2p_conf.pop("tok_temperature", None)
        super().__init__(llm, mse_weight=mse_weight, qua_weight=qua_weight, ce_weight=0.0, **w2p_conf)
        self.task_ce_weight = float(ce_weight)
        if task is not None:
            get_task(task)
        self.task = task
        self.llm_lora = bool(llm_lora)
        self.lora = llm.attach_lora(lora_conf) if self.llm_lora else None

    def forward(self, batch: dict):
        feats, feat_lens = batch["feats"], batch["feat_lens"]
        dev = feats.device
        tasks = batch_tasks(batch, self.task)
        if "ref" not in batch:
            raise KeyError(f"batch (utts {batch['utt_ids'][:3]}) has no 'ref': fine-tuning needs task references")
        h, h_lens, alphas = self.encode(feats, feat_lens)
        stats: dict[str, float] = {}
        loss = feats.new_zeros(())
        have_text = "llm_tokens" in batch and all(len(t) > 0 for t in batch["llm_tokens"])
        if have_text:
            ids, U = _pad_ids(batch["llm_tokens"], 0, dev)
            out = self._cif(h, alphas, h_lens, target_lengths=U)  # one vector per transcript token
            pred = self.proj(out.out.to(h.dtype)).float()
            n = min(pred.shape[1], ids.shape[1])
            pred, ids = pred[:, :n], ids[:, :n]
            with torch.no_grad():
                tgt = self.llm.embed(ids.to(self.llm.device)).to(dev).float() / self.emb_scale
            mse, qua, _ = regression_terms(pred, tgt, alphas, U)
            loss = loss + self.qua_weight * qua
            stats["qua"] = float(qua.detach())
            stats["mse"] = float(mse.detach())
            if self.mse_weight > 0:
                loss = loss + self.mse_weight * mse
            lens = U.tolist()
        else:  # no transcripts: natural firing, CE only
            out = self._cif(h, alphas, h_lens)
            pred = self.proj(out.out.to(h.dtype)).float()
            lens = [max(1, int(x)) for x in out.out_lengths]
        speech = [pred[i, :lens[i]] * self.emb_scale for i in range(len(lens))]
        templates, fields = batch_prompts(batch, tasks)
        targets = [task_target(t, r) for t, r in zip(tasks, batch["ref"])]
        ce = self.llm.ce_loss(templates, speech, targets, **fields).to(dev)
        loss = loss + self.task_ce_weight * ce
        stats["ce"] = float(ce.detach())
        # per-task CE in the validation logs; not with a sharded LLM, where every rank must run it equally often
        if not self.training and len(set(tasks)) > 1 and not getattr(self.llm, "sharded", False):
            with torch.no_grad():
                for t in sorted(set(tasks)):
                    sel = [i for i, x in enumerate(tasks) if x == t]
                    sub = {k: [v[i] for i in sel] for k, v in fields.items()}
                    stats[f"ce_{t}"] = float(self.llm.ce_loss([templates[i] for i in sel], [speech[i] for i in sel],
                                                              [targets[i] for i in sel], **sub))
        stats["loss"] = float(loss.detach())
        return loss, stats


def _cascade_base():
    from w2p.models.asr_ctc import CTCASR

    return CTCASR


class CascadeLoRA(_cascade_base()):
    """ASR->LLM cascade few-shot baseline: frozen CTC ASR, LoRA-tuned LLM on the ASR transcripts of the split."""

    def __init__(self, llm, *, task: str | None = None, lora_conf: dict | None = None, asr_beam: int = 1,
                 llm_lora: bool = True, **asr_conf):
        if llm is None:
            raise ValueError("CascadeLoRA needs the LLM (it trains LoRA adapters on it)")
        if not llm_lora:
            raise ValueError("the cascade has nothing to fine-tune without LoRA: set model_conf.llm_lora true "
                             "(its ASR is the stage-5 CTC model, kept frozen)")
        super().__init__(llm, **asr_conf)
        for p in self.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "llm", llm)
        self.task = task
        self.asr_beam = int(asr_beam)
        self.lora = llm.attach_lora(lora_conf)
        self._transcripts: dict[str, str] = {}  # the ASR is frozen and run in eval mode: cache per utterance

    needs_llm = True

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen ASR: no dropout / SpecAugment when it transcribes the split
        self.dropout.eval()
        return self

    def forward(self, batch: dict):
        tasks = batch_tasks(batch, self.task)
        if "ref" not in batch:
            raise KeyError(f"batch (utts {batch['utt_ids'][:3]}) has no 'ref': fine-tuning needs task references")
        todo = [i for i, u in enumerate(batch["utt_ids"]) if u not in self._transcripts]
        if todo:
            with torch.no_grad():
                txt = self.transcribe(batch["feats"][todo], batch["feat_lens"][todo], beam=self.asr_beam)
            for i, t in zip(todo, txt):
                self._transcripts[batch["utt_ids"][i]] = t if t.strip() else "…"  # as the cascade decoder does
        speech = [self._transcripts[u] for u in batch["utt_ids"]]
        templates, fields = batch_prompts(batch, tasks)
        targets = [task_target(t, r) for t, r in zip(tasks, batch["ref"])]
        ce = self.llm.ce_loss(templates, speech, targets, **fields)
        return ce, {"ce": float(ce.detach()), "loss": float(ce.detach())}
