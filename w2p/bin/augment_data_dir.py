"""Stage 2 (opt-in): augment a training data dir (speed perturbation, noise, reverberation) into a new data dir.

    python -m w2p.bin.augment_data_dir --src data/train --dst data/train_aug --config conf/augment.yaml
        [--seed 0] [--nj N --job J | --finalize]

One copy of the set per ``speed_perturb`` factor (ids and speakers ``sp0.9-<id>``, Kaldi's convention; 1.0 keeps
the original ids), noise and reverberation drawn per utterance (w2p.augment). Jobs J = 1..N each write their share
of the changed utterances' wavs under <dst>/wav/; ``--finalize`` writes the data dir (wav.scp, text, utt2spk,
spk2utt, utt2aug: what was done to each utterance) and validates it. --job 0 (default) does both here.
The config (YAML, keys and defaults: w2p.augment.DEFAULTS), e.g.::

    speed_perturb: [0.9, 1.0, 1.1]
    keep_clean: true                 # the 1.0 copy stays clean
    noise: {prob: 0.5, snr_db: [5, 25], kinds: [white, pink, brown, babble]}
    reverb: {prob: 0.3, rt60: [0.2, 0.8]}
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from w2p import augment
from w2p.config import load_config
from w2p.errors import cli_main, nonnegative_int, positive_int


@cli_main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="the data dir to augment (data/train)")
    ap.add_argument("--dst", required=True, help="the augmented data dir written (data/train_aug)")
    ap.add_argument("--config", required=True, help="augmentation YAML (see above)")
    ap.add_argument("--seed", type=nonnegative_int, default=0, help="every draw is a function of (seed, utterance id)")
    ap.add_argument("--nj", type=positive_int, default=1)
    ap.add_argument("--job", type=nonnegative_int, default=0, help="1..nj; 0 = all jobs here, then --finalize")
    ap.add_argument("--finalize", action="store_true", help="write and validate the data dir (after the jobs)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not 0 <= a.job <= a.nj:
        ap.error(f"need 0 <= job <= nj (got nj={a.nj}, job={a.job})")
    conf = load_config(a.config, defaults=augment.DEFAULTS)
    t0 = time.time()
    if not a.finalize:
        for j in [a.job] if a.job else range(1, a.nj + 1):
            n = augment.run_job(a.src, a.dst, conf, a.seed, a.nj, j)
            logging.info("%s job %d/%d: %d wavs written in %.1fs", a.dst, j, a.nj, n, time.time() - t0)
    if a.finalize or a.job == 0:
        summary = augment.finalize(a.src, a.dst, conf, a.seed)
        logging.info("%s: %s", a.dst, json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
