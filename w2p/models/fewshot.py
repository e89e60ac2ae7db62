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
from torch import nn

from w2p.models.wav2prompt import Wav2Prompt, _pad_ids
from w2p.tasks import SPEECH, get_task, readable_intent

TASK_FIELD = "task"  # per-utterance task name (st, slu, sqqa, sqa) in a fine-tuning dump dir
INTENT_SET_FIELD = "intent_set"  # per-utterance {intents} value (readable, comma-separated label set) for SLU
LORA_ADAPTER = "w2p"
DEFAULT_LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


# -- task prompts ---------------------------------------------------------------------------------------------------
def task_target(task: str, ref: str) -> str:
    """What the LLM must write: the reference, or for SLU the intent in the readable form the decoder scores."""
    return readable_intent(ref) if get_task(task).mode == "choice" else ref


def prompt_parts(task: str, fields: dict[str, str]) -> tuple[str, str]:
    """User-turn text before / after {speech} of ``task``'s zero-shot template with its fields filled."""
    t = get_task(task)
    text = t.template
    for name in t.fields:
        if name not in fields or fields[name] is None:
            raise ValueError(f"task {task}: template field {{{name}}} has no value for this utterance")
        text = text.replace("{" + name + "}", fields[name])
    if text.count(SPEECH) != 1:
        raise ValueError(f"task {task}: template must contain {SPEECH} exactly once: {t.template!r}")
    pre, post = text.split(SPEECH)
    return pre, post


def batch_tasks(batch: dict, default: str | None) -> list[str]:
    n = len(batch["utt_ids"])
    if TASK_FIELD in batch:
        return list(batch[TASK_FIELD])
    if default is None:
        raise KeyError(f"batch has no '{TASK_FIELD}' field and model_conf.task is not set: build the fine-tuning "
                       "dir with w2p.bin.finetune (it writes <dir>/task) or set model_conf.task")
    return [default] * n


def batch_prompt_parts(batch: dict, tasks: list[str]) -> tuple[list[str], list[str]]:
    pres, posts = [], []
    for i, (u, t) in enumerate(zip(batch["utt_ids"], tasks)):
        f = {}
        for name in get_task(t).fields:
            key = INTENT_SET_FIELD if name == "intents" else name
            if key not in batch or not batch[key][i]:
                raise KeyError(f"utterance {u} (task {t}) has no '{key}': the fine-tuning dir needs it "
                               "(w2p.bin.finetune writes it from the task set's files)")
            f[name] = batch[key][i]
        pre, post = prompt_parts(t, f)
        pres.append(pre)
        posts.append(post)
    return pres, posts


def _prefix_kv(llm, ids: list[int], cache: dict | None):
    """Keys/values of the LLM for the shared prompt prefix (system turn + user text before {speech}): computed
    once and reused while the LLM is frozen (``cache``); recomputed with gradients when LoRA adapters train."""
    key = (tuple(ids), str(llm.device), str(llm.dtype))
    if cache is not None and key in cache:
        return cache[key]
    body = llm.model.get_decoder()
    with torch.set_grad_enabled(cache is None and torch.is_grad_enabled()):
        e = llm.embed(torch.tensor(ids, dtype=torch.long, device=llm.device))[None]
        pkv = body(inputs_embeds=e, position_ids=torch.arange(len(ids), device=llm.device)[None],
                   use_cache=True).past_key_values
        kv = [(layer.keys, layer.values) for layer in pkv.layers]
    if cache is not None:
        if len(cache) > 64:
            cache.clear()
        cache[key] = kv
    return kv


def _split_prompt(llm, pre: str, post: str) -> tuple[list[int], list[int]]:
    """Token ids before / after {speech} of the chat-rendered user turn ``pre + {speech} + post``: exactly what
    ``FrozenLLM.build_inputs`` splices (asserted by the tests)."""
    sentinel = "\x00W2PSPEECH\x00"
    before, after = llm.render(pre + sentinel + post).split(sentinel)
    tok = llm.tokenizer
    return tok(before, add_special_tokens=False)["input_ids"], tok(after, add_special_tokens=False)["input_ids"]


