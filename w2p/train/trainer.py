"""The training loop shared by every system (Wav2Prompt and the baselines).

* global batches come from :class:`BucketSampler`; with N processes each takes every N-th utterance of the same
  global batch, its loss is weighted by (local utts / global utts) and gradients are SUMMED across processes,
  so N processes compute exactly the update of one process (up to float rounding and dropout streams);
* ``checkpoint.pt`` (model, optimiser, scheduler, sampler position, step, RNG of every rank, history) is written
  atomically every ``save_interval_steps`` and at each epoch end, so ``--resume`` continues exactly;
* after each epoch the model is validated and snapshotted (``snapshots/epoch<N>.pt``); at the end the
  ``nbest_average`` best snapshots by ``best_criterion`` are averaged into ``model.pt``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import pickle
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from w2p.io import write_json
from w2p.train.average import atomic_save, average_state_dicts
from w2p.config import save_config
from w2p.train.dataset import DumpDataset, batch_loader
from w2p.train.sampler import BucketSampler

log = logging.getLogger("w2p.train")


# -- helpers ---------------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG stream as tuples, numbers and tensors only, so that checkpoint.pt loads with
    ``torch.load(weights_only=True)`` (numpy's key array is stored as an int64 tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": random.getstate(),
          "numpy": (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    kind, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def load_checkpoint_file(path: str) -> dict:
    """checkpoint.pt, loaded as weights only: a checkpoint is data, never code. Checkpoints of earlier w2p
    versions hold numpy's RNG key array; numpy's array reconstructor (data only) is allowed for them."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except (RuntimeError, EOFError, OSError) as e:  # torch reads a truncated zip archive as a RuntimeError
        raise RuntimeError(f"{path}: cannot be read ({str(e).splitlines()[0]}); a truncated checkpoint (the run "
                           "was killed while an older w2p wrote it, or the disk filled)? Remove it to train from the "
                           "start, or run without --resume") from e
    from numpy._core.multiarray import _reconstruct  # numpy >= 2 (the pinned version)

    np_globals = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _reconstruct]
    try:
        with torch.serialization.safe_globals(np_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(f"{path}: not loadable as weights only (not a w2p checkpoint?): remove it to train from "
                           f"the start, or run without --resume. ({str(e).splitlines()[0]})") from e


def lr_lambda(name: str, conf: dict, total_steps: int | None = None):
    """LR factor per optimiser step. ``warmup_cosine`` decays to ``final_ratio`` at ``total_steps`` (the config's
    max_steps, else max_epoch x batches per epoch): on a fixed budget, ending at a low LR gains much more than
    the slow 1/sqrt decay of warmuplr."""
    warm = max(1, int(conf.get("warmup_steps", 0) or 1))
    if name == "warmuplr":  # ESPnet WarmupLR: peak = lr at step == warmup, then ~ 1/sqrt(step)
        return lambda s: min((s + 1) / warm, math.sqrt(warm / (s + 1)))
    if name == "warmup_constant":
        return lambda s: min(1.0, (s + 1) / warm)
    if name == "warmup_cosine":
        if not total_steps:
            raise ValueError("scheduler warmup_cosine needs the number of training steps (max_epoch or max_steps)")
        final = float(conf.get("final_ratio", 0.02))
        total = max(warm + 1, int(total_steps))

        def f(s):
            if s < warm:
                return (s + 1) / warm
            x = min(1.0, (s - warm) / (total - warm))
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * x))
        return f
    if name in ("none", None):
        return lambda s: 1.0
    raise ValueError(f"unknown scheduler {name!r}: warmuplr | warmup_constant | warmup_cosine | none")


def build_optimizer(name: str, params, conf: dict):
    conf = dict(conf)
    if "betas" in conf:
        conf["betas"] = tuple(conf["betas"])
    if name == "adam":
        return torch.optim.Adam(params, **conf)
    if name == "adamw":
        return torch.optim.AdamW(params, **conf)
    raise ValueError(f"unknown optim {name!r}: adam | adamw")


def _load_init(model: torch.nn.Module, path: str, exclude: list[str]) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--init {path} not found (train that system first)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        src = load_file(path)
    else:
        src = torch.load(path, map_location="cpu", weights_only=True)
        if "model" in src and isinstance(src["model"], dict):  # a training checkpoint
            src = src["model"]
    own = model.state_dict()
    taken, skipped = {}, []
    for k, v in src.items():
        if any(k.startswith(e) for e in exclude):
            continue
        if k in own and own[k].shape == v.shape:
            taken[k] = v
        else:
            skipped.append(k)
    if not taken:
        raise ValueError(f"--init {path}: no parameter name/shape matches this model")
    model.load_state_dict(taken, strict=False)
    log.info("init from %s: %d tensors loaded, %d skipped (name/shape mismatch), %d of the model's not in init",
             path, len(taken), len(skipped), len(set(own) - set(taken)))


