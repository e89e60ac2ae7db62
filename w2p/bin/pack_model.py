"""Pack a trained model (recipe stage 10) into one directory for w2p.bin.infer / Wav2PromptPipeline.

  python -m w2p.bin.pack_model --exp_dir exp/w2p --cmvn dump/fbank/train/cmvn.npz --out_dir exp/packed/w2p
"""
from __future__ import annotations

import argparse
import json
import sys

from w2p.errors import cli_main, positive_float, positive_int


@cli_main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", required=True, help="trained system dir (config.yaml + model.pt)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--cmvn", default=None, help="cmvn.npz (default: the path in the model config)")
    p.add_argument("--llm", default=None, help="LLM reference to record (default: the config's llm)")
    p.add_argument("--beam", type=positive_int, default=5)
    p.add_argument("--repetition_penalty", type=positive_float, default=1.5)
    args = p.parse_args(argv)
    from w2p.infer import pack_model

    try:
        out = pack_model(args.exp_dir, args.out_dir, cmvn=args.cmvn, llm_source=args.llm,
                         decode={"beam": args.beam, "repetition_penalty": args.repetition_penalty})
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    with open(f"{out}/llm.json") as f:
        print(f"packed {args.exp_dir} -> {out} (LLM {json.load(f)['source']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
