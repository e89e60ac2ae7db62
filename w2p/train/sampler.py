"""Length-bucketed batches (by frames), deterministic per (seed, epoch), resumable mid-epoch, and split across
distributed ranks so that N processes see exactly the same global batches as one process."""
from __future__ import annotations

import random

import numpy as np


def bucket_batches(lengths, batch_frames: int, max_batch_size: int | None = None,
                   min_batch_size: int = 1) -> list[list[int]]:
    """Sort by length and cut greedily so that (#utts x longest) <= batch_frames (padding included).

    A batch always gets at least ``min_batch_size`` utterances (the number of ranks), even if over budget."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches, cur = [], []
    for i in order:
        longest = lengths[i]  # sorted ascending: the new item is the longest
        full = (len(cur) + 1) * longest > batch_frames or (max_batch_size and len(cur) + 1 > max_batch_size)
        if cur and full and len(cur) >= min_batch_size:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        if len(cur) < min_batch_size and batches:
            batches[-1].extend(cur)
        else:
            batches.append(cur)
    return batches


def bucket_batches_np(lengths, batch_frames: int, max_batch_size: int | None = None,
                      min_batch_size: int = 1) -> list[np.ndarray]:
    """:func:`bucket_batches` (its oracle) on an array: the same batches as int32 index arrays, without a Python
    object per utterance (a stable argsort is the (length, index) order; one pass finds the cut points)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable").astype(np.int32)
    srt = lengths[order].tolist()
    cuts, start = [], 0
    for j, longest in enumerate(srt):
        n = j - start  # utterances in the current batch
        full = (n + 1) * longest > batch_frames or (max_batch_size and n + 1 > max_batch_size)
        if n and full and n >= min_batch_size:
            cuts.append(j)
            start = j
    if len(srt) - start < min_batch_size and cuts:
        cuts.pop()  # the short tail joins the previous batch
    return np.split(order, cuts) if len(srt) else []


class BucketSampler:
    """Global batches of dataset indices. ``epoch_batches(epoch)`` gives this rank's share of every batch of the
    epoch in a shuffled order fixed by (seed, epoch); ``position`` (batches already done) makes it resumable."""

    def __init__(self, lengths, batch_frames: int, *, max_batch_size: int | None = None,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        """``lengths``: frames per utterance (utt2num_frames; a list or an int array)."""
        if world_size > len(lengths):
            raise ValueError(f"{len(lengths)} utterances cannot be split over {world_size} processes")
        # int32 index arrays: ~4 bytes per utterance however large the corpus
        self.batches = bucket_batches_np(lengths, batch_frames, max_batch_size, min_batch_size=world_size)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch, self.position = 1, 0

    def __len__(self) -> int:
        return len(self.batches)

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 1000003 + epoch).shuffle(order)
        return order

    def global_batches(self, epoch: int) -> list[list[int]]:
        return [self.batches[i].tolist() for i in self._order(epoch)]

    def epoch_batches(self, epoch: int) -> list[tuple[np.ndarray, int]]:
        """(this rank's indices, global batch size) for every batch of ``epoch``."""
        return [(self.batches[i][self.rank::self.world_size], len(self.batches[i])) for i in self._order(epoch)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "n_batches": len(self.batches)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n_batches", len(self.batches)) != len(self.batches):
            raise ValueError("resume: the batches differ from the checkpoint's (data or batch_frames changed); "
                             "start a new exp dir or keep the original settings")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