def model_needs_llm(model_name: str) -> bool:
    from w2p.models import model_class

    return bool(model_class(model_name).needs_llm)


def loader_workers(setting, dataset: DumpDataset, world: int) -> int:
    """``num_workers``: an int, or ``auto``: none for a preloaded set (its items are already in memory), else
    up to 8 per process, leaving each process one core (workers read arks / compute fbank of raw dumps)."""
    if setting != "auto":
        n = int(setting)
        if n < 0:
            raise ValueError(f"num_workers must be >= 0 or auto, got {setting}")
        return n
    if dataset.preloaded:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cores // max(1, world) - 1))


def model_needs_llm_forward(model_name: str, model_conf: dict) -> bool:
    """False when the config uses the LLM's tokenizer and embedding table only (Wav2Prompt without a CE term):
    then the LLM is loaded embeddings-only."""
    from w2p.models import model_class

    return bool(model_class(model_name).needs_llm_forward(dict(model_conf or {})))


# -- distributed ---------------------------------------------------------------------------------------------
class Dist:
    def __init__(self, ngpu: int = 0):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = ngpu > 0
        if use_cuda and not torch.cuda.is_available():
            raise SystemExit("--ngpu > 0 but torch sees no CUDA device (CPU-only torch?); use --ngpu 0")
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def sum_by_key(self, values: dict[str, float]) -> dict[str, float]:
        """Sums of ``values`` over the ranks, key by key. Ranks may hold different keys (a validation batch with
        one task logs no per-task CE): the keys are agreed first, so the reduced tensors always line up."""
        keys = sorted(values)
        if self.world > 1:
            keys = sorted(set().union(*self.gather(keys)))
        t = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64)
        if self.world > 1:
            t = t.to(self.device)
            dist.all_reduce(t)
        return dict(zip(keys, t.cpu().tolist()))

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# -- trainer -------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, conf: dict, *, train_dir: str, valid_dir: str, output_dir: str, llm=None,
                 init: str | None = None, resume: bool = False, ngpu: int = 0):
        self.conf, self.output_dir = conf, output_dir
        self.dist = Dist(ngpu)
        self.device = self.dist.device
        os.makedirs(os.path.join(output_dir, "snapshots"), exist_ok=True)
        self._setup_logging()
        amp = conf.get("amp", "auto")
        self.amp = (self.device.type == "cuda") if amp == "auto" else bool(amp) and self.device.type == "cuda"

        from w2p.models import build_model

        # same seed on every rank for the initial weights (rank 0's are broadcast anyway)
        seed_everything(int(conf["seed"]))
        model_conf = dict(conf.get("model_conf") or {})
        enc = model_conf.get("encoder")
        if isinstance(enc, dict) and not enc.get("cmvn"):
            cmvn = os.path.join(train_dir, "cmvn.npz")
            if os.path.isfile(cmvn):
                model_conf["encoder"] = {**enc, "cmvn": cmvn}
                conf["model_conf"] = model_conf
        self.llm = llm
        if llm is not None and conf.get("llm_fsdp") and not getattr(llm, "embeddings_only", False):
            llm.shard()  # decoder layers split across ranks (loaded on the CPU by w2p.bin.train), then moved
            llm.move_to(self.device)
        self.model = build_model(conf["model"], model_conf, llm).to(self.device)
        self.sync_bn = 0
        if self.dist.world > 1:  # BatchNorm statistics of the global batch (w2p/train/distributed.py)
            from w2p.train.distributed import convert_sync_batchnorm

            self.sync_bn = convert_sync_batchnorm(self.model)
        if init:
            _load_init(self.model, init, list(conf.get("init_exclude") or []))
        if self.dist.world > 1:
            for t in self.model.state_dict().values():
                dist.broadcast(t, 0)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        n_par = sum(p.numel() for p in self.params)
        log.info("model %s: %.2fM trainable parameters; device %s; world %d; amp %s; %d synced BatchNorm; LLM %s",
                 conf["model"], n_par / 1e6, self.device, self.dist.world, self.amp, self.sync_bn,
                 "none" if llm is None else ("embeddings only" if getattr(llm, "embeddings_only", False) else
                                             f"full, checkpointing {getattr(llm, 'checkpointing', False)}, "
                                             f"FSDP {getattr(llm, 'sharded', False)}"))
        self.optim = build_optimizer(conf["optim"], self.params, conf["optim_conf"])
        pipes = bool(conf.get("allow_scp_pipes"))
        self.train_set = DumpDataset(train_dir, llm=llm, preload=conf.get("preload", "auto"), allow_pipes=pipes)
        self.valid_set = DumpDataset(valid_dir, llm=llm, preload=conf.get("preload", "auto"), allow_pipes=pipes)
        self.num_workers = loader_workers(conf.get("num_workers", "auto"), self.train_set, self.dist.world)
        log.info("data: %d train utterances (%s), %d DataLoader workers", len(self.train_set),
                 "preloaded" if self.train_set.preloaded else "read lazily", self.num_workers)
        if self.train_set.llm_tokens is not None:
            self.model.set_train_vocab(np.unique(self.train_set.llm_tokens.flat).tolist())
        self.sampler = BucketSampler(self.train_set.lengths(), int(conf["batch_frames"]),
                                     max_batch_size=conf.get("max_batch_size"), shuffle=True,
                                     seed=int(conf["seed"]), rank=self.dist.rank, world_size=self.dist.world)
        self.valid_sampler = BucketSampler(self.valid_set.lengths(), int(conf["batch_frames"]),
                                           max_batch_size=conf.get("max_batch_size"), shuffle=False,
                                           rank=self.dist.rank, world_size=min(self.dist.world,
                                                                               len(self.valid_set)))
        accum = max(1, int(conf["accum_grad"]))
        total_steps = conf.get("max_steps") or int(conf["max_epoch"]) * math.ceil(len(self.sampler) / accum)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lr_lambda(conf["scheduler"],
                                                                               conf.get("scheduler_conf") or {},
                                                                               int(total_steps)))
        self.step = 0
        self.history: list[dict] = []  # per epoch: {"epoch", "valid": {...}, "train": {...}}
        self.ckpt_path = os.path.join(output_dir, "checkpoint.pt")
        # every rank starts from its own stream (dropout, SpecAugment)
        seed_everything(int(conf["seed"]) + 1 + self.dist.rank)
        if resume and os.path.isfile(self.ckpt_path):
            self._load_checkpoint()
        elif self.dist.main:
            for f in os.listdir(os.path.join(output_dir, "snapshots")):
                os.remove(os.path.join(output_dir, "snapshots", f))
            for f in ("metrics.jsonl", "model.pt"):
                if os.path.exists(os.path.join(output_dir, f)):
                    os.remove(os.path.join(output_dir, f))
        if self.dist.main:
            save_config(conf, os.path.join(output_dir, "config.yaml"))
        self.dist.barrier()
        self.tb = None
        if self.dist.main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
            except Exception as e:  # tensorboard is optional at run time
                log.warning("no TensorBoard logging: %s", e)

    def _setup_logging(self):
        root = logging.getLogger()
        fmt = logging.Formatter(f"%(asctime)s [rank{self.dist.rank}] %(levelname)s %(message)s")
        if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                   for h in root.handlers):
            sh = logging.StreamHandler(sys.stderr)
            sh.setFormatter(fmt)
            root.addHandler(sh)
        if self.dist.main:
            fh = logging.FileHandler(os.path.join(self.output_dir, "train.log"))
            fh.setFormatter(fmt)
            root.addHandler(fh)
        root.setLevel(logging.INFO)
        logging.getLogger("transformers").setLevel(logging.ERROR)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _save_checkpoint(self):
        rngs = self.dist.gather(rng_state())
        if self.dist.main:
            atomic_save({
                "model": self.model.state_dict(), "optim": self.optim.state_dict(),
                "sched": self.sched.state_dict(), "sampler": self.sampler.state_dict(), "step": self.step,
                "history": self.history, "rng": rngs, "world": self.dist.world,
            }, self.ckpt_path)
            log.info("checkpoint: step %d (epoch %d, batch %d)", self.step, self.sampler.epoch,
                     self.sampler.position)
        self.dist.barrier()

    def _load_checkpoint(self):
        ck = load_checkpoint_file(self.ckpt_path)
        try:
            self.model.load_state_dict(ck["model"])
        except (RuntimeError, KeyError) as e:
            raise RuntimeError(f"{self.ckpt_path}: the checkpoint does not fit this config's model (written by a run "
                               f"with another config?): {str(e).splitlines()[0]}. Train into a new --output_dir, or "
                               "remove the checkpoint to start over") from e
        self.optim.load_state_dict(ck["optim"])
        self.sched.load_state_dict(ck["sched"])
        self.sampler.load_state_dict(ck["sampler"])
        self.step, self.history = int(ck["step"]), list(ck["history"])
        if ck.get("world", 1) == self.dist.world:
            set_rng_state(ck["rng"][self.dist.rank])
        else:
            log.warning("resume with %d processes (checkpoint had %d): RNG streams restart", self.dist.world,
                        ck.get("world"))
        log.info("resumed from %s: step %d, epoch %d, batch %d", self.ckpt_path, self.step, self.sampler.epoch,
                 self.sampler.position)

    # -- data ------------------------------------------------------------------------------------------------
    def _batches(self, dataset: DumpDataset, batches: list, tag: int):
        """Collated batches of ``batches`` ((indices, global size) pairs) in order, through the DataLoader."""
        return batch_loader(dataset, [idx for idx, _ in batches], num_workers=self.num_workers,
                            seed=int(self.conf["seed"]) * 1000003 + tag, pin_memory=self.device.type == "cuda")

    # -- steps -----------------------------------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def _forward(self, batch: dict):
        self.model.set_train_step(self.step)  # a loss schedule (Wav2Prompt's CTC warm-up) sees the global step
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss, stats = self.model(batch)
        return loss, stats

    def _reduce_stats(self, stats: dict, n_local: int, n_global: int) -> dict:
        sums = self.dist.sum_by_key({k: float(v) * n_local for k, v in stats.items()})
        return {k: v / n_global for k, v in sums.items()}

    def _sync_grads(self):
        if self.dist.world == 1:
            return
        grads = []
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        for g, s in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(s)

    def validate(self) -> dict:
        self.model.eval()
        sums: dict[str, float] = {}
        total = 0
        batches = self.valid_sampler.epoch_batches(1)
        with torch.no_grad():
            for (idx, gsize), batch in zip(batches, self._batches(self.valid_set, batches, -1)):
                batch = self._to_device(batch)
                _, stats = self._forward(batch)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
                total += len(idx)
        sums = self.dist.sum_by_key({**sums, "__n_utts__": float(total)})  # not a stats key: models name theirs
        n = sums.pop("__n_utts__")
        self.model.train()
        return {k: v / n for k, v in sums.items()}

    def _log_metrics(self, rec: dict):
        if not self.dist.main:
            return
        with open(os.path.join(self.output_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            tag = rec.get("phase", "train")
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{tag}/{k}", v, rec["step"])

    # -- main loop -------------------------------------------------------------------------------------------
    def run(self) -> str:
        conf = self.conf
        max_epoch, accum = int(conf["max_epoch"]), max(1, int(conf["accum_grad"]))
        max_steps = conf.get("max_steps")
        log_every, save_every = int(conf["log_interval"]), int(conf["save_interval_steps"] or 0)
        clip = conf.get("grad_clip")
        self.model.train()
        stop = False
        while self.sampler.epoch <= max_epoch and not stop:
            epoch = self.sampler.epoch
            batches = self.sampler.epoch_batches(epoch)
            t0 = time.time()
            acc_stats: dict[str, float] = {}
            acc_n = 0
            interval: dict[str, float] = {}
            interval_n = 0
            pbar = None
            if self.dist.main and sys.stderr.isatty():
                from tqdm import tqdm

                pbar = tqdm(total=len(batches), initial=self.sampler.position, desc=f"epoch {epoch}",
                            leave=False, dynamic_ncols=True)
            bi = self.sampler.position
            loader = self._batches(self.train_set, batches[bi:], epoch)
            while bi < len(batches):
                if max_steps and self.step >= int(max_steps):  # a finished run, resumed: no extra step
                    stop = True
                    break
                group = batches[bi:bi + accum]
                self.optim.zero_grad(set_to_none=True)
                step_stats: dict[str, float] = {}
                step_n = 0
                for idx, gsize in group:
                    batch = self._to_device(next(loader))
                    if self.sync_bn:
                        from w2p.train.distributed import pad_to_global_length

                        batch = pad_to_global_length(batch, self.device)
                    loss, stats = self._forward(batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite loss at step {self.step + 1} "
                                                 f"(utts {batch['utt_ids'][:3]}...); lower the lr")
                    (loss * (len(idx) / gsize) / len(group)).backward()
                    red = self._reduce_stats({"loss": float(loss.detach()), **stats}, len(idx), gsize)
                    for k, v in red.items():
                        step_stats[k] = step_stats.get(k, 0.0) + v * gsize
                    step_n += gsize
                self._sync_grads()
                gnorm = float(torch.nn.utils.clip_grad_norm_(self.params, clip if clip else float("inf")))
                if math.isfinite(gnorm):
                    self.optim.step()
                else:
                    log.warning("step %d: non-finite grad norm, update skipped", self.step + 1)
                self.sched.step()
                self.step += 1
                bi += len(group)
                self.sampler.position = bi
                for k, v in step_stats.items():
                    acc_stats[k] = acc_stats.get(k, 0.0) + v
                    interval[k] = interval.get(k, 0.0) + v
                acc_n += step_n
                interval_n += step_n
                if pbar is not None:
                    pbar.update(len(group))
                    pbar.set_postfix(loss=f"{step_stats['loss'] / step_n:.3f}")
                if self.step % log_every == 0:
                    rec = {"phase": "train", "epoch": epoch, "step": self.step,
                           "lr": self.optim.param_groups[0]["lr"], "grad_norm": gnorm,
                           **{k: v / interval_n for k, v in interval.items()}}
                    self._log_metrics(rec)
                    log.info("epoch %d step %d: %s", epoch, self.step,
                             " ".join(f"{k}={v:.4g}" for k, v in rec.items()
                                      if k not in ("phase", "epoch", "step")))
                    interval, interval_n = {}, 0
                if max_steps and self.step >= int(max_steps):
                    stop = True
                    break
                if save_every and self.step % save_every == 0 and bi < len(batches):
                    self._save_checkpoint()
            del loader  # its workers end here
            if pbar is not None:
                pbar.close()
            if stop and bi < len(batches):
                self._save_checkpoint()
                break
            valid = self.validate()
            train_avg = {k: v / max(1, acc_n) for k, v in acc_stats.items()}
            self.history.append({"epoch": epoch, "valid": valid, "train": train_avg})
            self._log_metrics({"phase": "valid", "epoch": epoch, "step": self.step, **valid})
            log.info("epoch %d done in %.1fs: valid %s", epoch, time.time() - t0,
                     " ".join(f"{k}={v:.4g}" for k, v in valid.items()))
            if self.dist.main:
                atomic_save(self.model.state_dict(), os.path.join(self.output_dir, "snapshots", f"epoch{epoch}.pt"))
                self._prune_snapshots()
            self.sampler.epoch, self.sampler.position = epoch + 1, 0
            self._save_checkpoint()
            if self._patience_exhausted():
                log.info("no improvement of valid %s for %s epochs: stopping", conf["best_criterion"],
                         conf["patience"])
                break
        return self.finish()

    def _ranked_epochs(self) -> list[int]:
        crit = self.conf["best_criterion"]
        scored = [(h["valid"].get(crit, float("inf")), h["epoch"]) for h in self.history]
        return [e for _, e in sorted(scored)]

    def _prune_snapshots(self):
        keep = set(self._ranked_epochs()[: int(self.conf["nbest_average"])])
        snap_dir = os.path.join(self.output_dir, "snapshots")
        for f in os.listdir(snap_dir):
            if f.startswith("epoch") and f.endswith(".pt") and int(f[5:-3]) not in keep:
                os.remove(os.path.join(snap_dir, f))

    def _patience_exhausted(self) -> bool:
        pat = self.conf.get("patience")
        if not pat or not self.history:
            return False
        best = self._ranked_epochs()[0]
        return self.history[-1]["epoch"] - best >= int(pat)

    def finish(self) -> str:
        out = os.path.join(self.output_dir, "model.pt")
        if self.dist.main:
            snap_dir = os.path.join(self.output_dir, "snapshots")
            best = [e for e in self._ranked_epochs()[: int(self.conf["nbest_average"])]
                    if os.path.isfile(os.path.join(snap_dir, f"epoch{e}.pt"))]
            if best:
                atomic_save(average_state_dicts([os.path.join(snap_dir, f"epoch{e}.pt") for e in best]), out)
                log.info("model.pt = average of epochs %s (best by valid %s)", best, self.conf["best_criterion"])
            else:  # stopped before the first epoch ended (max_steps): the current weights
                atomic_save(self.model.state_dict(), out)
                log.info("model.pt = current weights (no finished epoch)")
            write_json(os.path.join(self.output_dir, "history.json"), self.history, ensure_ascii=True)
            if self.tb is not None:
                self.tb.close()
        self.dist.barrier()
        return out
