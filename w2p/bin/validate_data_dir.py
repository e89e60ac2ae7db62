"""Validate Kaldi-style data dirs (data/<set>) or feature dump dirs (dump/fbank/<set>).

Checks sorted unique ids, identical id sets across per-utterance files, non-empty values (empty
transcripts), spk2utt = inverse of utt2spk, JSON slots, intents, and optionally that audio/ark files exist.
Exit status 1 with a message listing every problem (and --hint, e.g. which stage to run).
"""
from __future__ import annotations

import argparse
import sys

from w2p.data.datadir import DataDirError, validate_data_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--kind", choices=["data", "dump"], default="data")
    ap.add_argument("--check_files", action="store_true", help="also check that wav/ark files exist")
    ap.add_argument("--hint", default="", help="appended to errors, e.g. 'run stage 1 first'")
    ap.add_argument("--require", nargs="*", default=[], help="extra files that must exist (e.g. ref llm_tokens)")
    a = ap.parse_args(argv)
    bad = 0
    for d in a.dirs:
        try:
            s = validate_data_dir(d, a.kind, check_files=a.check_files, hint=a.hint)
            missing = [f for f in a.require if f not in s["files"] and f != "intents"]
            if missing:
                raise DataDirError(f"{d}: missing required file(s) {missing}" + (f" ({a.hint})" if a.hint else ""))
            print(f"{d}: OK ({s['utts']} utterances, {s['speakers']} speakers)")
        except DataDirError as e:
            print(f"validate_data_dir: {e}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
