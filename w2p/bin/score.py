"""Scoring (recipe stage 9): score every decode dir, write RESULTS.md (systems x tasks) and the two figures.

  python -m w2p.bin.score --config conf/decode.yaml --systems_config conf/systems.yaml [--expdir exp]
         [--dump_dir dump/fbank] [--out RESULTS.md] [--plot_system wav2prompt] [--no_plots]

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
    p.add_argument("--tasks", default=None,
                   help="comma-separated tasks to score (default: the config's); set a task's test set with "
                        "--tasks.<task> <set>")
    p.add_argument("--asr_sets", default="",
                   help="space-separated test sets: the first is the table's asr column (--tasks.asr); with more, "
                        "a table of every set: ASR WER on each (decode_asr_<set>) and, for each task T decoded on a "
                        "further set S (decode_T_T_S), T's metrics on the first set and on S")
    args, extra = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from w2p.bin.systems import systems_of
    from w2p.decode import CALIBRATION_NOTES, calibration_mode, load_config, out_dir_of
    from w2p.io import write_atomic
    from w2p.score import results_markdown, score_decode_dir

    conf = load_config(args.config, extra)
    if args.tasks is not None:
        want = [t for t in args.tasks.split(",") if t]
        unmapped = [t for t in want if t not in conf["tasks"]]
        if unmapped:
            raise SystemExit(f"task(s) {', '.join(unmapped)} have no test set: pass --tasks.<task> <set> or list them "
                             f"in the config's tasks ({conf['tasks']})")
        conf["tasks"] = {t: conf["tasks"][t] for t in want}
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

    figures = []
    if not args.no_plots:
        os.makedirs(args.image_dir, exist_ok=True)
        figures += _plots(conf, args)
    cfg = {"LLM": conf["llm"], "decoding": f"beam {conf['beam']}, repetition penalty {conf['repetition_penalty']}, "
           "SLU = closed-set choice over the listed intents "
           f"({calibration_mode(conf.get('calibrate', 'content_free'))} "
           f"calibration); cascade ASR "
           f"{'greedy CTC' if int(conf['asr_beam']) <= 1 else 'CTC prefix beam ' + str(conf['asr_beam'])}",
           "test utterances per task": ("all" if not conf.get("max_utts")
                                        else f"{conf['max_utts']}, evenly spaced over the sorted ids"),
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
    asr_sets = args.asr_sets.split()
    if len(asr_sets) > 1:
        notes.append(_test_sets_table(conf, asr_sets, labels))
    md = results_markdown(results, system_labels=labels, config=cfg, figures=figures, notes=notes)
    write_atomic(args.out, md)
    print(md)
    return 0


def _test_sets_table(conf: dict, test_sets: list[str], labels: dict) -> str:
    """A markdown table of every system on each test set S: ASR WER (decode_asr_<S>) and, for each task T decoded on a
    further set (decode_T_T_S: the rule <task>_<test set>, e.g. sqqa_test_heldout), T's metrics there beside the
    first set's (the main table's T set); "–" where a system has no such decode dir."""
    from w2p.decode import out_dir_of
    from w2p.score import LOWER_IS_BETTER, fmt_score, score_decode_dir
    from w2p.tasks import TASKS, get_task

    first, further = test_sets[0], test_sets[1:]
    outs = {name: out_dir_of(spec, name) for name, spec in conf["systems"].items()}

    def decoded(name, d):
        return os.path.isfile(os.path.join(outs[name], d, "hyp"))

    cols = [("asr", "wer", s, f"decode_asr_{s}") for s in test_sets]
    for t in TASKS:
        if t == "asr" or t not in conf["tasks"] or not any(decoded(n, f"decode_{t}_{t}_{s}") for n in outs
                                                            for s in further):
            continue
        for m in get_task(t).metrics:
            cols += [(t, m, first, f"decode_{t}_{conf['tasks'][t]}")]
            cols += [(t, m, s, f"decode_{t}_{t}_{s}") for s in further]
    head = [f"{t} {m} {'↓' if m in LOWER_IS_BETTER else '↑'} {s}" for t, m, s, _ in cols]
    rows = [f"Every test set: ASR on the set S, a task T on its set T_S ({first}: the table above's sets):", "",
            "| system | " + " | ".join(head) + " |", "|" + "---|" * (len(cols) + 1)]
    for name in outs:
        scores: dict[str, dict] = {}
        cells = []
        for t, m, _, d in cols:
            if d not in scores:
                scores[d] = score_decode_dir(os.path.join(outs[name], d), t) if decoded(name, d) else {}
            cells.append(fmt_score(scores[d].get(m)))
        if any(c != "–" for c in cells):
            rows.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


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
