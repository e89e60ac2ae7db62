"""Kaldi-style data directories: layout, writing a data dir, and validation (key/value I/O: ``w2p.io``).

A data dir (``data/<set>``) holds per-utterance files (wav.scp, text, utt2spk, ref, question, slots)
plus spk2utt and, for SLU, ``intents`` (the label set, one per line). A dump dir
(``dump/fbank/<set>``) holds feats.scp + utt2num_frames and copies of the per-utterance files.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict

from w2p.io import is_pipe, read_kv, read_kv_lines, write_atomic, write_kv

# Files with one ``utt value`` line per utterance that must all cover the same utterances.
PER_UTT_FILES = ("wav.scp", "text", "utt2spk", "ref", "question", "slots", "utt2dur", "feats.scp",
                 "utt2num_frames", "llm_tokens", "bpe_tokens")
REQUIRED = {"data": ("wav.scp", "text", "utt2spk", "spk2utt"),
            "dump": ("feats.scp", "utt2num_frames", "text", "utt2spk", "spk2utt"),
            # a raw-audio dump (stage 2 --feats_type raw): its ``feats_type`` file says ``raw``; no features
            "raw_dump": ("wav.scp", "utt2num_frames", "text", "utt2spk", "spk2utt")}
# Per-utt files copied from data/<set> into dump/fbank/<set> (+ the label set ``intents``).
COPY_TO_DUMP = ("text", "utt2spk", "spk2utt", "ref", "question", "slots", "intents", "utt2dur")


class DataDirError(ValueError):
    """Invalid data directory; the message lists every problem found and how to fix it."""


def spk2utt_from_utt2spk(utt2spk: dict) -> dict:
    out: dict[str, list[str]] = {}
    for u in sorted(utt2spk):
        out.setdefault(utt2spk[u], []).append(u)
    return {s: " ".join(us) for s, us in out.items()}


def write_data_dir(path: str, utts: dict[str, dict], intents: list[str] | None = None) -> None:
    """utts: {utt_id: {"wav": path, "text": ..., "spk": ..., optional "ref", "question", "slots"}}."""
    os.makedirs(path, exist_ok=True)
    files = {"wav.scp": "wav", "text": "text", "utt2spk": "spk", "ref": "ref", "question": "question",
             "slots": "slots", "utt2dur": "dur"}
    for fname, key in files.items():
        m = {u: d[key] for u, d in utts.items() if d.get(key) is not None}
        if m:
            if key == "dur":
                m = {u: f"{float(v):.3f}" for u, v in m.items()}
            write_kv(os.path.join(path, fname), m)
        elif os.path.exists(os.path.join(path, fname)):
            os.remove(os.path.join(path, fname))  # stale file from an earlier run
    write_kv(os.path.join(path, "spk2utt"), spk2utt_from_utt2spk({u: d["spk"] for u, d in utts.items()}))
    if intents:
        write_atomic(os.path.join(path, "intents"), "".join(f"{i}\n" for i in intents))


def validate_data_dir(path: str, kind: str = "data", *, check_files: bool = False, hint: str = "") -> dict:
    """Check a data/dump dir; raise DataDirError listing the problems, else return a summary.

    Checks: required files exist and are non-empty; every per-utt file has unique, sorted keys and
    non-empty values (an empty transcript is an error naming the utterance); all per-utt files cover
    the same utterances; spk2utt is the inverse of utt2spk; slots are JSON objects and refs of SLU
    sets are in ``intents``; utt2num_frames are positive integers; with check_files, audio files /
    ark files referenced by wav.scp / feats.scp exist.
    """
    problems: list[str] = []
    fix = f" ({hint})" if hint else ""
    if not os.path.isdir(path):
        raise DataDirError(f"{path}: data directory does not exist{fix}")
    ft = os.path.join(path, "feats_type")
    if kind == "dump" and os.path.isfile(ft):
        with open(ft, encoding="utf-8") as f:
            kind = "raw_dump" if f.read().strip() == "raw" else kind
    # with a Kaldi ``segments`` file, wav.scp lists recordings and segments (utt rec start end) the utterances
    segmented = os.path.isfile(os.path.join(path, "segments"))
    per_utt = tuple(n for n in PER_UTT_FILES if n != "wav.scp") + ("segments",) if segmented else PER_UTT_FILES
    for fname in REQUIRED[kind]:
        p = os.path.join(path, fname)
        if not os.path.isfile(p) or os.path.getsize(p) == 0:
            problems.append(f"missing or empty required file {fname}")
    if problems:
        raise DataDirError(f"{path}: " + "; ".join(problems) + fix)
    maps: dict[str, OrderedDict] = {}
    for fname in per_utt:
        p = os.path.join(path, fname)
        if not os.path.isfile(p):
            continue
        lines = read_kv_lines(p)
        keys = [k for k, _ in lines]
        seen = set()
        for i, (k, v) in enumerate(lines, 1):
            if not k:
                problems.append(f"{fname}:{i}: blank line")
                continue
            if k in seen:
                problems.append(f"{fname}: duplicate utterance id {k!r}")
            seen.add(k)
            if not v:
                what = "empty transcript" if fname == "text" else "empty value"
                problems.append(f"{fname}: {what} for utterance {k!r} (drop the utterance or fix its {fname})")
        if keys != sorted(keys):
            bad = next(i for i in range(1, len(keys)) if keys[i] < keys[i - 1])
            problems.append(f"{fname}: not sorted (line {bad + 1}: {keys[bad]!r} after {keys[bad - 1]!r}); "
                            "sort it with LC_ALL=C sort")
        maps[fname] = OrderedDict(lines)
    # compare every per-utt file against the audio/feature index (the file the others describe)
    ref_name = next(n for n in ("wav.scp", "segments", "feats.scp", "utt2spk") if n in maps)
    ref_keys = set(maps[ref_name])
    for fname, m in maps.items():
        if fname == ref_name:
            continue
        ks = set(m)
        if ks != ref_keys:
            only_a = sorted(ks - ref_keys)[:3]
            only_b = sorted(ref_keys - ks)[:3]
            msg = f"ids in {fname} and {ref_name} do not match"
            if only_a:
                msg += f"; only in {fname}: {only_a}"
            if only_b:
                msg += f"; only in {ref_name}: {only_b}"
            problems.append(msg + f" ({len(ks ^ ref_keys)} differ)")
    # spk2utt must be exactly the inverse of utt2spk
    spk2utt = read_kv(os.path.join(path, "spk2utt"))
    want = spk2utt_from_utt2spk(maps["utt2spk"])
    if dict(spk2utt) != want:
        problems.append("spk2utt is not the inverse of utt2spk; regenerate it from utt2spk")
    if "slots" in maps:
        for u, v in maps["slots"].items():
            try:
                if not isinstance(json.loads(v), dict):
                    raise ValueError
            except ValueError:
                problems.append(f"slots: utterance {u!r} value is not a JSON object: {v[:60]!r}")
                break
    ip = os.path.join(path, "intents")
    if os.path.isfile(ip):
        with open(ip, encoding="utf-8") as f:
            intents = [x.strip() for x in f if x.strip()]
        if not intents or len(set(intents)) != len(intents):
            problems.append("intents: empty or duplicate labels")
        if "ref" in maps:
            unknown = sorted({v for v in maps["ref"].values() if v not in set(intents)})
            if unknown:
                problems.append(f"ref: intents not listed in the intents file: {unknown[:5]}")
    if "feats.scp" in maps:
        pipes = [u for u, v in maps["feats.scp"].items() if is_pipe(v)]
        if pipes:
            problems.append(f"feats.scp: {len(pipes)} entries are shell commands (Kaldi pipes), e.g. utterance "
                            f"{pipes[0]!r}; w2p reads features from ark files only: regenerate them (stage 2)")
    if "utt2num_frames" in maps:
        for u, v in maps["utt2num_frames"].items():
            if not v.isdigit() or int(v) <= 0:
                problems.append(f"utt2num_frames: bad frame count {v!r} for utterance {u!r}")
                break
    if check_files:
        wavs = maps.get("wav.scp") or (read_kv(os.path.join(path, "wav.scp")) if segmented else None)
        if wavs:
            missing = [(u, p) for u, p in wavs.items() if not p.endswith("|") and not os.path.isfile(p)]
            if missing:
                problems.append(f"wav.scp: {len(missing)} audio files missing, e.g. utterance {missing[0][0]!r}: "
                                f"{missing[0][1]}")
        if "feats.scp" in maps:
            arks = {v.rsplit(":", 1)[0] for v in maps["feats.scp"].values()}
            missing = sorted(a for a in arks if not os.path.isfile(a))
            if missing:
                problems.append(f"feats.scp: ark files missing: {missing[:3]}")
    if problems:
        shown = problems[:20]
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise DataDirError(f"{path}: invalid {kind} dir{fix}:\n  - " + "\n  - ".join(shown) + more)
    return {"utts": len(ref_keys), "speakers": len(spk2utt), "files": sorted(maps)}