def task_ce(llm, speech: list, pres: list[str], posts: list[str], targets: list[str], *,
            prefix_cache: dict | None = None) -> torch.Tensor:
    """Per-utterance mean token CE of ``targets`` (+ eos) given the chat-rendered prompt ``pre + speech + post``,
    averaged over the batch (so a 2-token intent weighs as much as a 20-token translation).

    Mathematically the loss of the full left-padded prompt that decoding builds, computed cheaper: utterances are
    grouped by their text before {speech}; that shared prefix (~30 tokens of system turn and instruction, half an
    ST sequence) runs once per group as a KV cache, the rest (speech, text after it, target) is right-padded,
    and the 49k-way LM head is applied to target positions only."""
    n = len(speech)
    if not (n == len(pres) == len(posts) == len(targets)) or n == 0:
        raise ValueError("task_ce: speech, prompt parts and targets must be non-empty and of the same length")
    from transformers import DynamicCache

    body = llm.model.get_decoder()
    head = llm.model.get_output_embeddings()
    dev = llm.device
    tgt_ids = [x + [llm.eos_id] for x in llm.tokenize(list(targets))]
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pres):
        groups.setdefault(p, []).append(i)
    per_utt = [None] * n
    for pre, idx in groups.items():
        before = None
        rows, spans = [], []
        for i in idx:
            b, a = _split_prompt(llm, pre, posts[i])
            before = b
            sp = speech[i]
            if isinstance(sp, str):
                sp = llm.embed(torch.tensor(llm.tokenize([sp])[0], dtype=torch.long, device=dev))
            elif sp.dim() != 2 or sp.shape[1] != llm.embed_dim:
                raise ValueError(f"speech[{i}] must be (U, {llm.embed_dim}), got {tuple(sp.shape)}")
            ctx = torch.cat([sp.to(device=dev, dtype=llm.dtype),
                             llm.embed(torch.tensor(a + tgt_ids[i], dtype=torch.long, device=dev))], 0)
            rows.append(ctx)
            spans.append((ctx.shape[0] - len(tgt_ids[i]), len(tgt_ids[i])))  # target start, length
        B, P = len(idx), len(before)
        L = max(r.shape[0] for r in rows)
        x = rows[0].new_zeros(B, L, llm.embed_dim)
        mask = torch.zeros(B, P + L, dtype=torch.long, device=dev)
        mask[:, :P] = 1
        for r, row in enumerate(rows):
            x[r, :row.shape[0]] = row
            mask[r, P:P + row.shape[0]] = 1
        kv = _prefix_kv(llm, before, prefix_cache)
        cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kv],
                             config=llm.model.config)
        pos = P + torch.arange(L, device=dev)[None].expand(B, -1)
        hidden = body(inputs_embeds=x, attention_mask=mask, position_ids=pos, cache=cache,
                      use_cache=True).last_hidden_state
        for r, (i, (s, t)) in enumerate(zip(idx, spans)):
            # position s-1 (last prompt token) predicts target token 0
            logits = head(hidden[r, s - 1:s - 1 + t]).float()
            per_utt[i] = nn.functional.cross_entropy(logits, torch.tensor(tgt_ids[i], device=dev))
    return torch.stack(per_utt).mean()


