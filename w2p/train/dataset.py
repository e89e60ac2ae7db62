"""Dataset over a dump dir (dump/fbank/<set>/) and the batch collation shared by all systems.

A dump dir holds feats.scp (+ ark), utt2num_frames, text, and optionally llm_tokens / bpe_tokens (utt -> ids,
written by stage 3) and other per-utterance files (ref, question, slots, ...), which are passed through as
``list[str]`` in the batch under their file name. A raw-audio dump (stage 2 ``--feats_type raw``) holds wav.scp
(+ segments) instead of features: fbank is computed when an item is read (in the DataLoader workers).

Memory: nothing per utterance is a Python object. Ids and string fields are one UTF-8 blob + offsets
(:class:`StringTable`), token ids one int32 array + offsets (:class:`IntLists`), ark specs a file index + a byte
offset; only small sets (``preload: auto``) keep their features in RAM. ``w2p benchmark_data`` measures it.
"""
from __future__ import annotations

import bisect
import logging
import os
import re

import numpy as np
import torch

from w2p.features import NUM_BINS, RAW, ArkReader, RawIndex, dump_type, raw_features
from w2p.io import is_pipe, read_kv, read_scp

log = logging.getLogger(__name__)

# files of a dump dir that are not per-utterance string fields of the batch
_NOT_FIELDS = {"feats.scp", "utt2num_frames", "llm_tokens", "bpe_tokens", "spk2utt", "intents", "cmvn.npz",
               "wav.scp", "segments", "reco2dur", "utt2dur", "feats_type", "frame_shift", "utt2spk"}


def find_bpe_model(dump_dir: str) -> str | None:
    """<recipe>/data/lang/bpe/bpe.model for a dump dir <recipe>/dump/fbank/<set> (None if absent)."""
    recipe = os.path.abspath(os.path.join(dump_dir, "..", "..", ".."))
    path = os.path.join(recipe, "data", "lang", "bpe", "bpe.model")
    return path if os.path.isfile(path) else None


# ``preload: auto`` keeps a set's features in RAM up to this many bytes (float32): every training process holds
# its own copy, and the lazy path with DataLoader workers is fast enough (w2p benchmark_data; README Benchmarks)
PRELOAD_AUTO_MAX_BYTES = 1 << 30
_ARK_SPEC = re.compile(r"^(?P<ark>.+):(?P<offset>[0-9]+)$")


class StringTable:
    """Strings by index, packed: one UTF-8 blob and int64 offsets (~9 bytes + the text per string)."""

    def __init__(self, strings):
        enc = [x.encode("utf-8") for x in strings]
        self.offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in enc], out=self.offsets[1:])
        self.blob = b"".join(enc)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = int(i) % len(self)
        return self.blob[self.offsets[i]:self.offsets[i + 1]].decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def index(self, key: str) -> int:
        """Position of ``key`` in a SORTED table (binary search; code-point order == UTF-8 byte order)."""
        i = bisect.bisect_left(self, key)
        if i == len(self) or self[i] != key:
            raise KeyError(key)
        return i


class IntLists:
    """Integer lists by index, packed: one int32 array and int64 offsets."""

    def __init__(self, lists):
        lists = list(lists)
        self.offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=self.offsets[1:])
        self.flat = np.fromiter((t for x in lists for t in x), dtype=np.int32, count=int(self.offsets[-1]))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()


def _aligned(path: str, utts: StringTable, what: str) -> list[str]:
    """The values of a ``key value`` file in the order of ``utts`` (every utterance must have one)."""
    kv = read_kv(path)
    missing = [u for u in utts if u not in kv]
    if missing:
        raise ValueError(f"{path}: no entry for {missing[0]} (and {len(missing) - 1} more); {what}")
    return [kv[u] for u in utts]


