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

from w2p.data.audio import AudioError, audio_samples, load_audio, load_segment
from w2p.data.datadir import COPY_TO_DUMP, PER_UTT_FILES, spk2utt_from_utt2spk, validate_data_dir
from w2p.io import atomic_path, check_scp_spec, evenly_spaced, load_feats, read_kv, read_scp, write_atomic, write_kv

log = logging.getLogger("w2p.features")

NUM_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
SAMPLE_RATE = 16000
RAW = "raw"  # the content of a dump dir's ``feats_type`` file when it holds audio references, not features


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


def num_frames(n_samples: int, sr: int = SAMPLE_RATE) -> int:
    """Frames :func:`fbank` gives for ``n_samples`` (Kaldi snip_edges: whole 25 ms windows every 10 ms)."""
    win, hop = int(sr * FRAME_LENGTH_MS / 1000), int(sr * FRAME_SHIFT_MS / 1000)
    return 0 if n_samples < win else 1 + (n_samples - win) // hop


def utt_features(utt: str, path: str, *, sr: int = 16000, resample_ok: bool = True,
                 segment: tuple[float, float] | None = None) -> np.ndarray:
    """fbank of one utterance: the whole file, or the ``segment`` (start, end) seconds of it."""
    if segment is None:
        wave = load_audio(path, target_sr=sr, resample_ok=resample_ok, utt=utt)
    else:
        wave = load_segment(path, *segment, target_sr=sr, resample_ok=resample_ok, utt=utt)
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


def _invalidate(out_dir: str) -> None:
    """Remove the files that mark a dump dir complete (either kind), before a job rewrites its shards."""
    for name in ("feats.scp", "wav.scp", "feats_type"):
        _rm(os.path.join(out_dir, name))


def read_segments(path: str) -> dict[str, tuple[str, float, float]]:
    """Kaldi ``segments``: utt -> (recording, start s, end s); an end <= 0 means the end of the recording."""
    out = {}
    for u, v in read_kv(path).items():
        parts = v.split()
        try:
            out[u] = (parts[0], float(parts[1]), float(parts[2]))
        except (IndexError, ValueError):
            raise FeatureError(f"{path}: utterance {u!r}: expected '<utt> <recording> <start> <end>', got "
                               f"{v!r}") from None
    return out


def _raw_paths(out_dir: str, job: int) -> tuple[str, str, str]:
    d = os.path.join(os.path.abspath(out_dir), "data")
    return (os.path.join(d, f"wav.{job}.scp"), os.path.join(d, f"utt2num_frames.{job}"),
            os.path.join(d, f"skipped.{job}"))


def raw_job(data_dir: str, out_dir: str, nj: int, job: int, *, resample_ok: bool = True,
            on_error: str = "skip") -> dict:
    """Raw-audio dump (``feats_type raw``), job ``job`` of ``nj``: the frame count of every utterance from its audio
    header (exact sample count, resampled length, :func:`num_frames`); no audio is decoded, no feature written.
    Missing, unreadable, truncated or too short files are skipped as in :func:`extract_job`."""
    wav = read_kv(os.path.join(data_dir, "wav.scp"))
    seg_p = os.path.join(data_dir, "segments")
    segs = read_segments(seg_p) if os.path.isfile(seg_p) else None
    utts = list(segs if segs is not None else wav)[job - 1::nj]
    scp, u2nf, skipped = _raw_paths(out_dir, job)
    os.makedirs(os.path.dirname(scp), exist_ok=True)
    _invalidate(out_dir)
    _rm(scp)
    paths, frames, skips = {}, {}, {}
    for u in utts:
        try:
            if segs is not None:
                reco, t0, t1 = segs[u]
                if reco not in wav:
                    raise AudioError(f"utterance {u!r}: its recording {reco!r} (segments) is not in wav.scp")
                path, n = wav[reco], audio_samples(wav[reco], segment=(t0, t1), utt=u)
            else:
                path, n = wav[u], audio_samples(wav[u], utt=u)
            if not resample_ok:
                import soundfile as sf

                if sf.info(path).samplerate != SAMPLE_RATE:
                    raise AudioError(f"utterance {u!r}, file {path!r}: sample rate != {SAMPLE_RATE} Hz and "
                                     "resampling is off. Fix: --resample true, or convert the file")
        except AudioError as e:
            if on_error == "error":
                raise
            log.warning("skipping utterance %s: %s", u, e)
            skips[u] = str(e).replace("\n", " ")
            continue
        paths[u], frames[u] = path, num_frames(n)
    write_kv(u2nf, frames)
    write_kv(skipped, skips)
    write_kv(scp, paths)  # last: its presence means the job finished
    log.info("%s raw job %d/%d: %d utterances, %d skipped", data_dir, job, nj, len(frames), len(skips))
    return {"utts": len(frames), "skipped": len(skips)}


