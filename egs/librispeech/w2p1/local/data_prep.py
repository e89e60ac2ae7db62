#!/usr/bin/env python3
"""Stages 0-1 of egs/librispeech (local/data.sh): which recipe set comes from which local corpus, and the
Kaldi-style data/<set>/ dirs.

  train dev test                LibriSpeech --train_subsets (one or more) / --dev_subset / --test_subset (ASR)
  st_{fewshot,test}             En->Fr ST: Europarl-ST en/fr train / test (--st_corpus europarl_st),
                                or CoVoST 2 covost_v2.en_fr.{train,test}.tsv (--st_corpus covost2)
  st_es_{fewshot,test}          En->Es ST, the same way (Europarl-ST en/es; CoVoST 2 en_es)
  st_de_{fewshot,test}          En->De ST (CoVoST 2 has En->De, not En->Fr/Es; Europarl-ST en/de too)
  slu_{fewshot,test}            SLURP train / test (intent)
  sqqa_{fewshot,test}           a local spoken-QA source (--sqqa <dir>/{fewshot,test}.jsonl; README)
  sqa_{fewshot,test}            the same for SQA (--sqa)

The few-shot sets keep the first --fewshot_utts utterances of the corpus' train split; the task test sets are whole
unless --max_utts caps every set. Europarl-ST segments are cut from the long recordings into <out>/audio/.
--check_only (stage 0) checks that the corpora the sets need exist, naming the db.sh variable to fix.
A bad utterance is skipped with a log line naming it and its file; a set that would lose more than
--max_skip_frac of its utterances stops with the whole list.
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
ST_LANG = {"st": "fr", "st_es": "es", "st_de": "de"}  # ST task -> target language
TASKS = tuple(ST_LANG) + ("slu", "sqqa", "sqa")


def _task_of(name: str) -> tuple[str, str]:
    """'st_es_test' -> ('st_es', 'test'); a name that is no set of this recipe is an error naming the fix."""
    for split in ("fewshot", "test"):
        if name.endswith("_" + split) and name[:-len(split) - 1] in TASKS:
            return name[:-len(split) - 1], split
    sets = " ".join(ASR_SETS + tuple(f"{t}_{s}" for t in TASKS for s in ("fewshot", "test")))
    raise SystemExit(f"local/data_prep.py: set {name!r} has no source in the librispeech recipe (it provides "
                     f"{sets}); fix --train_set/--valid_set/--test_sets/--tasks in run.sh")


def prepare_set(a, name: str):
    """(utts, intents or None) of one recipe set."""
    kw = {"strict": a.strict, "max_skip_frac": a.max_skip_frac}
    if name in ASR_SETS:
        subsets = a.train_subsets.split() if name == "train" else [{"dev": a.dev_subset, "test": a.test_subset}[name]]
        utts = {}
        for sub in subsets:
            utts.update(corpora.prepare_librispeech(a.librispeech, sub, max_utts=a.max_utts, **kw))
        return utts, None
    task, split = _task_of(name)
    n = min(a.fewshot_utts, a.max_utts) if a.max_utts else (a.fewshot_utts if split == "fewshot" else 0)
    if task in ST_LANG:
        lang = ST_LANG[task]
        if a.st_corpus == "europarl_st":
            return corpora.prepare_europarl_st(a.europarl_st, "train" if split == "fewshot" else "test", tgt=lang,
                                               audio_out=os.path.join(a.out, "audio", "europarl_st"), max_utts=n,
                                               **kw), None
        return corpora.prepare_covost2(a.covost2, "train" if split == "fewshot" else "test", tgt_lang=lang,
                                       clips_dir=a.covost2_clips or None, max_utts=n, **kw), None
    if task == "slu":
        return corpora.prepare_slurp(a.slurp, "train" if split == "fewshot" else "test",
                                     audio_dir=a.slurp_audio or None, max_utts=n, **kw)
    root, var = (a.sqqa, "SQQA") if task == "sqqa" else (a.sqa, "SQA")
    return corpora.prepare_spoken_qa(root, split, task, var=var, max_utts=n, **kw), None


def check_sources(a) -> None:
    """Stage 0: the corpora (and corpus parts) the sets need exist; one error lists every missing one with its
    db.sh variable."""
    need = []
    for s in a.sets:
        if s in ASR_SETS:
            for sub in (a.train_subsets.split() if s == "train" else [a.dev_subset if s == "dev" else a.test_subset]):
                need.append((s, "LIBRISPEECH", os.path.join(a.librispeech or "", sub)))
            continue
        task, split = _task_of(s)
        if task in ST_LANG and a.st_corpus == "europarl_st":
            part = "train" if split == "fewshot" else "test"
            need += [(s, "EUROPARL_ST", os.path.join(a.europarl_st or "", "en", "audios")),
                     (s, "EUROPARL_ST", os.path.join(a.europarl_st or "", "en", ST_LANG[task], part))]
        elif task in ST_LANG:
            need += [(s, "COVOST2", a.covost2),
                     (s, "COVOST2_CLIPS", a.covost2_clips or os.path.join(a.covost2 or "", "clips"))]
        elif task == "slu":
            need += [(s, "SLURP", os.path.join(a.slurp or "", "dataset", "slurp")),
                     (s, "SLURP_AUDIO", a.slurp_audio or os.path.join(a.slurp or "", "audio", "slurp_real"))]
        else:
            need.append((s, task.upper(), a.sqqa if task == "sqqa" else a.sqa))
    bad = sorted({f"{var} -> {p!r} does not exist (needed by set {s})" for s, var, p in need
                  if not p or not os.path.isdir(p)})
    if bad:
        raise SystemExit("local/data_prep.py: local corpora missing (edit db.sh, README 'Local corpora'):\n  "
                         + "\n  ".join(bad))
    if any(_task_of(s)[0] in ST_LANG for s in a.sets if s not in ASR_SETS) and a.st_corpus == "europarl_st":
        from w2p.data.audio import FFMPEG_FIX, ffmpeg_exe

        if ffmpeg_exe() is None:
            raise SystemExit(f"local/data_prep.py: Europarl-ST audio is m4a, decoded with ffmpeg: {FFMPEG_FIX}")
    log.info("local corpora found for sets %s", " ".join(a.sets))


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data", help="output root (data/<set>)")
    ap.add_argument("--sets", nargs="+", required=True)
    ap.add_argument("--librispeech", default="", help="LibriSpeech root (holds train-clean-100/ ...)")
    ap.add_argument("--train_subsets", default="train-clean-100", help="space-separated LibriSpeech subsets")
    ap.add_argument("--dev_subset", default="dev-clean")
    ap.add_argument("--test_subset", default="test-clean")
    ap.add_argument("--st_corpus", default="europarl_st", choices=["europarl_st", "covost2"])
    ap.add_argument("--europarl_st", default="", help="Europarl-ST v1.1 root (holds en/audios/, en/fr/ ...)")
    ap.add_argument("--covost2", default="", help="dir with covost_v2.en_<lang>.<split>.tsv")
    ap.add_argument("--covost2_clips", default="", help="Common Voice clips dir (default <covost2>/clips)")
    ap.add_argument("--slurp", default="", help="SLURP root (holds dataset/slurp/*.jsonl)")
    ap.add_argument("--slurp_audio", default="", help="SLURP audio dir (default <slurp>/audio/slurp_real)")
    ap.add_argument("--sqqa", default="", help="spoken-QA source dir (fewshot.jsonl, test.jsonl)")
    ap.add_argument("--sqa", default="", help="SQA source dir (fewshot.jsonl, test.jsonl)")
    ap.add_argument("--fewshot_utts", type=int, default=300)
    ap.add_argument("--max_utts", type=int, default=0, help="cap every set (0 = no cap)")
    ap.add_argument("--max_skip_frac", type=float, default=0.1,
                    help="stop when a set would skip more than this fraction of its utterances")
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
