"""Diagnostics of a trained Wav2Prompt: what does the frozen LLM "hear"?

    python -m w2p.bin.readout --model_dir exp/wav2prompt --data_dir dump/fbank/test [--repeat]

For every utterance the prompt vectors (natural CIF firing, as at inference) are mapped to their nearest LLM
token by cosine similarity and printed next to the reference. Reported (scores.json in --output_dir):
  readout_ter      token error rate of that nearest-token readout vs the LLM tokens of the transcript
  mean_cos         mean cosine similarity of prompt vectors to their target embeddings (CIF forced to U outputs)
  len_err          mean |U_pred - U| of natural firing;  len_exact: fraction with U_pred == U
  repeat_wer       (--repeat) WER of the frozen LLM asked to repeat the speech prompt (the ASR task's template
                   by default), vs the transcript, scored as stage 9 scores ASR (w2p.score.wer); gold_repeat_wer
                   (--gold) is the same with the true text
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time

from w2p.errors import cli_main, nonnegative_int, positive_float, positive_int
from w2p.io import write_atomic, write_json
from w2p.tasks import get_task

log = logging.getLogger("w2p.readout")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="w2p.bin.readout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="exp dir with config.yaml and model.pt")
    p.add_argument("--data_dir", required=True, help="dump dir of the set (dump/fbank/test)")
    p.add_argument("--output_dir", default=None, help="default: <model_dir>/readout_<set>")
    p.add_argument("--checkpoint", default=None, help="weights to load (default model_dir/model.pt)")
    p.add_argument("--llm", default=None, help="LLM source (default: the one in config.yaml)")
    p.add_argument("--batch_frames", type=positive_int, default=40000)
    p.add_argument("--max_utts", type=nonnegative_int, default=0, help="only the first N utterances (0 = all)")
    p.add_argument("--repeat", action="store_true", help="also run 'repeat after me' generation and WER")
    p.add_argument("--gold", action="store_true", help="with --repeat: also the WER with the true text prompt")
    p.add_argument("--template", default=get_task("asr").template,
                   help="repeat template with a {speech} slot (default: the ASR task's)")
    p.add_argument("--num_beams", type=positive_int, default=5)
    p.add_argument("--repetition_penalty", type=positive_float, default=1.0,
                   help="1.0 for repeating: a sentence may legitimately repeat words")
    p.add_argument("--max_new_tokens", type=positive_int, default=48)
    p.add_argument("--allow_scp_pipes", action="store_true",
                   help="read feats.scp entries that are shell commands (Kaldi 'cmd |' pipes): those commands are RUN; "
                   "only for a feats.scp you wrote yourself")
    p.add_argument("--num_threads", type=nonnegative_int, default=0, help="torch CPU threads (0 = torch default)")
    return p


@cli_main
def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import json

    import jiwer
    import torch
    import yaml

    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    from w2p.llm import FrozenLLM
    from w2p.models import load_trained
    from w2p.score import wer
    from w2p.train.dataset import DumpDataset, collate
    from w2p.train.sampler import BucketSampler

    with open(os.path.join(args.model_dir, "config.yaml")) as f:
        conf = yaml.safe_load(f)
    if conf.get("model") != "wav2prompt":
        print(f"{args.model_dir}: readout needs a wav2prompt system, got {conf.get('model')}", file=sys.stderr)
        return 1
    # nearest-token readout needs only the tokenizer and the embedding table; --repeat runs the LLM
    llm = FrozenLLM.load(args.llm or conf.get("llm", "smollm2-135m"), embeddings_only=not args.repeat)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the scores JSON; library notices go to stderr
        model, _ = load_trained(args.model_dir, llm, checkpoint=args.checkpoint)
    ds = DumpDataset(args.data_dir, llm=llm, allow_pipes=args.allow_scp_pipes)
    if ds.llm_tokens is None:
        print(f"{args.data_dir}: no llm_tokens (run stage 3)", file=sys.stderr)
        return 1
    index = list(range(len(ds)))[: args.max_utts or None]
    sampler = BucketSampler([ds.lengths()[i] for i in index], args.batch_frames, shuffle=False)
    rows, prompts = {}, {}
    t0 = time.time()
    with torch.no_grad():
        for idx, _ in sampler.epoch_batches(1):
            batch = collate([ds[index[i]] for i in idx])
            vecs = model.prompts(batch["feats"], batch["feat_lens"]).vectors
            # forced-length outputs (one per target token) for the cosine to the targets
            U = torch.tensor([len(t) for t in batch["llm_tokens"]])
            forced = model.prompts(batch["feats"], batch["feat_lens"], target_lengths=U).vectors
            for b, u in enumerate(batch["utt_ids"]):
                ref_ids = batch["llm_tokens"][b]
                v = vecs[b].float()
                hyp_ids = llm.nearest_tokens(v)
                tgt = llm.embed(ref_ids).float()
                cos = torch.nn.functional.cosine_similarity(forced[b].float(), tgt, dim=-1).mean()
                prompts[u] = v
                rows[u] = {"ref": batch["text"][b], "ref_ids": ref_ids, "hyp_ids": hyp_ids, "cos": float(cos),
                           "hear": llm.decode(hyp_ids)}
    utts = sorted(rows)
    ter = jiwer.wer([" ".join(map(str, rows[u]["ref_ids"])) for u in utts],
                    [" ".join(map(str, rows[u]["hyp_ids"])) or "<none>" for u in utts])
    len_err = [abs(len(rows[u]["hyp_ids"]) - len(rows[u]["ref_ids"])) for u in utts]
    scores = {"set": os.path.basename(os.path.normpath(args.data_dir)), "n_utts": len(utts),
              "readout_ter": ter, "mean_cos": sum(rows[u]["cos"] for u in utts) / len(utts),
              "len_err": sum(len_err) / len(utts), "len_exact": sum(e == 0 for e in len_err) / len(utts),
              "readout_seconds": time.time() - t0}
    if args.repeat:
        t1 = time.time()
        outs = llm.generate(llm.build_inputs(args.template, [prompts[u] for u in utts]),
                            max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                            repetition_penalty=args.repetition_penalty)
        for u, o in zip(utts, outs):
            rows[u]["repeat"] = o
        refs = [rows[u]["ref"] for u in utts]
        scores["repeat_wer"] = wer(refs, outs) / 100.0
        scores["repeat_seconds"] = time.time() - t1
        if args.gold:
            gold = llm.generate(llm.build_inputs(args.template, [rows[u]["ref"] for u in utts]),
                                max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
                                repetition_penalty=args.repetition_penalty)
            scores["gold_repeat_wer"] = wer(refs, gold) / 100.0
        scores.update({"template": args.template, "num_beams": args.num_beams,
                       "repetition_penalty": args.repetition_penalty})
    out_dir = args.output_dir or os.path.join(args.model_dir, f"readout_{scores['set']}")
    lines = []
    for u in utts:
        r = rows[u]
        lines.append(f"{u}\n  REF   : {r['ref']}\n  HEARS : {r['hear']}\n")
        if "repeat" in r:
            lines.append(f"  REPEAT: {r['repeat']}\n")
        lines.append(f"  U={len(r['ref_ids'])} U_pred={len(r['hyp_ids'])} cos={r['cos']:.3f}\n")
    write_atomic(os.path.join(out_dir, "readout.txt"), "".join(lines))
    write_json(os.path.join(out_dir, "scores.json"), scores)
    print(json.dumps(scores, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