def extract_job(data_dir: str, out_dir: str, nj: int, job: int, *, resample_ok: bool = True,
                on_error: str = "skip", compute=utt_features) -> dict:
    """Extract features of utterances job-1, job-1+nj, ... of data_dir/wav.scp into shard ``job``."""
    import kaldiio

    wav = read_kv(os.path.join(data_dir, "wav.scp"))
    seg_p = os.path.join(data_dir, "segments")
    segs = read_segments(seg_p) if os.path.isfile(seg_p) else None
    utts = list(segs if segs is not None else wav)[job - 1::nj]
    ark, scp, u2nf, skipped = _shard_paths(out_dir, job)
    os.makedirs(os.path.dirname(ark), exist_ok=True)
    # invalidate what would become stale before touching the ark (see module docstring)
    _invalidate(out_dir)
    _rm(scp)
    frames: dict[str, int] = {}
    skips: dict[str, str] = {}
    with atomic_path(scp) as tmp_scp, atomic_path(ark) as tmp_ark:
        with kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as w:
            for u in utts:
                try:
                    if segs is None:
                        f = compute(u, wav[u], resample_ok=resample_ok)
                    else:  # a time span of a recording (Kaldi segments: wav.scp lists the recordings)
                        reco, t0, t1 = segs[u]
                        if reco not in wav:
                            raise AudioError(f"utterance {u!r}: its recording {reco!r} (segments) is not in wav.scp")
                        f = compute(u, wav[reco], resample_ok=resample_ok, segment=(t0, t1))
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


def merge(data_dir: str, out_dir: str, nj: int, *, max_skip_ratio: float = 0.05, strict: bool = False,
          feats_type: str = "fbank") -> dict:
    """Join the nj shards into feats.scp/utt2num_frames and copy the per-utt files (filtered).

    ``feats_type="raw"``: the shards of :func:`raw_job`; the dump dir gets wav.scp (+ segments), a ``feats_type``
    file saying ``raw`` and no features (the loaders compute them from the audio).

    Utterances whose audio failed are dropped (listed in <out_dir>/skipped, counted in the scores) up to
    ``max_skip_ratio``; ``strict`` (test sets): any failure stops, so that a test set never shrinks silently."""
    feats: dict[str, str] = {}
    frames: dict[str, str] = {}
    skips: dict[str, str] = {}
    raw = feats_type == RAW
    for j in range(1, nj + 1):
        ark, scp, u2nf, skipped = _shard_paths(out_dir, j)
        if raw:
            scp, u2nf, skipped = _raw_paths(out_dir, j)
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
    seg_p = os.path.join(data_dir, "segments")
    n_in = len(read_kv(seg_p if os.path.isfile(seg_p) else os.path.join(data_dir, "wav.scp")))
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
    if raw:
        _rm(os.path.join(out_dir, "feats.scp"))
        write_atomic(os.path.join(out_dir, "feats_type"), RAW + "\n")
        if os.path.isfile(seg_p):
            segs = {u: v for u, v in read_kv(seg_p).items() if u in keep}
            write_kv(os.path.join(out_dir, "segments"), segs)
            recos = {v.split()[0] for v in segs.values()}
            feats = {r: p for r, p in read_kv(os.path.join(data_dir, "wav.scp")).items() if r in recos}
        else:
            _rm(os.path.join(out_dir, "segments"))
        write_kv(os.path.join(out_dir, "wav.scp"), feats)  # last: its presence means the dump dir is complete
    else:
        for name in ("feats_type", "wav.scp", "segments"):  # of an earlier raw dump in the same dir
            _rm(os.path.join(out_dir, name))
        write_kv(os.path.join(out_dir, "feats.scp"), feats)  # last: its presence means the dump dir is complete
    summary = validate_data_dir(out_dir, "dump", check_files=True)
    summary["skipped"] = len(skips)
    summary["frames"] = int(sum(int(v) for v in frames.values()))
    return summary


