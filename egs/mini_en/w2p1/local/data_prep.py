#!/usr/bin/env python3
"""Stage 1 of egs/mini_en (local/data.sh): Kaldi-style data/<set>/ dirs from the synthesised corpus's manifests.

  local/data_prep.py --src corpus --out data --sets train dev test st_fewshot st_test ...
                     [--optional_sets sqqa_test_heldout ...]

--optional_sets are prepared when the corpus has them (w2p.sh: each task on each further test set, <task>_<set>;
mini_en's --heldout corpus has sqqa_test_heldout), the others are skipped with one log line.
"""
from __future__ import annotations

import argparse
import logging
import sys

from w2p.data import corpora
from w2p.errors import cli_main


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="corpus", help="the corpus dir written by stage 0 (w2p.synth.make_corpus)")
    ap.add_argument("--out", default="data", help="output root (data/<set>)")
    ap.add_argument("--sets", nargs="+", required=True)
    ap.add_argument("--optional_sets", nargs="*", default=[], help="prepared only if the corpus has them")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sets = list(a.sets)
    if a.optional_sets:
        have = corpora.mini_en_sets(a.src)
        sets += [s for s in a.optional_sets if s in have and s not in sets]
        absent = [s for s in a.optional_sets if s not in have]
        if absent:
            logging.info("not in the corpus %s, not prepared: %s", a.src, " ".join(absent))
    corpora.write_sets(a.out, sets, lambda s: corpora.prepare_mini_en(a.src, s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
