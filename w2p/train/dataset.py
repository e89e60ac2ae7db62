"""Dataset over a feature dump dir (dump/fbank/<set>/) and the batch collation shared by all systems.

A dump dir holds feats.scp (+ ark), utt2num_frames, text, and optionally llm_tokens / bpe_tokens (utt -> ids,
written by stage 3) and other per-utterance files (ref, question, slots, ...), which are passed through as
``list[str]`` in the batch under their file name.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from w2p.io import load_feats, read_kv, read_scp

log = logging.getLogger(__name__)

# files of a dump dir that are not per-utterance string fields of the batch
_NOT_FIELDS = {"feats.scp", "utt2num_frames", "llm_tokens", "bpe_tokens", "spk2utt", "intents", "cmvn.npz",
               "wav.scp", "segments", "reco2dur", "utt2dur", "feats_type", "frame_shift", "utt2spk"}


def read_int_lists(path: str) -> dict[str, list[int]]:
    out = {}
    for k, v in read_kv(path).items():
        try:
            out[k] = [int(x) for x in v.split()]
        except ValueError:
            raise ValueError(f"{path}: utterance {k} has non-integer token ids (rerun stage 3)") from None
    return out


def find_bpe_model(dump_dir: str) -> str | None:
    """<recipe>/data/lang/bpe/bpe.model for a dump dir <recipe>/dump/fbank/<set> (None if absent)."""
    recipe = os.path.abspath(os.path.join(dump_dir, "..", "..", ".."))
    path = os.path.join(recipe, "data", "lang", "bpe", "bpe.model")
    return path if os.path.isfile(path) else None


class DumpDataset(torch.utils.data.Dataset):
    """Utterances of one dump dir. Features are read once into memory (``preload``) so that training epochs do
    no I/O; the mini corpora are small. Items are dicts; :func:`collate` batches them."""

    def __init__(self, dump_dir: str, *, llm=None, bpe_model: str | None = None, preload: bool = True,
                 require_text: bool = True, allow_pipes: bool = False):
        self.dump_dir = dump_dir
        scp = os.path.join(dump_dir, "feats.scp")
        if not os.path.isfile(scp):
            raise FileNotFoundError(f"{scp} not found (run stage 2: make_fbank)")
        self.feat_specs = read_scp(scp, allow_pipes=allow_pipes)
        self.utt_ids = sorted(self.feat_specs)
        if not self.utt_ids:
            raise ValueError(f"{scp} is empty")
        n2f = os.path.join(dump_dir, "utt2num_frames")
        self.feats: dict[str, np.ndarray] | None = None
        if preload:
            self.feats = {}
            for u in self.utt_ids:
                self.feats[u] = self._checked(u, np.array(load_feats(self.feat_specs[u]), dtype=np.float32, copy=True))
            self.num_frames = {u: int(self.feats[u].shape[0]) for u in self.utt_ids}
        elif os.path.isfile(n2f):
            n = read_kv(n2f)
            missing = [u for u in self.utt_ids if u not in n]
            if missing:
                raise ValueError(f"{n2f}: no entry for {missing[0]} (and {len(missing) - 1} more); rerun stage 2")
            self.num_frames = {u: int(n[u]) for u in self.utt_ids}
        else:
            raise FileNotFoundError(f"{n2f} not found (run stage 2)")

        self.fields: dict[str, dict[str, str]] = {}
        text_path = os.path.join(dump_dir, "text")
        if os.path.isfile(text_path):
            self.fields["text"] = read_kv(text_path)
        elif require_text:
            raise FileNotFoundError(f"{text_path} not found (stage 2 copies data/<set>/text into the dump dir)")
        for name in sorted(os.listdir(dump_dir)):
            path = os.path.join(dump_dir, name)
            if name in _NOT_FIELDS or name == "text" or "." in name or not os.path.isfile(path):
                continue
            try:
                kv = read_kv(path)
            except (UnicodeDecodeError, ValueError):
                continue
            if kv and all(u in kv for u in self.utt_ids):  # per-utterance file (not e.g. the intents list)
                self.fields[name] = kv
        if "text" in self.fields:
            missing = [u for u in self.utt_ids if u not in self.fields["text"]]
            if missing:
                raise ValueError(f"{text_path}: no transcript for {missing[0]} (and {len(missing) - 1} more)")

        self.llm_tokens = self._token_file("llm_tokens")
        if self.llm_tokens is None and llm is not None and "text" in self.fields:
            ids = llm.tokenize([self.fields["text"][u] for u in self.utt_ids])
            self.llm_tokens = dict(zip(self.utt_ids, ids))
        self.bpe_tokens = self._token_file("bpe_tokens")
        if self.bpe_tokens is None and "text" in self.fields:
            bpe_model = bpe_model or find_bpe_model(dump_dir)
            if bpe_model:
                import sentencepiece as spm

                sp = spm.SentencePieceProcessor(model_file=bpe_model)
                self.bpe_tokens = {u: sp.encode(self.fields["text"][u]) for u in self.utt_ids}

    def _token_file(self, name: str):
        path = os.path.join(self.dump_dir, name)
        if not os.path.isfile(path):
            return None
        toks = read_int_lists(path)
        missing = [u for u in self.utt_ids if u not in toks]
        if missing:
            raise ValueError(f"{path}: no entry for {missing[0]} (and {len(missing) - 1} more); rerun stage 3")
        return toks

    def __len__(self) -> int:
        return len(self.utt_ids)

    def lengths(self) -> list[int]:
        return [self.num_frames[u] for u in self.utt_ids]

    def _checked(self, u: str, m: np.ndarray) -> np.ndarray:
        """A feature matrix as training needs it: (T, D) and finite (a NaN would surface deep inside the model)."""
        scp = os.path.join(self.dump_dir, "feats.scp")
        if m.ndim != 2:
            raise ValueError(f"{scp}: utterance {u} has features of shape {m.shape}, expected (T, 80)")
        if not np.isfinite(m).all():
            raise ValueError(f"{scp}: utterance {u} has NaN/inf features; re-extract it (stage 2) or drop it from "
                             "the set")
        return m

    def __getitem__(self, i: int) -> dict:
        u = self.utt_ids[i]
        feats = self.feats[u] if self.feats is not None else \
            self._checked(u, np.asarray(load_feats(self.feat_specs[u]), dtype=np.float32))
        item = {"utt_id": u, "feats": feats}
        for name, kv in self.fields.items():
            item[name] = kv[u]
        if self.llm_tokens is not None:
            item["llm_tokens"] = self.llm_tokens[u]
        if self.bpe_tokens is not None:
            item["bpe_tokens"] = self.bpe_tokens[u]
        return item


def collate(items: list[dict]) -> dict:
    """Pad features to (B, T_max, 80); every other key becomes a list in batch order."""
    B = len(items)
    T = max(it["feats"].shape[0] for it in items)
    D = items[0]["feats"].shape[1]
    feats = torch.zeros(B, T, D, dtype=torch.float32)
    lens = torch.zeros(B, dtype=torch.long)
    for b, it in enumerate(items):
        n = it["feats"].shape[0]
        feats[b, :n] = torch.from_numpy(it["feats"])
        lens[b] = n
    batch = {"utt_ids": [it["utt_id"] for it in items], "feats": feats, "feat_lens": lens}
    for key in items[0]:
        if key not in ("utt_id", "feats"):
            batch[key] = [it[key] for it in items]
    return batch
