#!/usr/bin/env python3
"""Stages 0-1 of egs/librispeech (local/data.sh): which recipe set comes from which local corpus, and the
Kaldi-style data/<set>/ dirs.

  train dev test        LibriSpeech --train_subset / --dev_subset / --test_subset (ASR)
  st_fewshot st_test    CoVoST 2 En->Fr train / test (zero-shot ST)
  slu_fewshot slu_test  SLURP train / test (zero-shot SLU)

The few-shot sets keep the first --fewshot_utts utterances; the task test sets are whole unless --max_utts caps
every set. --check_only (stage 0) only checks that the corpora the sets need exist, naming the db.sh variable.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from w2p.data import corpora
from w2p.errors import cli_main

log = logging.getLogger("librispeech.data_prep")
ASR_SETS = ("train", "dev", "test")
TASK_SETS = ("st_fewshot", "st_test", "slu_fewshot", "slu_test")


def _unknown(name: str) -> SystemExit:
    return SystemExit(f"local/data_prep.py: set {name!r} has no source in the librispeech recipe (it provides "
                      f"{' '.join(ASR_SETS + TASK_SETS)}); set --train_set/--valid_set/--test_sets and "
                      "--tasks 'st slu' "
                      f"in run.sh")


def prepare_set(a, name: str):
    """(utts, intents or None) of one recipe set."""
    fs = a.fewshot_utts
    if name in ASR_SETS:
        subset = {"train": a.train_subset, "dev": a.dev_subset, "test": a.test_subset}[name]
        return corpora.prepare_librispeech(a.librispeech, subset, strict=a.strict, max_utts=a.max_utts), None
    if name not in TASK_SETS:
        raise _unknown(name)
    split = "train" if name.endswith("_fewshot") else "test"
    n = min(fs, a.max_utts) if a.max_utts else (fs if split == "train" else 0)
    if name.startswith("st_"):
        return corpora.prepare_covost2(a.covost2, split, clips_dir=a.covost2_clips or None, strict=a.strict,
                                       max_utts=n), None
    return corpora.prepare_slurp(a.slurp, split, audio_dir=a.slurp_audio or None, strict=a.strict, max_utts=n)


def check_sources(a) -> None:
    """Stage 0: the corpora named in db.sh that the sets need exist (one error lists every missing one)."""
    need = {"train": ("LIBRISPEECH", os.path.join(a.librispeech or "", a.train_subset)),
            "dev": ("LIBRISPEECH", os.path.join(a.librispeech or "", a.dev_subset)),
            "test": ("LIBRISPEECH", os.path.join(a.librispeech or "", a.test_subset)),
            "st": ("COVOST2", a.covost2), "slu": ("SLURP", a.slurp)}
    bad = []
    for s in a.sets:
        if s not in ASR_SETS + TASK_SETS:
            raise _unknown(s)
        var, p = need.get(s) or need[s.split("_")[0]]
        if not p or not os.path.isdir(p):
            bad.append(f"{s}: {var} -> {p!r} does not exist")
    if bad:
        raise SystemExit("local/data_prep.py: local corpora missing (edit db.sh):\n  " + "\n  ".join(sorted(set(bad))))
    log.info("local corpora found for sets %s", " ".join(a.sets))


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data", help="output root (data/<set>)")
    ap.add_argument("--sets", nargs="+", required=True)
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
    ap.add_argument("--check_only", action="store_true", help="only check that the source corpora exist (stage 0)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    check_sources(a)
    if not a.check_only:
        corpora.write_sets(a.out, a.sets, lambda s: prepare_set(a, s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
