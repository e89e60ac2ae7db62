"""Stage 1 (and the stage-0 check of local corpora): Kaldi-style data/<set> dirs for a corpus.

mini_en: reads the manifests written by synth_mini_en (stage 0).
librispeech: ASR sets from LibriSpeech, st_* from CoVoST 2 En->Fr, slu_* from SLURP (paths from db.sh).
Every written dir is validated (sorted, unique ids, matching files, spk2utt, audio files exist).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from w2p.data import corpora
from w2p.data.datadir import DataDirError, validate_data_dir, write_data_dir

log = logging.getLogger("prepare_data")


def _librispeech_set(a, name: str):
    """(utts, intents) for one set name of the librispeech recipe."""
    fs = a.fewshot_utts
    if name in ("train", "dev", "test"):
        subset = {"train": a.train_subset, "dev": a.dev_subset, "test": a.test_subset}[name]
        return corpora.prepare_librispeech(a.librispeech, subset, strict=a.strict, max_utts=a.max_utts), None
    if name.startswith("st_"):
        split = "train" if name == "st_fewshot" else "test"
        n = min(fs, a.max_utts) if a.max_utts else (fs if name == "st_fewshot" else 0)
        return corpora.prepare_covost2(a.covost2, split, clips_dir=a.covost2_clips or None, strict=a.strict,
                                       max_utts=n), None
    if name.startswith("slu_"):
        split = "train" if name == "slu_fewshot" else "test"
        n = min(fs, a.max_utts) if a.max_utts else (fs if name == "slu_fewshot" else 0)
        return corpora.prepare_slurp(a.slurp, split, audio_dir=a.slurp_audio or None, strict=a.strict, max_utts=n)
    raise SystemExit(f"prepare_data: set {name!r} has no source in the librispeech recipe "
                     f"(it provides train dev test st_* slu_*; set --tasks 'st slu')")


def check_sources(a) -> None:
    """Stage 0 for local corpora: the corpora named in db.sh exist (clear error otherwise)."""
    if a.corpus == "mini_en":
        return
    need = {"train": ("LIBRISPEECH", os.path.join(a.librispeech or "", a.train_subset)),
            "dev": ("LIBRISPEECH", os.path.join(a.librispeech or "", a.dev_subset)),
            "test": ("LIBRISPEECH", os.path.join(a.librispeech or "", a.test_subset)),
            "st": ("COVOST2", a.covost2), "slu": ("SLURP", a.slurp)}
    bad = []
    for s in a.sets:
        var, p = need.get(s, need.get(s.split("_")[0], (None, None)))
        if var and (not p or not os.path.isdir(p)):
            bad.append(f"{s}: {var} -> {p!r} does not exist")
    if bad:
        raise SystemExit("prepare_data: local corpora missing (edit db.sh):\n  " + "\n  ".join(sorted(set(bad))))
    log.info("local corpora found for sets %s", " ".join(a.sets))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=["mini_en", "librispeech"], required=True)
    ap.add_argument("--out", default="data", help="output root (data/<set>)")
    ap.add_argument("--sets", nargs="+", required=True)
    ap.add_argument("--src", default="corpus", help="mini_en: the synthesised corpus dir")
    ap.add_argument("--librispeech", default="", help="LibriSpeech root (holds train-clean-100/ ...)")
    ap.add_argument("--train_subset", default="train-clean-100")
    ap.add_argument("--dev_subset", default="dev-clean")
    ap.add_argument("--test_subset", default="test-clean")
    ap.add_argument("--covost2", default="", help="dir with covost_v2.en_fr.<split>.tsv")
    ap.add_argument("--covost2_clips", default="", help="Common Voice clips dir (default <covost2>/clips)")
    ap.add_argument("--slurp", default="", help="SLURP root (holds dataset/slurp/*.jsonl)")
    ap.add_argument("--slurp_audio", default="", help="SLURP audio dir (default <slurp>/audio/slurp_real)")
    ap.add_argument("--fewshot_utts", type=int, default=300)
    ap.add_argument("--max_utts", type=int, default=0, help="cap every set (0 = no cap)")
    ap.add_argument("--strict", action="store_true", help="bad utterances are errors instead of logged skips")
    ap.add_argument("--check_only", action="store_true", help="only check that the source corpora exist")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        check_sources(a)
        if a.check_only:
            return 0
        summary = {}
        for s in a.sets:
            if a.corpus == "mini_en":
                utts = corpora.prepare_mini_en(a.src, s)
                intents = corpora.mini_en_intents() if s.startswith("slu_") else None
            else:
                utts, intents = _librispeech_set(a, s)
            d = os.path.join(a.out, s)
            write_data_dir(d, utts, intents)
            summary[s] = validate_data_dir(d, "data", check_files=True)["utts"]
        log.info("prepared: %s", json.dumps(summary))
    except (corpora.CorpusError, DataDirError) as e:
        print(f"prepare_data: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