class DumpDataset(torch.utils.data.Dataset):
    """Utterances of one dump dir; items are dicts, :func:`collate` batches them.

    ``preload``: True reads every feature matrix into memory once (no I/O during epochs; fine for small sets);
    False reads each item when asked (ark entry by byte offset, or fbank from the audio of a raw dump), its
    lengths from ``utt2num_frames`` alone; ``"auto"`` preloads sets whose features take at most
    ``PRELOAD_AUTO_MAX_BYTES``."""

    def __init__(self, dump_dir: str, *, llm=None, bpe_model: str | None = None, preload: bool | str = "auto",
                 require_text: bool = True, allow_pipes: bool = False):
        self.dump_dir = dump_dir
        self.raw = dump_type(dump_dir) == RAW
        n2f = os.path.join(dump_dir, "utt2num_frames")
        self._ark_files: list[str] | None = None
        if self.raw:
            index = RawIndex(dump_dir)
            self.utt_ids = StringTable(index.utts)
            specs = [index.spec(u) for u in index.utts]
            self._wav = StringTable(p for p, _ in specs)
            self._seg = None if index.segments is None else np.array([s for _, s in specs], dtype=np.float64)
            self._specs = None
            del index, specs
        else:
            scp = os.path.join(dump_dir, "feats.scp")
            if not os.path.isfile(scp):
                raise FileNotFoundError(f"{scp} not found (run stage 2: make_fbank)")
            specs = read_scp(scp, allow_pipes=allow_pipes)
            self.utt_ids = StringTable(sorted(specs))
            self._pack_specs([specs[u] for u in self.utt_ids])
            del specs
        if not len(self.utt_ids):
            raise ValueError(f"{dump_dir}: no utterance (empty feats.scp / wav.scp)")
        self._read_ark = ArkReader()
        if preload == "auto":
            if os.path.isfile(n2f):
                nbytes = sum(int(v) for v in _aligned(n2f, self.utt_ids, "rerun stage 2")) * NUM_BINS * 4
                preload = nbytes <= PRELOAD_AUTO_MAX_BYTES
            else:
                preload = True  # the lengths come from the features themselves
        elif not isinstance(preload, bool):
            raise ValueError(f"preload must be true, false or auto, got {preload!r}")
        self.preloaded = bool(preload)
        self.feats: list[np.ndarray] | None = None
        if preload:
            self.feats = [self._load(i) for i in range(len(self.utt_ids))]
            self._num_frames = np.array([m.shape[0] for m in self.feats], dtype=np.int32)
        elif os.path.isfile(n2f):
            try:
                self._num_frames = np.array(_aligned(n2f, self.utt_ids, "rerun stage 2"), dtype=np.int64)
            except ValueError as e:
                if "no entry" in str(e):
                    raise
                raise ValueError(f"{n2f}: frame counts must be integers; rerun stage 2") from None
            self._num_frames = self._num_frames.astype(np.int32)
        else:
            raise FileNotFoundError(f"{n2f} not found (run stage 2)")

        self.fields: dict[str, StringTable] = {}
        text_path = os.path.join(dump_dir, "text")
        if os.path.isfile(text_path):
            self.fields["text"] = StringTable(_aligned(text_path, self.utt_ids, "every utterance needs a transcript"))
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
                self.fields[name] = StringTable([kv[u] for u in self.utt_ids])

        self.llm_tokens = self._token_file("llm_tokens")
        if self.llm_tokens is None and llm is not None and "text" in self.fields:
            self.llm_tokens = IntLists(llm.tokenize(list(self.fields["text"])))
        self.bpe_tokens = self._token_file("bpe_tokens")
        if self.bpe_tokens is None and "text" in self.fields:
            bpe_model = bpe_model or find_bpe_model(dump_dir)
            if bpe_model:
                import sentencepiece as spm

                sp = spm.SentencePieceProcessor(model_file=bpe_model)
                self.bpe_tokens = IntLists(sp.encode(t) for t in self.fields["text"])

    def _pack_specs(self, specs: list[str]) -> None:
        """``file.ark:offset`` specs as (file index int32, offset int64); anything else (slices, pipes) kept as
        strings."""
        files: dict[str, int] = {}
        idx = np.empty(len(specs), dtype=np.int32)
        off = np.empty(len(specs), dtype=np.int64)
        for i, s in enumerate(specs):
            m = _ARK_SPEC.match(s)
            if m is None or is_pipe(s):
                self._specs = StringTable(specs)
                return
            idx[i] = files.setdefault(m["ark"], len(files))
            off[i] = int(m["offset"])
        self._ark_files, self._ark_idx, self._ark_off, self._specs = list(files), idx, off, None

    def spec(self, i: int) -> str:
        if self._specs is not None:
            return self._specs[i]
        return f"{self._ark_files[self._ark_idx[i]]}:{int(self._ark_off[i])}"

    def _load(self, i: int) -> np.ndarray:
        u = self.utt_ids[i]
        if self.raw:
            seg = None if self._seg is None else (float(self._seg[i, 0]), float(self._seg[i, 1]))
            return self._checked(u, raw_features(u, self._wav[i], seg))
        m = self._read_ark(self.spec(i))
        # the preloaded copy owns its memory; a lazy read is copied once, into the batch (collate)
        return self._checked(u, np.array(m, dtype=np.float32, copy=True) if self.preloaded
                             else np.asarray(m, dtype=np.float32))

    def _token_file(self, name: str) -> IntLists | None:
        path = os.path.join(self.dump_dir, name)
        if not os.path.isfile(path):
            return None
        vals = _aligned(path, self.utt_ids, "rerun stage 3")
        try:
            return IntLists([int(x) for x in v.split()] for v in vals)
        except ValueError:
            bad = next(u for u, v in zip(self.utt_ids, vals) if not all(x.lstrip("-").isdigit() for x in v.split()))
            raise ValueError(f"{path}: utterance {bad} has non-integer token ids (rerun stage 3)") from None

    @property
    def num_frames(self) -> dict[str, int]:
        """utt -> frames (a dict built on demand; the dataset keeps an int32 array)."""
        return dict(zip(self.utt_ids, self._num_frames.tolist()))

    def __len__(self) -> int:
        return len(self.utt_ids)

    def lengths(self) -> np.ndarray:
        """Frames per utterance (int32 array, dataset order): from utt2num_frames, no feature is read."""
        return self._num_frames

    def _checked(self, u: str, m: np.ndarray) -> np.ndarray:
        """A feature matrix as training needs it: (T, D) and finite (a NaN would surface deep inside the model)."""
        where = os.path.join(self.dump_dir, "wav.scp" if self.raw else "feats.scp")
        if m.ndim != 2:
            raise ValueError(f"{where}: utterance {u} has features of shape {m.shape}, expected (T, 80)")
        if not np.isfinite(m.sum(dtype=np.float64)) and not np.isfinite(m).all():  # the sum: no temporary array
            raise ValueError(f"{where}: utterance {u} has NaN/inf features; re-extract it (stage 2) or drop it from "
                             "the set")
        return m

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        feats = self.feats[i] if self.feats is not None else self._load(i)
        return {"utt_id": self.utt_ids[i], "feats": feats, **self._meta(i)}

    def _meta(self, i: int) -> dict:
        item = {name: col[i] for name, col in self.fields.items()}
        if self.llm_tokens is not None:
            item["llm_tokens"] = self.llm_tokens[i]
        if self.bpe_tokens is not None:
            item["bpe_tokens"] = self.bpe_tokens[i]
        return item

    def __getitems__(self, indices) -> dict:
        """The batch of ``indices``, as ``collate([self[i] for i in indices])`` gives it (the DataLoader calls this,
        then :func:`collate` passes it through). Lazy ark reads take the fast path: every uncompressed float32
        matrix is read straight into its rows of the batch buffer, about twice as fast as item by item."""
        idx = [int(i) for i in indices]
        if self.feats is not None or self.raw or self._specs is not None:
            return collate([self[i] for i in idx])
        where = [(self._ark_files[self._ark_idx[i]], int(self._ark_off[i])) for i in idx]
        heads = [self._read_ark.float_header(a, o) for a, o in where]
        if any(h is None for h in heads) or len({c for _, c in heads}) != 1:
            return collate([self[i] for i in idx])  # compressed / double matrices, or mixed dims: kaldiio
        B, T, D = len(idx), max(r for r, _ in heads), heads[0][1]
        feats = _batch_buffer(B, T, D)
        out = feats.numpy()
        for b, (i, (ark, off), (rows, _)) in enumerate(zip(idx, where, heads)):
            u = self.utt_ids[i]
            if not self._read_ark.read_into(ark, off, out[b, :rows]):
                raise ValueError(f"{os.path.join(self.dump_dir, 'feats.scp')}: utterance {u}: {ark} ends inside "
                                 "its matrix (a truncated ark); rerun stage 2")
            self._checked(u, out[b, :rows])
            out[b, rows:] = 0.0
        batch = {"utt_ids": [self.utt_ids[i] for i in idx], "feats": feats,
                 "feat_lens": torch.tensor([r for r, _ in heads], dtype=torch.long)}
        metas = [self._meta(i) for i in idx]
        for key in metas[0]:
            batch[key] = [m[key] for m in metas]
        return batch


