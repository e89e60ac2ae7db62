"""Data-loader benchmark: resident memory per utterance and batches/s of the training loader on synthetic dumps.

For each size (``--sizes``, default 1k, 10k, 100k utterances) it writes a feature dump like stage 2's (feats.scp
into an ark, utt2num_frames, text, llm_tokens, utt2spk) and measures, in a fresh process per size and worker count,
what the trainer does: ``DumpDataset(preload=false)`` + ``BucketSampler`` (from utt2num_frames alone), then
batches through ``batch_loader`` (the trainer's DataLoader) with ``--workers`` workers.

Disk: ``--distinct`` matrices (default 1000, ~12 s each: ~370 MB) are written once; the feats.scp of every size
points utterance i at matrix i mod distinct (its real byte offset). Utterance count, lengths, per-utterance files
and the reading path are those of a real dump of that size; what is NOT reproduced is the disk: after the first
pass the ark sits in the page cache, so batches/s is the loader's CPU cost (parse, copy, collate, worker
transfer), not a disk's bandwidth. 100k distinct x 1200 frames x 80 x 4 B would be 38 GB.

Columns: ``meta B/utt`` = main-process RSS growth from building the dataset + sampler, per utterance;
``RSS MB`` = main-process RSS growth after reading ``--batches`` batches (fixed costs: prefetched batches,
worker pipes); ``slope B/utt`` = its growth per added utterance between consecutive sizes (the goal: <= 2 KB);
``worker MB`` = the largest worker's private (unshared) memory; ``batch/s``, ``utt/s``, ``MB/s`` (features
delivered). The last lines extrapolate the RSS to 281,241 utterances (LibriSpeech 960 h) and compare the
throughput with what the paper-scale config consumes (``--step_time``; see README "Benchmarks").
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

from w2p.errors import cli_main, positive_float, positive_int

LIBRISPEECH_960H_UTTS = 281241
WORDS = ("the of and to a in that he was it his is with as for had you not be her on at by which have or this "
         "from but all him she they were my are so me one their said there would when who what into no up out "
         "them more then could an some if time only very been did down man over any little upon great before").split()


def _csv_ints(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {s!r}")
    return out


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def private_kb(pid: int) -> int:
    """Unshared resident memory (USS) of a process: what it costs beyond the pages it shares with its parent."""
    out = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    out += int(line.split()[1])
    except OSError:
        return 0
    return out


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


# -- synthetic dumps ------------------------------------------------------------------------------------------
def write_ark(root: str, distinct: int, frames: int, dim: int, seed: int) -> list[tuple[str, int]]:
    """``distinct`` matrices of lengths ~U(frames/2, 3 frames/2) into root/ark/feats.ark: [(spec, frames)]."""
    import kaldiio
    import numpy as np

    from w2p.io import atomic_path, read_kv

    ark_dir = os.path.join(root, "ark")
    index = os.path.join(ark_dir, f"index.{distinct}.{frames}.{dim}.{seed}")
    if os.path.isfile(index):
        return [(v.rsplit(" ", 1)[0], int(v.rsplit(" ", 1)[1])) for v in read_kv(index).values()]
    os.makedirs(ark_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    lens = rng.integers(frames // 2, frames + frames // 2 + 1, distinct)
    base = rng.normal(0, 1, (int(lens.max()) + distinct, dim)).astype(np.float32)
    ark, scp = os.path.join(ark_dir, "feats.ark"), os.path.join(ark_dir, "feats.scp")
    with kaldiio.WriteHelper(f"ark,scp:{ark},{scp}") as w:
        for i, n in enumerate(lens):
            w(f"m{i:07d}", base[i:i + n])  # distinct content, no per-matrix random draw
    specs = list(read_kv(scp).values())
    with atomic_path(index) as tmp, open(tmp, "w") as f:
        f.writelines(f"m{i:07d} {s} {int(n)}\n" for i, (s, n) in enumerate(zip(specs, lens)))
    return list(zip(specs, (int(n) for n in lens)))


def write_dump(root: str, n: int, mats: list[tuple[str, int]], seed: int) -> str:
    """A dump dir of n utterances (LibriSpeech-like ids, ~190-character transcripts, 45 LLM tokens each)."""
    import numpy as np

    d = os.path.join(root, f"dump{n}")
    if os.path.isfile(os.path.join(d, "feats.scp")):
        return d
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed + n)
    words = np.array(WORDS)
    utts = [f"{1000 + i // 2000}-{10000 + i // 100}-{i % 100:04d}" for i in range(n)]
    files = {name: open(os.path.join(d, name), "w") for name in ("feats.scp", "utt2num_frames", "text",
                                                                  "llm_tokens", "utt2spk")}
    try:
        for i, u in enumerate(utts):
            spec, frames = mats[i % len(mats)]
            files["feats.scp"].write(f"{u} {spec}\n")
            files["utt2num_frames"].write(f"{u} {frames}\n")
            files["text"].write(f"{u} {' '.join(words[rng.integers(0, len(words), 38)])}\n")
            files["llm_tokens"].write(f"{u} {' '.join(map(str, rng.integers(3, 32000, 45)))}\n")
            files["utt2spk"].write(f"{u} {u.split('-')[0]}\n")
    finally:
        for f in files.values():
            f.close()
    return d


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def write_raw_dump(root: str, n: int, frames: int, seed: int, distinct: int = 16) -> str:
    """A raw-audio dump dir (stage 2 --feats_type raw) of n utterances over ``distinct`` 16 kHz flac files of
    ~frames/100 s: what the loader then costs is decoding + fbank, the same for any waveform of that length."""
    import numpy as np
    import soundfile as sf

    from w2p.data.audio import audio_samples
    from w2p.features import num_frames

    d = os.path.join(root, f"raw{n}")
    if os.path.isfile(os.path.join(d, "wav.scp")):
        return d
    os.makedirs(os.path.join(d, "audio"), exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for k in range(distinct):
        p = os.path.join(d, "audio", f"f{k}.flac")
        secs = rng.uniform(frames / 200, 3 * frames / 200)
        sf.write(p, (rng.normal(0, 0.1, int(secs * 16000))).astype(np.float32), 16000, subtype="PCM_16")
        files.append((p, num_frames(audio_samples(p))))
    utts = [f"{1000 + i // 2000}-{10000 + i // 100}-{i % 100:04d}" for i in range(n)]
    with open(os.path.join(d, "utt2num_frames"), "w") as nf, open(os.path.join(d, "text"), "w") as tx:
        for i, u in enumerate(utts):
            nf.write(f"{u} {files[i % distinct][1]}\n")
            tx.write(f"{u} a b c\n")
    with open(os.path.join(d, "feats_type"), "w") as f:
        f.write("raw\n")
    with open(os.path.join(d, "wav.scp"), "w") as f:
        f.writelines(f"{u} {files[i % distinct][0]}\n" for i, u in enumerate(utts))
    return d


# -- one measurement (a fresh process) ----------------------------------------------------------------------
def measure(dump_dir: str, workers: int, n_batches: int, batch_frames: int, max_batch_size: int,
            preload: bool) -> dict:
    import numpy as np  # noqa: F401  (imported before the baseline: not part of the dataset's memory)
    import torch

    from w2p.train.dataset import DumpDataset, batch_loader
    from w2p.train.sampler import BucketSampler

    torch.set_num_threads(1)
    gc.collect()
    rss0 = rss_kb()
    t0 = time.perf_counter()
    ds = DumpDataset(dump_dir, preload=preload)
    sampler = BucketSampler(ds.lengths(), batch_frames, max_batch_size=max_batch_size, seed=0)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss1 = rss_kb()
    # epochs 1, 2, ... until there are enough batches (a small set has few); a warm-up of one batch more than
    # the loader prefetches (prefetch_factor 4 per worker) drains its queue: the timed batches are then produced
    # while they are waited for (steady state); one more stays unread so the workers are alive when measured
    warm = 4 * workers + 1
    need = warm + n_batches + 1
    batches, epoch = [], 1
    while len(batches) < need:
        batches += [b for b, _ in sampler.epoch_batches(epoch)]
        epoch += 1
    it = batch_loader(ds, batches[:need], num_workers=workers, seed=0)
    timed = n_batches
    for _ in range(warm):
        next(it)
    utts = frames = 0
    t1 = time.perf_counter()
    for _ in range(timed):
        b = next(it)
        utts += len(b["utt_ids"])
        frames += int(b["feat_lens"].sum())
    dt = time.perf_counter() - t1
    del b
    gc.collect()
    _malloc_trim()  # freed batch buffers that glibc keeps are no per-utterance cost
    rss2 = rss_kb()
    kids = children(os.getpid())
    worker_kb = max([private_kb(p) for p in kids] or [0])
    del it
    return {"utts": len(ds), "workers": workers, "preload": bool(ds.preloaded), "build_s": build_s,
            "meta_kb": rss1 - rss0, "rss_kb": rss2 - rss0, "worker_kb": worker_kb, "n_workers_seen": len(kids),
            "batches": timed, "seconds": dt, "batch_s": timed / dt, "utt_s": utts / dt,
            "mb_s": frames * 80 * 4 / dt / 1e6, "mean_batch_utts": utts / timed}


# -- the table --------------------------------------------------------------------------------------------------
@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=_csv_ints, default=[1000, 10000, 100000], help="utterances per dump")
    ap.add_argument("--workers", type=_csv_ints, default=[0, 1], help="DataLoader worker counts to measure")
    ap.add_argument("--frames", type=positive_int, default=1200, help="mean frames per utterance (12 s)")
    ap.add_argument("--distinct", type=positive_int, default=1000,
                    help="distinct matrices on disk; utterance i reads matrix i mod distinct (see above)")
    ap.add_argument("--batches", type=positive_int, default=20, help="batches timed per measurement")
    ap.add_argument("--batch_frames", type=positive_int, default=400000, help="the paper-scale config's value")
    ap.add_argument("--max_batch_size", type=positive_int, default=256, help="the paper-scale config's value")
    ap.add_argument("--step_time", type=positive_float, default=0.5,
                    help="seconds per optimiser step of the paper-scale config (estimate: README 'Benchmarks')")
    ap.add_argument("--ranks", type=positive_int, default=4, help="GPUs of the paper-scale run (its config's note)")
    ap.add_argument("--raw", action="store_true",
                    help="also measure a raw-audio dump (flac + fbank on the fly) of the smallest size, in utt/s")
    ap.add_argument("--preload", action="store_true", help="measure preloaded datasets instead of lazy ones")
    ap.add_argument("--workdir", default="", help="where the dumps go (default: a temporary dir, removed)")
    ap.add_argument("--json", default="", help="also write the rows here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--_measure", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._measure:
        print(json.dumps(measure(a._measure, a.workers[0], a.batches, a.batch_frames, a.max_batch_size, a.preload)))
        return 0
    tmp = None
    if not a.workdir:
        tmp = tempfile.TemporaryDirectory(prefix="w2p_bench_data.")
        a.workdir = tmp.name
    try:
        return _run(a)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _measure_in_subprocess(d: str, workers: int, batches: int, batch_frames: int, max_batch_size: int,
                           preload: bool) -> dict:
    """One measurement in a fresh process (its RSS baseline holds nothing of the other sizes)."""
    cmd = [sys.executable, "-m", "w2p.bin.benchmark_data", "--_measure", d, "--workers", str(workers),
           "--batches", str(batches), "--batch_frames", str(batch_frames),
           "--max_batch_size", str(max_batch_size)] + (["--preload"] if preload else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if p.returncode != 0:
        raise RuntimeError(f"measurement of {d} with {workers} workers failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _run(a) -> int:
    t0 = time.time()
    mats = write_ark(a.workdir, a.distinct, a.frames, 80, a.seed)
    print(f"# {len(mats)} distinct matrices ({sum(n for _, n in mats) * 320 / 1e6:.0f} MB) written in "
          f"{time.time() - t0:.1f} s; utterance i reads matrix i mod {len(mats)} (page-cached after the first pass)",
          flush=True)
    rows = []
    for n in sorted(a.sizes):
        d = write_dump(a.workdir, n, mats, a.seed)
        for w in a.workers:
            rows.append(_measure_in_subprocess(d, w, a.batches, a.batch_frames, a.max_batch_size, a.preload))
    head = ["utts", "workers", "build s", "meta B/utt", "RSS MB", "slope B/utt", "worker MB", "batch/s", "utt/s",
            "MB/s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" for _ in head) + "|")
    prev: dict[int, dict] = {}
    slopes: dict[int, float] = {}
    for r in rows:
        p = prev.get(r["workers"])
        slope = (r["rss_kb"] - p["rss_kb"]) * 1024 / (r["utts"] - p["utts"]) if p and r["utts"] > p["utts"] else None
        if slope is not None:
            slopes[r["workers"]] = slope
        prev[r["workers"]] = r
        cells = [r["utts"], r["workers"], f"{r['build_s']:.2f}", f"{r['meta_kb'] * 1024 / r['utts']:.0f}",
                 f"{r['rss_kb'] / 1024:.1f}", "-" if slope is None else f"{slope:.0f}",
                 f"{r['worker_kb'] / 1024:.1f}" if r["workers"] else "-", f"{r['batch_s']:.2f}",
                 f"{r['utt_s']:.0f}", f"{r['mb_s']:.0f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    big = max(r["utts"] for r in rows)
    for w, last in prev.items():
        if w in slopes:
            est = last["rss_kb"] * 1024 + slopes[w] * (LIBRISPEECH_960H_UTTS - big)
            meta = last["meta_kb"] * 1024 / last["utts"]
            print(f"# workers={w}: RSS at {LIBRISPEECH_960H_UTTS} utterances (LibriSpeech 960 h) ~ "
                  f"{est / 2**20:.0f} MB "
                  f"(RSS at {big} + slope {slopes[w]:.0f} B/utt; metadata {meta:.0f} B/utt); goal <= 2048 B/utt: "
                  f"{'met' if slopes[w] <= 2048 else 'NOT met'}")
    batch_utts = sum(r["mean_batch_utts"] for r in rows) / len(rows)
    need = 10.0 / a.step_time  # global batches/s
    need_utts = need * batch_utts
    best = max(rows, key=lambda r: r["batch_s"])
    per_worker = max([r["utt_s"] / max(1, r["workers"]) for r in rows])
    print(f"# consumption: the paper-scale config (egs/mini_en/w2p1/conf/tuning/train_wav2prompt_paper.yaml: "
          f"batch_frames 400000, max_batch_size 256) makes global batches of ~{batch_utts:.0f} utterances of ~12 s; "
          f"at --step_time {a.step_time:g} s per optimiser step (README 'Benchmarks': estimate) training takes "
          f"{1 / a.step_time:.2f} batches/s; the goal, 10x, is {need:.1f} batches/s = {need_utts:.0f} utt/s")
    print(f"# one process here ({os.cpu_count()} CPUs): best {best['batch_s']:.2f} batches/s ({best['workers']} "
          f"workers, {best['utts']} utts) = {best['batch_s'] / need:.2f} of the goal: "
          f"{'met' if best['batch_s'] >= need else 'NOT met'}")
    print(f"# per loading process (a worker, or the main process with 0 workers) up to {per_worker:.0f} utt/s: the "
          f"goal takes {need_utts / per_worker:.1f} such processes in all, i.e. "
          f"{need_utts / per_worker / a.ranks:.1f} per rank of a {a.ranks}-GPU run (each rank reads 1/{a.ranks} of "
          "every global batch), given a free core each")
    if a.raw:
        d = write_raw_dump(a.workdir, min(a.sizes), a.frames, a.seed)
        for w in a.workers:
            r = _measure_in_subprocess(d, w, 4, 40000, a.max_batch_size, False)
            r["mode"] = "raw"
            rows.append(r)
            print(f"# raw-audio dump (--feats_type raw: flac decoded + fbank in the loader), {w} workers: "
                  f"{r['utt_s']:.0f} utt/s ({r['batch_s'] * r['mean_batch_utts'] / batch_utts:.3f} paper-scale "
                  f"batches/s; training takes {1 / a.step_time:.2f})")
    if a.json:
        from w2p.io import write_json

        write_json(a.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
