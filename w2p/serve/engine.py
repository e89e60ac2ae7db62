"""Dynamic batching for the server: requests that arrive within a short window go through the speech encoder and
the frozen LLM together.

One worker thread owns the model. ``submit`` queues a request and returns a ``Future``; when the queue already
holds ``max_queue`` requests it raises :class:`QueueFull` at once (the server answers 503) instead of letting
memory grow. The worker takes the first waiting request, waits at most ``window_s`` for more (up to ``max_batch``),
runs the encoder on the padded batch, then the LLM once per group of requests with the same ``max_new_tokens``
(left-padded prompts, FrozenLLM.generate). A request whose prompt is too long for the LLM fails alone: a group that
fails is retried one request at a time, so one bad request never fails its batch-mates.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The request queue is at its bound."""


@dataclass
class Request:
    feats: torch.Tensor  # (T, 80) fbank of the audio
    template: str  # the user turn with exactly one {speech} (every other field already filled in)
    max_new_tokens: int
    readout: bool = False
    future: Future = field(default_factory=Future)
    t_submit: float = field(default_factory=time.monotonic)


@dataclass
class Result:
    text: str
    prompt_tokens: int  # LLM input positions: template tokens + prompt vectors
    completion_tokens: int
    readout: dict | None = None
    batch_size: int = 1  # how many requests shared the encoder pass (for logs / the benchmark)


def readout(llm, prompts, i: int, *, alphas: bool = True) -> dict:
    """What the LLM hears for utterance ``i`` of a ``SpeechPrompts``: per prompt vector the nearest LLM token (by
    cosine to the input embeddings), its cosine and its firing time in seconds (CIF firing frame x seconds per
    encoder frame, i.e. x 10 ms fbank shift x subsampling); with ``alphas`` the CIF weight of every encoder
    frame."""
    v = prompts.vectors[i].detach().float()
    ids = llm.nearest_tokens(v)
    cos = torch.nn.functional.cosine_similarity(v, llm.embed(ids).float().to(v.device), dim=-1) if ids else v[:0, 0]
    fires = prompts.fire_frames[i] if prompts.fire_frames is not None else [None] * len(ids)
    shift = prompts.frame_shift
    toks = [{"token": s, "id": int(t), "cosine": round(float(c), 4), "frame": f,
             "time": None if f is None or shift is None else round(f * shift, 3)}
            for s, t, c, f in zip(llm.token_strings(ids), ids, cos.tolist(), fires)]
    out = {"tokens": toks, "frame_shift": shift}
    if alphas and prompts.alphas is not None:
        n = int(prompts.alpha_lengths[i])
        out["alphas"] = [round(float(a), 4) for a in prompts.alphas[i, :n].tolist()]
    return out


class BatchEngine:
    def __init__(self, pipe, *, max_batch: int = 16, window_s: float = 0.01, max_queue: int = 64):
        if max_batch < 1 or max_queue < 1 or window_s < 0:
            raise ValueError(f"BatchEngine: max_batch {max_batch} and max_queue {max_queue} must be >= 1, window_s "
                             f"{window_s} >= 0")
        self.pipe, self.max_batch, self.window_s, self.max_queue = pipe, int(max_batch), float(window_s), int(max_queue)
        self._q: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches run so far
        self.max_seen_batch = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "BatchEngine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="w2p-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return len(self._q)

    def submit(self, req: Request) -> Future:
        with self._cv:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self._q) >= self.max_queue:
                raise QueueFull(f"{len(self._q)} requests are waiting (the bound is {self.max_queue}); retry later")
            self._q.append(req)
            self._cv.notify()
        return req.future

    # -- the worker --------------------------------------------------------------------------------------------
    def _take(self) -> list[Request] | None:
        with self._cv:
            while not self._q and not self._stop:
                self._cv.wait()
            if not self._q:
                return None
            # the window counts from the oldest waiting request, so a steady stream never starves it
            deadline = self._q[0].t_submit + self.window_s
            while len(self._q) < self.max_batch and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            return [self._q.popleft() for _ in range(min(len(self._q), self.max_batch))]

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                results = self.run_batch(batch)
            except Exception as e:  # noqa: BLE001 - the failure goes to every waiting request, the worker lives on
                log.exception("batch of %d failed", len(batch))
                for r in batch:
                    r.future.set_exception(e)
                continue
            for r, res in zip(batch, results):
                if isinstance(res, BaseException):
                    r.future.set_exception(res)
                else:
                    r.future.set_result(res)

    @torch.inference_mode()
    def run_batch(self, batch: list[Request]) -> list:
        """Run requests together: one padded encoder pass, one LLM generation per ``max_new_tokens`` group.
        Returns a Result (or the exception of that request) per request."""
        from w2p.decode import pad_feats

        pipe = self.pipe
        self.batches += 1
        self.max_seen_batch = max(self.max_seen_batch, len(batch))
        feats, lens = pad_feats([r.feats for r in batch])
        dev = next(pipe.model.parameters()).device
        sp = pipe.model.prompts(feats.to(dev), lens.to(dev))
        out: list = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(batch):
            groups.setdefault(r.max_new_tokens, []).append(i)
        for max_new, idx in groups.items():
            try:
                texts, n_in = self._generate(batch, sp, idx, max_new)
            except ValueError as e:
                if len(idx) == 1:
                    out[idx[0]] = e
                    continue
                for i in idx:  # find the request that cannot run; the others still get their answer
                    try:
                        t, n = self._generate(batch, sp, [i], max_new)
                        out[i] = self._result(batch, sp, i, t[0], n[0], len(batch))
                    except ValueError as e1:
                        out[i] = e1
                continue
            for i, t, n in zip(idx, texts, n_in):
                out[i] = self._result(batch, sp, i, t, n, len(batch))
        return out

    def _generate(self, batch, sp, idx, max_new):
        pipe, llm = self.pipe, self.pipe.llm
        inputs = llm.build_inputs([batch[i].template for i in idx], [sp.vectors[i] for i in idx])
        texts = llm.generate(inputs, max_new_tokens=max_new, num_beams=int(pipe.decode["beam"]),
                             repetition_penalty=float(pipe.decode["repetition_penalty"]), share_prefix=True)
        return texts, [int(n) for n in inputs.attention_mask.sum(1).tolist()]

    def _result(self, batch, sp, i, text, n_in, size) -> Result:
        llm = self.pipe.llm
        n_out = len(llm.tokenize([text])[0]) if text else 0
        ro = readout(llm, sp, i) if batch[i].readout else None
        return Result(text=text, prompt_tokens=n_in, completion_tokens=n_out, readout=ro, batch_size=size)