def compute_cmvn(feats_scp: str, out_path: str, *, allow_pipes: bool = False) -> dict:
    """Global mean/variance stats (ESPnet GlobalMVN format: count, sum, sum_square) over feats_scp."""
    mats = ((u, load_feats(spec)) for u, spec in read_scp(feats_scp, allow_pipes=allow_pipes).items())
    return _write_cmvn(mats, feats_scp, out_path)


def compute_cmvn_raw(dump_dir: str, out_path: str, *, max_utts: int = 5000) -> dict:
    """CMVN stats of a raw dump dir from a SAMPLE: at most ``max_utts`` utterances evenly spaced over the sorted
    ids (all of them for smaller sets, then equal to :func:`compute_cmvn` on the fbank dump of the same set).
    Global mean/variance settle long before 5000 utterances (~17 h of LibriSpeech); a full pass over 960 h would
    decode all the audio once more."""
    index = RawIndex(dump_dir)
    utts = index.utts
    utts = evenly_spaced(utts, max_utts)
    mats = ((u, index.features(u)) for u in utts)
    out = _write_cmvn(mats, dump_dir, out_path)
    out["utts"] = len(utts)
    return out


def _write_cmvn(mats, where: str, out_path: str) -> dict:
    count = 0
    s = None
    ss = None
    for utt, m in mats:
        f = np.asarray(m, dtype=np.float64)
        if not np.isfinite(f).all():
            raise FeatureError(f"{where}: utterance {utt!r} has NaN/inf features: the statistics would be NaN. "
                               "Fix: re-extract it (stage 2) or drop it from the set")
        if s is None:
            s, ss = np.zeros(f.shape[1]), np.zeros(f.shape[1])
        count += f.shape[0]
        s += f.sum(0)
        ss += (f * f).sum(0)
    if not count:
        raise FeatureError(f"{where}: no frames to compute CMVN stats from")
    with atomic_path(out_path) as tmp, open(tmp, "wb") as fo:
        np.savez(fo, count=np.array(count), sum=s, sum_square=ss)
    return {"count": count, "mean_range": [float((s / count).min()), float((s / count).max())]}


# -- reading features for the loaders ----------------------------------------------------------------------------
def dump_type(dump_dir: str) -> str:
    """``raw`` for a raw-audio dump dir (its ``feats_type`` file says so), else ``fbank`` (feats.scp)."""
    p = os.path.join(dump_dir, "feats_type")
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            kind = f.read().strip()
        if kind not in (RAW, "fbank"):
            raise FeatureError(f"{p}: unknown feats_type {kind!r} (raw | fbank); rerun stage 2")
        return kind
    return "fbank"