# -- LoRA ---------------------------------------------------------------------------------------------------------
def attach_lora(llm, conf: dict | None) -> nn.ModuleDict:
    """Inject LoRA adapters into ``llm.model`` (in place) and return them as a ModuleDict (A and B of every
    adapted layer), to be registered on the speech model so they are trained, saved and loaded with it."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    c = {**DEFAULT_LORA, **dict(conf or {})}
    unknown = set(c) - set(DEFAULT_LORA)
    if unknown:
        raise ValueError(f"lora_conf: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULT_LORA)}")
    if any(isinstance(m, LoraLayer) for m in llm.model.modules()):
        raise RuntimeError("this FrozenLLM already carries LoRA adapters (another LoRA system): load a fresh LLM "
                           "for each LoRA system (decode LoRA systems in separate w2p.bin.decode runs)")
    before = {n: p.data_ptr() for n, p in llm.model.named_parameters()}
    cfg = LoraConfig(r=int(c["r"]), lora_alpha=int(c["alpha"]), lora_dropout=float(c["dropout"]),
                     target_modules=list(c["target_modules"]), bias="none")
    inject_adapter_in_model(cfg, llm.model, adapter_name=LORA_ADAPTER)
    mods = nn.ModuleDict()
    for name, m in llm.model.named_modules():
        if isinstance(m, LoraLayer):
            key = name.replace(".", "__")
            mods[key + "__A"] = m.lora_A[LORA_ADAPTER]
            mods[key + "__B"] = m.lora_B[LORA_ADAPTER]
    if not len(mods):
        raise ValueError(f"lora_conf.target_modules {c['target_modules']} match no layer of the LLM")
    lora_ids = {id(p) for p in mods.parameters()}
    for n, p in llm.model.named_parameters():
        if id(p) in lora_ids:
            p.requires_grad_(True)
        else:
            p.requires_grad_(False)  # base weights: frozen (peft keeps them; assert they are the same tensors)
    after = {n.replace(".base_layer", ""): p.data_ptr() for n, p in llm.model.named_parameters()
             if id(p) not in lora_ids}
    if any(after.get(n) != ptr for n, ptr in before.items()):
        raise RuntimeError("LoRA injection replaced base LLM weights (peft version change?)")
    return mods


# -- models -------------------------------------------------------------------------------------------------------
class FewShotWav2Prompt(Wav2Prompt):
    needs_llm = True

    def __init__(self, llm, *, mse_weight: float = 1.0, qua_weight: float = 1.0, ce_weight: float = 1.0,
                 task: str | None = None, llm_lora: bool = False, lora_conf: dict | None = None, **w2p_conf):
        # the stage-4 auxiliary losses (CTC, "repeat" CE) are not part of fine-tuning; their heads are not built
        for k in ("ce_template", "ce_target", "ce_fields"):
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
        self.lora = attach_lora(llm, lora_conf) if self.llm_lora else None
        # the prompt prefix depends on the LLM only: cacheable unless LoRA adapters change the LLM
        self._prefix_cache: dict | None = None if self.llm_lora else {}

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
            qua = (alphas.float().sum(1) - U.float()).abs().mean()
            loss = loss + self.qua_weight * qua
            stats["qua"] = float(qua.detach())
            umask = (torch.arange(n, device=dev)[None, :] < U[:, None]).float()
            with torch.no_grad():
                tgt = self.llm.embed(ids.to(self.llm.device)).to(dev).float() / self.emb_scale
            mse = ((((pred - tgt) ** 2).mean(-1) * umask).sum(1) / U.float()).mean()
            stats["mse"] = float(mse.detach())
            if self.mse_weight > 0:
                loss = loss + self.mse_weight * mse
            lens = U.tolist()
        else:  # no transcripts: natural firing, CE only
            out = self._cif(h, alphas, h_lens)
            pred = self.proj(out.out.to(h.dtype)).float()
            lens = [max(1, int(x)) for x in out.out_lengths]
        speech = [pred[i, :lens[i]] * self.emb_scale for i in range(len(lens))]
        pres, posts = batch_prompt_parts(batch, tasks)
        targets = [task_target(t, r) for t, r in zip(tasks, batch["ref"])]
        ce = task_ce(self.llm, speech, pres, posts, targets, prefix_cache=self._prefix_cache).to(dev)
        loss = loss + self.task_ce_weight * ce
        stats["ce"] = float(ce.detach())
        if not self.training and len(set(tasks)) > 1:  # per-task CE in the validation logs
            with torch.no_grad():
                for t in sorted(set(tasks)):
                    sel = [i for i, x in enumerate(tasks) if x == t]
                    stats[f"ce_{t}"] = float(task_ce(self.llm, [speech[i] for i in sel], [pres[i] for i in sel],
                                                     [posts[i] for i in sel], [targets[i] for i in sel],
                                                     prefix_cache=self._prefix_cache))
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
        self.lora = attach_lora(llm, lora_conf)
        self._transcripts: dict[str, str] = {}  # the ASR is frozen and run in eval mode: cache per utterance

    @property
    def needs_llm(self) -> bool:
        return True

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
        pres, posts = batch_prompt_parts(batch, tasks)
        targets = [task_target(t, r) for t, r in zip(tasks, batch["ref"])]
        ce = task_ce(self.llm, speech, pres, posts, targets)  # no prefix cache: the LoRA LLM changes every step
        return ce, {"ce": float(ce.detach()), "loss": float(ce.detach())}
