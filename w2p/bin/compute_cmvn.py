"""Global CMVN statistics (count, sum, sum_square; ESPnet GlobalMVN format) over a feats.scp."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from w2p.features import compute_cmvn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--feats", required=True, help="feats.scp of the training set")
    ap.add_argument("--out", required=True, help="output .npz (e.g. dump/fbank/train/cmvn.npz)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.info("cmvn %s: %s", a.out, json.dumps(compute_cmvn(a.feats, a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