def _batch_buffer(B: int, T: int, D: int) -> torch.Tensor:
    """An uninitialised (B, T, D) float32 tensor; in a DataLoader worker in shared memory, so that handing the
    batch to the training process copies nothing (as torch's default_collate does)."""
    if torch.utils.data.get_worker_info() is not None:
        storage = torch.empty(0)._typed_storage()._new_shared(B * T * D, device="cpu")
        return torch.empty(0).new(storage).resize_(B, T, D)
    return torch.empty(B, T, D, dtype=torch.float32)


def collate(items: list[dict] | dict) -> dict:
    """Pad features to (B, T_max, 80); every other key becomes a list in batch order. A batch already collated by
    :meth:`DumpDataset.__getitems__` passes through."""
    if isinstance(items, dict):
        return items
    B = len(items)
    T = max(it["feats"].shape[0] for it in items)
    D = items[0]["feats"].shape[1]
    feats = _batch_buffer(B, T, D)
    out = feats.numpy()
    lens = torch.zeros(B, dtype=torch.long)
    for b, it in enumerate(items):
        n = it["feats"].shape[0]
        out[b, :n] = it["feats"]  # numpy copy: the (read-only) array read from the ark needs no extra copy
        out[b, n:] = 0.0
        lens[b] = n
    batch = {"utt_ids": [it["utt_id"] for it in items], "feats": feats, "feat_lens": lens}
    for key in items[0]:
        if key not in ("utt_id", "feats"):
            batch[key] = [it[key] for it in items]
    return batch


def batch_loader(dataset: torch.utils.data.Dataset, index_batches: list, *, num_workers: int = 0, seed: int = 0,
                 pin_memory: bool = False):
    """An iterator of collated batches, one per entry of ``index_batches`` (dataset indices), in that order, read by
    ``num_workers`` DataLoader workers (0: in this process). Reading is deterministic, so the batches are the same
    for any number of workers. The loader gets its own generator (``seed``): drawn from the global RNG, the
    workers' base seed would shift the training's dropout/SpecAugment streams."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return iter(torch.utils.data.DataLoader(
        dataset, batch_sampler=list(index_batches), collate_fn=collate, num_workers=num_workers,
        pin_memory=pin_memory, generator=gen, prefetch_factor=4 if num_workers else None,
        persistent_workers=False))
