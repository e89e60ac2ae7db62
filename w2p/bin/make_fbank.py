"""Stage 2: 80-dim fbank for data/<set> dirs into dump/fbank/<set> (job J of N, or --merge).

Jobs (e.g. through run.pl ``JOB=1:N``) each write one ark/scp shard per set; ``--merge`` joins the
shards, copies the per-utterance files and validates each dump dir.

``--feats_type raw`` (like ESPnet's): no features are written. The dump dir gets wav.scp (+ segments),
utt2num_frames from each file's header (the fbank frame formula on the exact sample count), the per-utterance
files and a ``feats_type`` file; training and decoding compute the same fbank on the fly (DataLoader workers).
The CMVN stats then come from a sample of ``--cmvn_utts`` utterances of the set (all of a smaller set).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from w2p import features
from w2p.errors import cli_main, nonnegative_float, nonnegative_int, positive_int


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", required=True, help="root holding data/<set>")
    ap.add_argument("--dump_dir", required=True, help="root for dump/fbank/<set>")
    ap.add_argument("--sets", nargs="+", required=True)
    ap.add_argument("--nj", type=positive_int, default=1)
    ap.add_argument("--job", type=nonnegative_int, default=0, help="1..nj; 0 = run every job here, then merge")
    ap.add_argument("--merge", action="store_true", help="merge the nj shards of each set")
    ap.add_argument("--resample", default="true", choices=["true", "false"],
                    help="resample audio whose rate is not 16 kHz (false: such files are errors)")
    ap.add_argument("--on_error", default="skip", choices=["skip", "error"],
                    help="bad audio/features: log and skip the utterance, or stop")
    ap.add_argument("--cmvn_set", default="", help="after merging, write <dump_dir>/<set>/cmvn.npz for this set")
    ap.add_argument("--allow_scp_pipes", action="store_true",
                    help="let the CMVN pass read feats.scp entries that are shell commands (Kaldi 'cmd |' pipes): "
                    "those commands are RUN; only for a feats.scp you wrote yourself")
    ap.add_argument("--allow_test_skips", action="store_true",
                    help="let sets whose name contains 'test' drop utterances whose audio fails (by default any "
                    "failure in a test set stops stage 2; dropped utterances are counted in RESULTS.md)")
    ap.add_argument("--feats_type", default="fbank", choices=["fbank", "raw"],
                    help="fbank: dump features (ark/scp); raw: dump audio references only, fbank computed on the fly")
    ap.add_argument("--cmvn_utts", type=nonnegative_int, default=5000,
                    help="raw: CMVN stats from at most this many utterances, evenly spaced (0 = all)")
    ap.add_argument("--max_skip_ratio", type=nonnegative_float, default=0.05,
                    help="merge fails above this skipped fraction")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if a.nj < 1 or not 0 <= a.job <= a.nj:
        ap.error(f"need 1 <= nj and 0 <= job <= nj (got nj={a.nj}, job={a.job})")
    jobs = [a.job] if a.job else ([] if a.merge else range(1, a.nj + 1))
    for s in a.sets:
        src, dst = os.path.join(a.data_dir, s), os.path.join(a.dump_dir, s)
        job = features.raw_job if a.feats_type == "raw" else features.extract_job
        for j in jobs:
            job(src, dst, a.nj, j, resample_ok=a.resample == "true", on_error=a.on_error)
    if a.merge or a.job == 0:
        for s in a.sets:
            src, dst = os.path.join(a.data_dir, s), os.path.join(a.dump_dir, s)
            summary = features.merge(src, dst, a.nj, max_skip_ratio=a.max_skip_ratio,
                                     strict="test" in s and not a.allow_test_skips, feats_type=a.feats_type)
            logging.info("%s: %s", dst, json.dumps(summary))
        if a.cmvn_set:
            scp = os.path.join(a.dump_dir, a.cmvn_set, "feats.scp")
            out = os.path.join(a.dump_dir, a.cmvn_set, "cmvn.npz")
            if a.feats_type == "raw":
                stats = features.compute_cmvn_raw(os.path.join(a.dump_dir, a.cmvn_set), out, max_utts=a.cmvn_utts)
            else:
                stats = features.compute_cmvn(scp, out, allow_pipes=a.allow_scp_pipes)
            logging.info("cmvn %s: %s", out, json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