class ArkReader:
    """Feature matrices by scp spec (``file.ark:offset``). Open ark files are kept per process (a DataLoader
    worker, after the fork, opens each ark once instead of once per utterance); at most ``max_open``."""

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self._pid, self._fds = None, {}

    def _check_process(self) -> None:
        if self._pid != os.getpid():  # a forked worker must not share its parent's file positions
            self._pid, self._fds = os.getpid(), {}
        if len(self._fds) >= self.max_open:
            self.close()

    def __call__(self, spec: str) -> np.ndarray:
        import kaldiio

        self._check_process()
        return kaldiio.load_mat(spec, fd_dict=self._fds)

    # The fast path of the training loader: an uncompressed float32 matrix ("FM") is read straight into its rows of
    # the batch buffer (no intermediate array). Its oracle is __call__ (kaldiio); anything else returns None.
    _HEAD = 15  # "\0B" "FM " then rows and cols as Kaldi binary ints (a size byte 4 + int32 little-endian)

    def _fd(self, ark: str):
        self._check_process()
        fd = self._fds.get(ark)
        if fd is None:
            fd = self._fds[ark] = open(ark, "rb")
        return fd

    def float_header(self, ark: str, offset: int) -> tuple[int, int] | None:
        """(rows, cols) of the uncompressed float32 matrix at ``offset`` of ``ark``, else None."""
        fd = self._fd(ark)
        fd.seek(offset)
        h = fd.read(self._HEAD)
        if len(h) < self._HEAD or h[:5] != b"\0BFM " or h[5] != 4 or h[10] != 4:
            return None
        return int.from_bytes(h[6:10], "little", signed=True), int.from_bytes(h[11:15], "little", signed=True)

    def read_into(self, ark: str, offset: int, out: np.ndarray) -> bool:
        """Fill ``out`` (C-contiguous float32, rows x cols of the matrix at ``offset``); False if the ark ends first."""
        fd = self._fd(ark)
        fd.seek(offset + self._HEAD)
        view = memoryview(out).cast("B")
        return fd.readinto(view) == len(view)

    def close(self) -> None:
        for fd in self._fds.values():
            fd.close()
        self._fds = {}

    def __getstate__(self):  # a pickled reader (spawned worker) opens its own files
        return {"max_open": self.max_open, "_pid": None, "_fds": {}}


class RawIndex:
    """The audio of a raw dump dir (wav.scp, + segments): utterance -> fbank computed on the fly by
    :func:`utt_features`, the code stage 2 dumps with, so a raw dump and an fbank dump give the same features."""

    def __init__(self, dump_dir: str, *, resample_ok: bool = True):
        wav_p = os.path.join(dump_dir, "wav.scp")
        if not os.path.isfile(wav_p):
            raise FileNotFoundError(f"{wav_p} not found (run stage 2 with --feats_type raw)")
        self.wav = read_kv(wav_p)
        for k, v in self.wav.items():
            check_scp_spec(wav_p, k, v)  # a "cmd |" entry would be run by nothing here, but say so clearly
        seg_p = os.path.join(dump_dir, "segments")
        self.segments = read_segments(seg_p) if os.path.isfile(seg_p) else None
        self.utts = sorted(self.segments if self.segments is not None else self.wav)
        self.resample_ok = resample_ok

    def spec(self, utt: str) -> tuple[str, tuple[float, float] | None]:
        """(audio file, (start, end) seconds or None)."""
        if self.segments is None:
            return self.wav[utt], None
        reco, t0, t1 = self.segments[utt]
        return self.wav[reco], (t0, t1)

    def features(self, utt: str) -> np.ndarray:
        path, seg = self.spec(utt)
        return raw_features(utt, path, seg, resample_ok=self.resample_ok)


def raw_features(utt: str, path: str, segment: tuple[float, float] | None = None, *,
                 resample_ok: bool = True) -> np.ndarray:
    """fbank of one utterance of a raw dump; bad audio is an error naming the utterance and the file."""
    try:
        return utt_features(utt, path, resample_ok=resample_ok, segment=segment)
    except AudioError as e:
        raise FeatureError(f"{e} (raw-audio dump: stage 2 checked only the file header; drop the utterance from "
                           "the dump dir or re-create the file)") from e


__all__ = ["num_frames", "raw_job", "compute_cmvn_raw", "dump_type", "ArkReader", "RawIndex", "raw_features",
           "fbank", "utt_features", "extract_job", "merge", "compute_cmvn", "FeatureError", "PER_UTT_FILES"]
