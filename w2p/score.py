"""Scoring of decoding outputs (stage 9) and the RESULTS.md table.

Metrics (library implementations, nothing hand-written for edit distance / BLEU):
  wer         jiwer word error rate (%) on ``normalize_transcript`` text;
  bleu, chrf  sacreBLEU corpus BLEU / chrF on the raw (detokenised, case-sensitive) hypotheses;
  intent_acc  % of utterances whose canonical intent (``canonical_intent``) equals the reference's;
  exact       % normalised exact match (``normalize_answer``);
  contains    % of hypotheses whose normalised text contains the normalised gold answer as whole words;
  rtf         decoding real-time factor = decoding wall time / audio duration (from timing.json).
"""
from __future__ import annotations

import datetime as _dt
import json
import os

from w2p.io import git_commit, read_kv, write_atomic
from w2p.tasks import TASKS, canonical_intent, get_task, normalize_answer, normalize_transcript


# -- metrics ----------------------------------------------------------------------------------------------------
def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    r = [normalize_transcript(x) for x in refs]
    h = [normalize_transcript(x) for x in hyps]
    keep = [i for i, x in enumerate(r) if x]
    if not keep:
        raise ValueError("WER: every reference is empty")
    # jiwer refuses empty hypotheses as strings; a deletion-only hypothesis is scored as all deletions
    out = jiwer.process_words([r[i] for i in keep], [h[i] if h[i] else "<empty>" for i in keep])
    errors = out.substitutions + out.deletions + out.insertions
    # "<empty>" counted as one substitution + (n-1) deletions: the same number of errors as n deletions
    n_ref = sum(len(r[i].split()) for i in keep)
    return 100.0 * errors / n_ref


def bleu(refs: list[str], hyps: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def chrf(refs: list[str], hyps: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hyps, [refs]).score)


def intent_acc(refs: list[str], hyps: list[str]) -> float:
    return 100.0 * sum(canonical_intent(r) == canonical_intent(h) for r, h in zip(refs, hyps)) / max(1, len(refs))


def exact_match(refs: list[str], hyps: list[str]) -> float:
    return 100.0 * sum(normalize_answer(r) == normalize_answer(h) for r, h in zip(refs, hyps)) / max(1, len(refs))


def contains_gold(refs: list[str], hyps: list[str]) -> float:
    n = 0
    for r, h in zip(refs, hyps):
        r, h = normalize_answer(r), normalize_answer(h)
        n += bool(r) and f" {r} " in f" {h} "
    return 100.0 * n / max(1, len(refs))


def echo_rate(transcripts: list[str], hyps: list[str], max_wer: float = 30.0) -> float:
    """% of answers that merely repeat the spoken input (WER against its transcript <= max_wer): a system that
    ignores the task instruction and transcribes (the Encoder-LLM failure mode) scores high on non-ASR tasks."""
    import jiwer

    n = 0
    for t, h in zip(transcripts, hyps):
        t, h = normalize_transcript(t), normalize_transcript(h)
        if t and h:
            n += 100.0 * jiwer.wer(t, h) <= max_wer
    return 100.0 * n / max(1, len(transcripts))


METRICS = {"wer": wer, "bleu": bleu, "chrf": chrf, "intent_acc": intent_acc, "exact": exact_match,
           "contains": contains_gold}
LOWER_IS_BETTER = {"wer", "rtf"}


def score_lists(task: str, refs: list[str], hyps: list[str]) -> dict[str, float]:
    t = get_task(task)
    if len(refs) != len(hyps):
        raise ValueError(f"{task}: {len(refs)} references vs {len(hyps)} hypotheses")
    return {m: round(METRICS[m](refs, hyps), 2) for m in t.metrics}


