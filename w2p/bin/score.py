"""Scoring (recipe stage 9): score every decode dir, write RESULTS.md (systems x tasks) and the two figures.

  python -m w2p.bin.score --config conf/decode.yaml --systems_config conf/systems.yaml [--expdir exp]
         [--dump_dir dump/fbank] [--out RESULTS.md] [--plot_system wav2prompt] [--no_plots]
         [--extra_asr_sets test_heldout]

The rows are the decoded systems of the systems file in its order (w2p.bin.systems), labelled by their `label`;
without --systems_config, the decode config's own ``systems`` (labelled by `label`, else by name).
RESULTS.md, images/cif_alignment.png and images/training_curves.png are written in the recipe dir (atomically).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from w2p.errors import cli_main


@cli_main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="decode YAML (same file as stage 6)")
    p.add_argument("--systems_config", default=None, help="the recipe's systems file (conf/systems.yaml)")
    p.add_argument("--expdir", default="exp", help="with --systems_config: system X lives in <expdir>/X")
    p.add_argument("--dump_dir", default="dump/fbank")
    p.add_argument("--out", default="RESULTS.md")
    p.add_argument("--image_dir", default="images")
    p.add_argument("--plot_system", default="wav2prompt", help="Wav2Prompt system whose CIF alignment is plotted")
    p.add_argument("--plot_utts", type=int, default=3)
    p.add_argument("--no_plots", action="store_true")
    p.add_argument("--skip_missing", action="store_true", help="leave systems without decode dirs out of the table")
    p.add_argument("--extra_asr_sets", default="",
                   help="further ASR test sets decoded by stage 6 (decode_asr_<set>), e.g. test_heldout: a table of "
                   "ASR on each test set")
    args, extra = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from w2p.bin.systems import systems_of
    from w2p.decode import CALIBRATION_NOTES, calibration_mode, load_config, out_dir_of
    from w2p.io import write_atomic
    from w2p.score import results_markdown, score_decode_dir

    conf = load_config(args.config, extra)
    conf["systems"] = systems_of(conf, args.systems_config, args.expdir)
    results: dict[str, dict] = {}
    for name, spec in conf["systems"].items():
        per = {}
        for task, set_name in conf["tasks"].items():
            d = os.path.join(out_dir_of(spec, name), f"decode_{task}_{set_name}")
            if not os.path.isfile(os.path.join(d, "hyp")):
                if args.skip_missing:
                    logging.warning("%s: no decoding output, left out", d)
                    continue
                raise SystemExit(f"{d}/hyp missing: run stage 6 (decoding) first, or pass --skip_missing")
            per[task] = score_decode_dir(d, task)
            logging.info("%s / %s: %s", name, task, per[task])
        if per:
            results[name] = per
    if not results:
        raise SystemExit("nothing to score: no decode dirs found (run stage 6)")
    asr_sets: dict[str, dict] = {}
    extra_sets = [x for x in args.extra_asr_sets.replace(",", " ").split() if x]
    if extra_sets and "asr" in conf["tasks"]:
        asr_sets[conf["tasks"]["asr"]] = {n: r["asr"] for n, r in results.items() if "asr" in r}
        for s in extra_sets:
            asr_sets[s] = {}
            for name, spec in conf["systems"].items():
                d = os.path.join(out_dir_of(spec, name), f"decode_asr_{s}")
                if os.path.isfile(os.path.join(d, "hyp")):
                    asr_sets[s][name] = score_decode_dir(d, "asr")
                elif name in results and "asr" in results[name] and not args.skip_missing:
                    raise SystemExit(f"{d}/hyp missing: run stage 6 (decoding) first, or pass --skip_missing")

    figures = []
    if not args.no_plots:
        os.makedirs(args.image_dir, exist_ok=True)
        figures += _plots(conf, args)
    cfg = {"LLM": conf["llm"], "decoding": f"beam {conf['beam']}, repetition penalty {conf['repetition_penalty']}, "
           "SLU = closed-set choice over the listed intents "
           f"({calibration_mode(conf.get('calibrate', 'content_free'))} "
           f"calibration); cascade ASR "
           f"{'greedy CTC' if int(conf['asr_beam']) <= 1 else 'CTC prefix beam ' + str(conf['asr_beam'])}",
           "test utterances per task": "all" if not conf.get("max_utts") else f"first {conf['max_utts']} (sorted ids)",
           "config": args.config or "defaults"}
    if args.systems_config:
        cfg["systems"] = args.systems_config
    notes = [
        "Metrics: ASR WER (jiwer, lower-cased, punctuation removed); ST sacreBLEU BLEU / chrF on raw text; SLU intent "
        "accuracy; SQQA/SQA `exact` = normalised exact match, `contains` = the normalised gold answer occurs in the "
        "normalised hypothesis (normalisation: w2p/tasks.py). The 135M LLM answers in sentences, so `exact` is near 0 "
        "for every system and `contains` is the informative one; for SQA it is inflated when the model restates the "
        "statement (which contains the answer).",
        "SLU is decoded as a closed-set choice: each listed intent is scored by the LLM's log-probability as the "
        "answer, because the 135M LLM does not write intent names when asked to generate one; "
        + CALIBRATION_NOTES[calibration_mode(conf.get("calibrate", "content_free"))],
        "Few-shot rows (stages 7-8) are fine-tuned on each task's `fewshot` split, one model per task; their SLU "
        "choice is scored without calibration (the fine-tuned prompt was trained on the labels). The λ_mse = 0 "
        "ablation is fine-tuned on the first task only (CPU budget); rows without a decode dir are left out.",
        "RTF = decoding wall time (speech model + LLM) / audio duration, averaged over tasks; the gold-text system "
        "has no speech model.",
    ]
    labels = {n: s.get("label") or n for n, s in conf["systems"].items()}
    md = results_markdown(results, system_labels=labels, config=cfg, figures=figures, notes=notes,
                          asr_sets=asr_sets or None)
    write_atomic(args.out, md)
    print(md)
    return 0


def _plots(conf: dict, args) -> list[str]:
    import torch

    from w2p.plots import cif_alignment_plot, training_curves_plot

    out = []
    # one curve per trained model; the few-shot systems (one model per task, exp/<name>/{task}) are left out
    trained = {n: s["exp"] for n, s in conf["systems"].items() if s.get("exp") and "{task}" not in s["exp"]}
    path = training_curves_plot(trained, os.path.join(args.image_dir, "training_curves.png"))
    if path:
        out.append(path)
    spec = conf["systems"].get(args.plot_system)
    if spec and spec.get("kind") == "wav2prompt" and os.path.isfile(os.path.join(spec["exp"], "config.yaml")):
        from w2p.decode import load_set
        from w2p.llm import FrozenLLM
        from w2p.models import load_trained

        llm = FrozenLLM.load(conf["llm"], dtype=getattr(torch, conf["llm_dtype"]))
        model, _ = load_trained(spec["exp"], llm)
        ts = load_set(os.path.join(args.dump_dir, conf["tasks"].get("asr", "test")), max_utts=args.plot_utts,
                      allow_pipes=bool(conf["allow_scp_pipes"]))
        utts = [(u, ts.feats(u), ts.text[u]) for u in ts.utt_ids]
        out.append(cif_alignment_plot(model, llm, utts, os.path.join(args.image_dir, "cif_alignment.png")))
    else:
        logging.warning("no trained %s model: CIF alignment plot skipped", args.plot_system)
    return out


if __name__ == "__main__":
    sys.exit(main())
