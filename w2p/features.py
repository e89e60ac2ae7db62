"""80-dim log-mel filterbank features (kaldi-native-fbank), sharded extraction, merge and global CMVN.

Layout (per set): ``dump/fbank/<set>/data/feats.<J>.ark`` + ``feats.<J>.scp`` written by job J of N,
then ``merge`` writes ``feats.scp`` (absolute ark paths), ``utt2num_frames`` and copies of the per-utt
files of ``data/<set>`` restricted to the utterances that have features.

Atomicity: a job first deletes the set's merged ``feats.scp`` and its own shard scp, writes its ark
and scp to temp files, and renames them only when complete. A killed job therefore leaves no scp
pointing into a half-written ark, and no stale ``feats.scp`` survives a re-extraction: later stages
find ``feats.scp`` missing and are told to run stage 2.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil

import numpy as np

from w2p.data.audio import AudioError, load_audio
from w2p.data.datadir import COPY_TO_DUMP, PER_UTT_FILES, spk2utt_from_utt2spk, validate_data_dir
from w2p.io import atomic_path, load_feats, read_kv, read_scp, write_kv

log = logging.getLogger("w2p.features")

NUM_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0


class FeatureError(ValueError):
    pass


def fbank(wave: np.ndarray, sr: int = 16000, num_bins: int = NUM_BINS, dither: float = 0.0) -> np.ndarray:
    """(T, num_bins) float32 log-mel fbank, Kaldi conventions (int16 sample scale, povey window, snip_edges).

    dither defaults to 0 so features are a deterministic function of the audio.
    """
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sr
    opts.frame_opts.frame_length_ms = FRAME_LENGTH_MS
    opts.frame_opts.frame_shift_ms = FRAME_SHIFT_MS
    opts.frame_opts.dither = dither
    opts.mel_opts.num_bins = num_bins
    fb = knf.OnlineFbank(opts)
    # Kaldi computes features on int16-valued samples; keep that scale so stats match Kaldi/ESPnet dumps.
    fb.accept_waveform(sr, np.asarray(wave, dtype=np.float32) * 32768.0)
    fb.input_finished()
    n = fb.num_frames_ready
    out = np.empty((n, num_bins), dtype=np.float32)
    for i in range(n):
        out[i] = fb.get_frame(i)
    return out


def utt_features(utt: str, path: str, *, sr: int = 16000, resample_ok: bool = True) -> np.ndarray:
    wave = load_audio(path, target_sr=sr, resample_ok=resample_ok, utt=utt)
    feats = fbank(wave, sr)
    if feats.shape[0] == 0:
        raise FeatureError(f"utterance {utt!r}, file {path!r}: audio shorter than one frame, no features")
    if not np.isfinite(feats).all():
        raise FeatureError(f"utterance {utt!r}, file {path!r}: features contain NaN/inf "
                           f"(corrupt audio?). Fix: check or drop the utterance")
    return feats


def _shard_paths(out_dir: str, job: int) -> tuple[str, str, str, str]:
    d = os.path.join(os.path.abspath(out_dir), "data")
    return (os.path.join(d, f"feats.{job}.ark"), os.path.join(d, f"feats.{job}.scp"),
            os.path.join(d, f"utt2num_frames.{job}"), os.path.join(d, f"skipped.{job}"))


def _rm(p: str) -> None:
    try:
        os.remove(p)
    except FileNotFoundError:
        pass


def extract_job(data_dir: str, out_dir: str, nj: int, job: int, *, resample_ok: bool = True,
                on_error: str = "skip", compute=utt_features) -> dict:
    """Extract features of utterances job-1, job-1+nj, ... of data_dir/wav.scp into shard ``job``."""
    import kaldiio

    wav = read_kv(os.path.join(data_dir, "wav.scp"))
    utts = list(wav)[job - 1::nj]
    ark, scp, u2nf, skipped = _shard_paths(out_dir, job)
    os.makedirs(os.path.dirname(ark), exist_ok=True)
    # invalidate what would become stale before touching the ark (see module docstring)
    _rm(os.path.join(out_dir, "feats.scp"))
    _rm(scp)
    frames: dict[str, int] = {}
    skips: dict[str, str] = {}
    with atomic_path(scp) as tmp_scp, atomic_path(ark) as tmp_ark:
        with kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as w:
            for u in utts:
                try:
                    f = compute(u, wav[u], resample_ok=resample_ok)
                except (AudioError, FeatureError) as e:
                    if on_error == "error":
                        raise
                    log.warning("skipping utterance %s: %s", u, e)
                    skips[u] = str(e).replace("\n", " ")
                    continue
                w(u, f)
                frames[u] = f.shape[0]
        # the scp names the ark by its final name; the ark (inner context) is renamed before the scp
        with open(tmp_scp, encoding="utf-8") as fi:
            lines = [ln.replace(tmp_ark, ark, 1) for ln in fi]
        with open(tmp_scp, "w", encoding="utf-8") as fo:
            fo.writelines(lines)
    write_kv(u2nf, frames)
    write_kv(skipped, skips)
    log.info("%s job %d/%d: %d utterances, %d skipped", data_dir, job, nj, len(frames), len(skips))
    return {"utts": len(frames), "skipped": len(skips)}


def merge(data_dir: str, out_dir: str, nj: int, *, max_skip_ratio: float = 0.05, strict: bool = False) -> dict:
    """Join the nj shards into feats.scp/utt2num_frames and copy the per-utt files (filtered).

    Utterances whose audio failed are dropped (listed in <out_dir>/skipped, counted in the scores) up to
    ``max_skip_ratio``; ``strict`` (test sets): any failure stops, so that a test set never shrinks silently."""
    feats: dict[str, str] = {}
    frames: dict[str, str] = {}
    skips: dict[str, str] = {}
    for j in range(1, nj + 1):
        ark, scp, u2nf, skipped = _shard_paths(out_dir, j)
        if not os.path.isfile(scp):
            raise FeatureError(f"{out_dir}: feature job {j}/{nj} did not finish ({scp} missing); "
                               f"re-run stage 2 (see its log)")
        feats.update(read_kv(scp))
        frames.update(read_kv(u2nf))
        skips.update(read_kv(skipped))
    # shards of an earlier run with a larger nj are no longer referenced
    for p in glob.glob(os.path.join(out_dir, "data", "*.*")):
        idx = p.rsplit(".", 2)[-2] if p.endswith(".ark") or p.endswith(".scp") else p.rsplit(".", 1)[-1]
        if idx.isdigit() and int(idx) > nj:
            _rm(p)
    n_in = len(read_kv(os.path.join(data_dir, "wav.scp")))
    if not feats:
        raise FeatureError(f"{out_dir}: no utterance produced features ({len(skips)} skipped; see skipped)")
    if strict and skips:
        listed = "; ".join(f"{u}: {why}" for u, why in list(skips.items())[:5])
        raise FeatureError(f"{out_dir}: {len(skips)}/{n_in} utterances of this test set failed feature extraction "
                           f"({listed}{' ...' if len(skips) > 5 else ''}). A test set does not shrink silently: fix or "
                           "remove those files, or accept the smaller set with --allow_test_skips")
    if len(skips) > max_skip_ratio * n_in:
        raise FeatureError(f"{out_dir}: {len(skips)}/{n_in} utterances failed feature extraction (more than "
                           f"{max_skip_ratio:.0%}); first: {next(iter(skips.items()))}")
    keep = set(feats)
    for name in COPY_TO_DUMP:
        src = os.path.join(data_dir, name)
        dst = os.path.join(out_dir, name)
        if not os.path.isfile(src):
            _rm(dst)
            continue
        if name == "intents":
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        elif name == "spk2utt":
            continue
        else:
            write_kv(dst, {k: v for k, v in read_kv(src).items() if k in keep})
    write_kv(os.path.join(out_dir, "spk2utt"), spk2utt_from_utt2spk(read_kv(os.path.join(out_dir, "utt2spk"))))
    write_kv(os.path.join(out_dir, "utt2num_frames"), frames)
    write_kv(os.path.join(out_dir, "skipped"), skips)
    write_kv(os.path.join(out_dir, "feats.scp"), feats)  # last: its presence means the dump dir is complete
    summary = validate_data_dir(out_dir, "dump", check_files=True)
    summary["skipped"] = len(skips)
    summary["frames"] = int(sum(int(v) for v in frames.values()))
    return summary


def compute_cmvn(feats_scp: str, out_path: str, *, allow_pipes: bool = False) -> dict:
    """Global mean/variance stats (ESPnet GlobalMVN format: count, sum, sum_square) over feats_scp."""
    count = 0
    s = None
    ss = None
    for utt, spec in read_scp(feats_scp, allow_pipes=allow_pipes).items():
        f = np.asarray(load_feats(spec), dtype=np.float64)
        if not np.isfinite(f).all():
            raise FeatureError(f"{feats_scp}: utterance {utt!r} has NaN/inf features: the statistics would be NaN. "
                               "Fix: re-extract it (stage 2) or drop it from the set")
        if s is None:
            s, ss = np.zeros(f.shape[1]), np.zeros(f.shape[1])
        count += f.shape[0]
        s += f.sum(0)
        ss += (f * f).sum(0)
    if not count:
        raise FeatureError(f"{feats_scp}: no frames to compute CMVN stats from")
    with atomic_path(out_path) as tmp, open(tmp, "wb") as fo:
        np.savez(fo, count=np.array(count), sum=s, sum_square=ss)
    return {"count": count, "mean_range": [float((s / count).min()), float((s / count).max())]}


__all__ = ["fbank", "utt_features", "extract_job", "merge", "compute_cmvn", "FeatureError", "PER_UTT_FILES"]