def score_decode_dir(decode_dir: str, task: str) -> dict:
    """Score ``<decode_dir>/hyp`` against ``<decode_dir>/ref``; writes scores.json atomically and returns it."""
    hyp_p, ref_p = os.path.join(decode_dir, "hyp"), os.path.join(decode_dir, "ref")
    for p in (hyp_p, ref_p):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} missing: run the decoding stage (stage 6) first")
    hyp, ref = read_kv(hyp_p), read_kv(ref_p)
    missing = [u for u in ref if u not in hyp]
    if missing:
        raise ValueError(f"{hyp_p}: no hypothesis for {len(missing)} utterance(s), e.g. {missing[0]}")
    utts = list(ref)
    scores: dict = score_lists(task, [ref[u] for u in utts], [hyp[u] for u in utts])
    text_p = os.path.join(decode_dir, "text")
    if task != "asr" and os.path.isfile(text_p):
        text = read_kv(text_p)
        if all(u in text for u in utts):
            scores["echo"] = round(echo_rate([text[u] for u in utts], [hyp[u] for u in utts]), 2)
    scores["n_utts"] = len(utts)
    timing_p = os.path.join(decode_dir, "timing.json")
    if os.path.isfile(timing_p):
        with open(timing_p) as f:
            tm = json.load(f)
        if "n_dropped" in tm:  # decode dirs of earlier versions do not say
            scores["n_dropped"] = int(tm["n_dropped"])
        if tm.get("audio_sec"):
            scores["rtf"] = round(tm["decode_sec"] / tm["audio_sec"], 4)
    write_atomic(os.path.join(decode_dir, "scores.json"), json.dumps(scores, indent=1) + "\n")
    return scores


# -- results table ----------------------------------------------------------------------------------------------
def fmt_score(v) -> str:
    """A table cell: a score with two decimals, "–" for none."""
    if v is None:
        return "–"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def results_markdown(results: dict[str, dict[str, dict]], *, system_labels: dict[str, str] | None = None,
                     config: dict | None = None, notes: list[str] | None = None, figures: list[str] | None = None,
                     commit: str | None = None, date: str | None = None) -> str:
    """results[system][task] = scores dict. One table: rows = systems, columns = task metrics."""
    labels = system_labels or {}
    cols: list[tuple[str, str]] = []
    for task in TASKS:  # column order: w2p.tasks.TASKS
        if any(task in r for r in results.values()):
            cols += [(task, m) for m in get_task(task).metrics]
    lines = ["# Results", "",
             f"- date: {date or _dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- git commit: {commit or git_commit()}"]
    for k, v in (config or {}).items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Zero-shot, same frozen LLM and templates for every system (w2p/tasks.py). "
              "Arrows: ↓ lower is better, ↑ higher is better.", ""]
    head = ["system"] + [f"{t} {m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for t, m in cols] + ["RTF ↓"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for system, per_task in results.items():
        row = [labels.get(system, system)]
        for t, m in cols:
            row.append(fmt_score(per_task.get(t, {}).get(m)))
        rtfs = [s["rtf"] for s in per_task.values() if "rtf" in s]
        row.append(fmt_score(round(sum(rtfs) / len(rtfs), 4)) if rtfs else "–")
        lines.append("| " + " | ".join(row) + " |")
    echo_tasks = [t for t in TASKS if t != "asr" and any("echo" in r.get(t, {}) for r in results.values())]
    if echo_tasks:
        lines += ["", "Instruction following: % of answers that merely repeat the spoken input (WER ≤ 30 % against "
                  "its transcript; lower is better on non-ASR tasks):", "",
                  "| system | " + " | ".join(f"{t} echo ↓" for t in echo_tasks) + " |",
                  "|" + "---|" * (len(echo_tasks) + 1)]
        for system, r in results.items():
            lines.append("| " + " | ".join([labels.get(system, system)] +
                                           [fmt_score(r.get(t, {}).get("echo")) for t in echo_tasks]) + " |")
    per_task: dict[str, set] = {}
    dropped: dict[str, set] = {}
    for r in results.values():
        for t, v in r.items():
            per_task.setdefault(t, set()).add(v.get("n_utts"))
            if v.get("n_dropped"):
                dropped.setdefault(t, set()).add(v["n_dropped"])
    if per_task:
        lines += ["", "Test utterances scored per task: " + ", ".join(
            f"{t} {'/'.join(str(n) for n in sorted(ns, key=str))}" for t, ns in per_task.items()) + "; dropped "
            "from the test sets because their audio failed in stage 2: " + (", ".join(
                f"{t} {'/'.join(str(n) for n in sorted(ns))}" for t, ns in dropped.items()) or "none") + "."]
    for n in notes or []:
        lines += ["", n]
    for fig in figures or []:
        lines += ["", f"![{os.path.basename(fig)}]({fig})"]
    return "\n".join(lines) + "\n"
