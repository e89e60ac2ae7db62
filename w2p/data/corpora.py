"""``prepare_<corpus>`` functions (lhotse style): read a corpus in its real on-disk layout and return
``{utt_id: {"wav", "text", "spk", optional "ref", "question", "slots", "dur"}}`` for write_data_dir.

Problems with single utterances (missing audio, empty transcript, transcript without audio, ...)
are logged as skips naming the utterance and file; ``strict=True`` turns them into errors.
Text is normalised to the mini_en convention (see w2p.synth.mini_en): sentence case, no punctuation
except a final "?" on questions.

Which recipe set comes from which corpus part is the recipe's business (``egs/<recipe>/w2p1/local/``);
``write_sets`` writes and validates the resulting data dirs.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import os
import re
from typing import Callable

import numpy as np

from w2p.data.audio import AudioError, load_audio, write_wav_atomic
from w2p.data.datadir import validate_data_dir, write_data_dir

log = logging.getLogger("w2p.data.corpora")


class CorpusError(ValueError):
    pass


def normalize_transcript(s: str, lower_first: bool = False) -> str:
    """Sentence case without punctuation except a final '?'; lower_first for all-caps/all-lower sources."""
    s = s.strip()
    question = s.endswith("?")
    if lower_first:
        s = s.lower()
    s = s.replace("\u2019", "'")
    s = re.sub(r"[^\w' -]", " ", s)  # drop punctuation, keep apostrophes/hyphens inside words
    s = re.sub(r"(?<!\w)['-]|['-](?!\w)", " ", s)
    words = s.split()
    if lower_first:
        words = ["I" if w == "i" else ("I" + w[1:] if w.startswith("i'") else w) for w in words]
    s = " ".join(words)
    if not s:
        return ""
    s = s[0].upper() + s[1:]
    return s + "?" if question else s


def _skip(strict: bool, msg: str) -> None:
    if strict:
        raise CorpusError(msg)
    log.warning("skipping: %s", msg)


class Skips:
    """The skipped utterances of one corpus part: each is logged (naming utterance and file) as it happens, or is
    an error when ``strict``; ``check`` stops the run, listing them all, when more than ``max_frac`` of the
    utterances seen were skipped (a wrong path or a broken download, not a few bad files)."""

    def __init__(self, what: str, *, strict: bool = False, max_frac: float | None = None):
        self.what, self.strict, self.max_frac, self.msgs = what, strict, max_frac, []

    def __call__(self, msg: str) -> None:
        _skip(self.strict, msg)
        self.msgs.append(msg)

    def check(self, kept: int) -> None:
        seen = kept + len(self.msgs)
        if self.max_frac is None or not seen or len(self.msgs) <= self.max_frac * seen:
            return
        listed = self.msgs[:100] + ([f"... and {len(self.msgs) - 100} more"] if len(self.msgs) > 100 else [])
        raise CorpusError(f"{self.what}: {len(self.msgs)} of {seen} utterances would be skipped, more than the "
                          f"allowed fraction {self.max_frac:g} (--max_skip_frac). Fix the corpus (or its path in "
                          "db.sh), or raise --max_skip_frac. Skipped:\n  " + "\n  ".join(listed))


def _check_root(path: str, what: str, var: str) -> None:
    if not path or not os.path.isdir(path):
        raise CorpusError(f"{what} not found at {path!r}. Fix: set {var} in db.sh to the directory that holds it "
                          f"(download it first; see the recipe README)")


def write_sets(out_root: str, set_names: list[str],
               prepare: Callable[[str], tuple[dict, list[str] | None]]) -> dict[str, int]:
    """``prepare(set_name) -> (utts, intents or None)`` for each set -> ``<out_root>/<set>/``, each validated
    (audio files included). Returns {set: number of utterances}."""
    summary = {}
    for name in set_names:
        utts, intents = prepare(name)
        d = os.path.join(out_root, name)
        write_data_dir(d, utts, intents)
        summary[name] = validate_data_dir(d, "data", check_files=True)["utts"]
    log.info("prepared: %s", json.dumps(summary))
    return summary


# ------------------------------------------------------------------------------------------- mini_en
def _mini_en_stats(corpus_dir: str) -> dict:
    p = os.path.join(corpus_dir, "stats.json")
    if not os.path.isfile(p):
        raise CorpusError(f"{p} missing: the mini_en corpus in {corpus_dir} is not synthesised (or not finished); "
                          f"run stage 0 first")
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def mini_en_sets(corpus_dir: str) -> list[str]:
    """The sets of the mini_en corpus in corpus_dir (its stats.json)."""
    return list(_mini_en_stats(corpus_dir).get("utterances", {}))


def prepare_mini_en(corpus_dir: str, set_name: str) -> tuple[dict, list[str] | None]:
    """One set of the corpus written by ``w2p.synth.make_corpus``: (utts, intents for the SLU sets else None)."""
    have = _mini_en_stats(corpus_dir).get("utterances", {})
    if set_name not in have:
        raise CorpusError(f"set {set_name!r} is not part of the mini_en corpus in {corpus_dir} (it has: "
                          f"{' '.join(have)}); fix --train_set/--valid_set/--test_sets/--tasks in run.sh")
    p = os.path.join(corpus_dir, f"{set_name}.jsonl")
    if not os.path.isfile(p):
        raise CorpusError(f"{p} missing although {corpus_dir}/stats.json lists it; remove {corpus_dir} and "
                          f"run stage 0 again")
    utts = {}
    with open(p, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            try:
                d = json.loads(line)
                utts[d["id"]] = {k: d.get(k) for k in ("wav", "text", "spk", "ref", "question", "slots", "dur")}
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CorpusError(f"{p}:{ln}: not a manifest line ({e}); remove {corpus_dir} and run stage 0 "
                                  f"again") from e
    intents = None
    if set_name.startswith("slu_"):
        ip = os.path.join(corpus_dir, "intents")
        if not os.path.isfile(ip):
            raise CorpusError(f"{ip} missing: remove {corpus_dir} and run stage 0 again")
        with open(ip, encoding="utf-8") as f:
            intents = [x.strip() for x in f if x.strip()]
    return utts, intents


# ---------------------------------------------------------------------------------------- LibriSpeech
def prepare_librispeech(root: str, subset: str, *, strict: bool = False, max_utts: int = 0,
                        max_skip_frac: float | None = None) -> dict:
    """<root>/<subset>/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac + <spk>-<chapter>.trans.txt."""
    _check_root(os.path.join(root or "", subset), f"LibriSpeech subset {subset}", "LIBRISPEECH")
    skip = Skips(f"LibriSpeech {subset}", strict=strict, max_frac=max_skip_frac)
    utts = {}
    for trans in sorted(glob.glob(os.path.join(root, subset, "*", "*", "*.trans.txt"))):
        d = os.path.dirname(trans)
        spk = os.path.basename(os.path.dirname(d))
        listed = set()
        with open(trans, encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                parts = line.strip().split(maxsplit=1)
                if not parts:
                    continue
                uid = parts[0]
                listed.add(uid)
                text = normalize_transcript(parts[1] if len(parts) > 1 else "", lower_first=True)
                wav = os.path.join(d, f"{uid}.flac")
                if not text:
                    skip(f"utterance {uid}: empty transcript in {trans}:{ln}")
                    continue
                if not os.path.isfile(wav):
                    skip(f"utterance {uid}: audio file {wav} missing (listed in {trans})")
                    continue
                utts[uid] = {"wav": os.path.abspath(wav), "text": text, "spk": spk}
        for flac in sorted(glob.glob(os.path.join(d, "*.flac"))):
            uid = os.path.basename(flac)[:-5]
            if uid not in listed:
                skip(f"utterance {uid}: audio {flac} has no transcript line in {trans}")
    skip.check(len(utts))
    if not utts:
        raise CorpusError(f"LibriSpeech {subset}: no utterances found under {os.path.join(root, subset)}")
    if max_utts:
        utts = {k: utts[k] for k in sorted(utts)[:max_utts]}
    return utts


# ------------------------------------------------------------------------------------------- CoVoST 2
def prepare_covost2(root: str, split: str, *, tgt_lang: str = "fr", clips_dir: str | None = None,
                    strict: bool = False, max_utts: int = 0, max_skip_frac: float | None = None) -> dict:
    """CoVoST 2 En->X: <root>/covost_v2.en_<lang>.<split>.tsv (path, sentence, translation, client_id)
    with Common Voice clips in <clips_dir> (default <root>/clips)."""
    _check_root(root, "CoVoST 2", "COVOST2")
    tsv = os.path.join(root, f"covost_v2.en_{tgt_lang}.{split}.tsv")
    if not os.path.isfile(tsv):
        raise CorpusError(f"{tsv} missing. Fix: put the CoVoST 2 tsv (covost_v2.en_{tgt_lang}.tsv split with "
                          f"get_covost_splits.py) in COVOST2")
    clips = clips_dir or os.path.join(root, "clips")
    skip = Skips(f"CoVoST 2 {split}", strict=strict, max_frac=max_skip_frac)
    utts = {}
    with open(tsv, encoding="utf-8", newline="") as f:
        rd = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        need = {"path", "sentence", "translation", "client_id"}
        if not need <= set(rd.fieldnames or []):
            raise CorpusError(f"{tsv}: expected columns {sorted(need)}, found {rd.fieldnames}")
        for row in rd:
            uid_base = os.path.splitext(row["path"])[0]
            spk = row["client_id"][:16] or "unknown"
            uid = f"{spk}-{uid_base}"
            wav = os.path.join(clips, row["path"])
            text = normalize_transcript(row["sentence"])
            ref = (row["translation"] or "").strip()
            if not text or not ref:
                skip(f"utterance {uid}: empty {'sentence' if not text else 'translation'} in {tsv}")
                continue
            if not os.path.isfile(wav):
                skip(f"utterance {uid}: audio file {wav} missing")
                continue
            utts[uid] = {"wav": os.path.abspath(wav), "text": text, "spk": spk, "ref": ref}
            if max_utts and len(utts) >= max_utts:
                break
    skip.check(len(utts))
    if not utts:
        raise CorpusError(f"CoVoST 2 {split}: no usable utterances in {tsv}")
    return utts


# --------------------------------------------------------------------------------------------- SLURP
_SLOT_RE = re.compile(r"\[\s*([^:\]]+?)\s*:\s*([^\]]+?)\s*\]")


def slurp_slots(annotation: str) -> dict:
    """'wake me up at [time : five am]' -> {'time': 'five am'} (repeated types keep the first)."""
    out: dict[str, str] = {}
    for t, v in _SLOT_RE.findall(annotation or ""):
        out.setdefault(t.strip().replace(" ", "_"), v.strip())
    return out


def _nonblank_lines(path: str):
    """(line number, line) of a UTF-8 text file's non-blank lines (jsonl manifests)."""
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                yield ln, line


def _slurp_record(line: str, path: str, ln: int) -> dict:
    try:
        d = json.loads(line)
        if not isinstance(d, dict) or "intent" not in d or "slurp_id" not in d:
            raise ValueError("no 'intent' / 'slurp_id'")
    except ValueError as e:  # JSONDecodeError is a ValueError
        raise CorpusError(f"{path}:{ln}: not a SLURP record ({e}). Fix: SLURP must point at the SLURP checkout "
                          "(dataset/slurp/*.jsonl as released)") from e
    return d


def prepare_slurp(root: str, split: str, *, audio_dir: str | None = None, strict: bool = False,
                  max_utts: int = 0, headset_only: bool = False,
                  max_skip_frac: float | None = None) -> tuple[dict, list[str]]:
    """SLURP: <root>/dataset/slurp/<split>.jsonl (sentence, intent, sentence_annotation, recordings[].file)
    with audio in <audio_dir> (default <root>/audio/slurp_real). Returns (utts, all intents)."""
    _check_root(root, "SLURP", "SLURP")
    jl = os.path.join(root, "dataset", "slurp", f"{split}.jsonl")
    if not os.path.isfile(jl):
        raise CorpusError(f"{jl} missing. Fix: SLURP must be laid out as "
                          "slurp/dataset/slurp/{train,devel,test}.jsonl")
    audio = audio_dir or os.path.join(root, "audio", "slurp_real")
    intents = set()
    for s in ("train", "devel", "test"):
        p = os.path.join(root, "dataset", "slurp", f"{s}.jsonl")
        if os.path.isfile(p):
            for ln, x in _nonblank_lines(p):
                intents.add(_slurp_record(x, p, ln)["intent"])
    skip = Skips(f"SLURP {split}", strict=strict, max_frac=max_skip_frac)
    utts = {}
    for ln, line in _nonblank_lines(jl):
        d = _slurp_record(line, jl, ln)
        text = normalize_transcript(d.get("sentence", ""), lower_first=True)
        slots = slurp_slots(d.get("sentence_annotation", ""))
        for rec in d.get("recordings", []):
            fname = rec["file"]
            if headset_only and "headset" not in fname:
                continue
            stem = os.path.splitext(fname)[0]
            uid = f"slurp{d['slurp_id']}-{stem}"
            wav = os.path.join(audio, fname)
            if not text:
                skip(f"utterance {uid}: empty sentence in {jl}:{ln}")
                continue
            if not os.path.isfile(wav):
                skip(f"utterance {uid}: audio file {wav} missing")
                continue
            # SLURP has no speaker ids in the jsonl; each recording is its own speaker (Kaldi convention)
            utts[uid] = {"wav": os.path.abspath(wav), "text": text, "spk": uid, "ref": d["intent"], "slots": slots}
        if max_utts and len(utts) >= max_utts:
            break
    skip.check(len(utts))
    if not utts:
        raise CorpusError(f"SLURP {split}: no usable utterances in {jl}")
    return utts, sorted(intents)


# ---------------------------------------------------------------------------------------- Europarl-ST
EUROPARL_ST_AUDIO_EXTS = (".m4a", ".wav", ".flac")  # the release ships m4a; converted copies are accepted too


def _read_lines(path: str, var: str) -> list[str]:
    if not os.path.isfile(path):
        raise CorpusError(f"{path} missing. Fix: set {var} in db.sh to the corpus root (the directory that holds "
                          f"<src>/audios/ and <src>/<tgt>/<split>/), unpacked from the official release")
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def prepare_europarl_st(root: str, split: str, *, src: str = "en", tgt: str = "fr", audio_out: str,
                        strict: bool = False, max_utts: int = 0, max_skip_frac: float | None = None,
                        sr: int = 16000) -> dict:
    """Europarl-ST v1.1 <src>-><tgt> ``split`` (train | dev | test), in the release's layout:

      <root>/<src>/audios/<speech id>.m4a            one long recording per speech
      <root>/<src>/<tgt>/<split>/segments.lst        one segment a line: <speech id> <start s> <end s>
      <root>/<src>/<tgt>/<split>/segments.<src>      its transcript (line n of segments.lst)
      <root>/<src>/<tgt>/<split>/segments.<tgt>      its translation (line n)
      (speeches.lst / speeches.<lang> / speakers.lst: the whole speeches; not needed here)

    Each segment is cut by time from its decoded recording (m4a through ffmpeg) and written as a 16 kHz wav to
    ``audio_out/<utt>.wav`` (kept if already there: a re-run writes nothing). Utterance id
    ``<speech id>_<start cs>-<end cs>`` (times in centiseconds, Kaldi style); the speech is the speaker (one
    intervention, one speaker). A missing or undecodable
    recording, a mis-timed segment (start < 0, end <= start, end past the recording), an empty transcript or
    translation, or a segment with no signal is skipped with a log line naming the utterance and file.
    """
    var = "EUROPARL_ST"
    _check_root(root, "Europarl-ST", var)
    d = os.path.join(root, src, tgt, split)
    if not os.path.isdir(d):
        have = sorted(x for x in os.listdir(os.path.join(root, src)) if x != "audios") \
            if os.path.isdir(os.path.join(root, src)) else []
        raise CorpusError(f"Europarl-ST {src}->{tgt} {split}: {d} missing (language pairs found under "
                          f"{os.path.join(root, src)}: {' '.join(have) or 'none'}). Fix: set {var} in db.sh to the "
                          "corpus root that holds <src>/audios/ and <src>/<tgt>/<split>/")
    seg_p = os.path.join(d, "segments.lst")
    segs, srcs, tgts = (_read_lines(p, var) for p in (seg_p, os.path.join(d, f"segments.{src}"),
                                                      os.path.join(d, f"segments.{tgt}")))
    if not (len(segs) == len(srcs) == len(tgts)):
        raise CorpusError(f"{d}: segments.lst, segments.{src} and segments.{tgt} have {len(segs)}, {len(srcs)} and "
                          f"{len(tgts)} lines; they must be line-aligned. Fix: re-extract the release")
    audio_dir = os.path.join(root, src, "audios")
    skip = Skips(f"Europarl-ST {src}->{tgt} {split}", strict=strict, max_frac=max_skip_frac)
    by_speech: dict[str, list] = {}
    n_seen = 0
    for ln, line in enumerate(segs, 1):
        if max_utts and n_seen >= max_utts:
            break
        parts = line.split()
        if not parts:
            continue
        n_seen += 1
        speech = parts[0]
        try:
            start, end = float(parts[1]), float(parts[2])
            if len(parts) != 3:
                raise ValueError
        except (IndexError, ValueError):
            skip(f"utterance {speech}_line{ln}: {seg_p}:{ln}: not '<speech id> <start> <end>': {line!r}")
            continue
        # Kaldi-style id from the times: sorts in speech order, and a segment shared by two language pairs is
        # one utterance (one wav)
        uid = f"{speech}_{max(0, round(start * 100)):07d}-{max(0, round(end * 100)):07d}"
        text = normalize_transcript(srcs[ln - 1])
        ref = tgts[ln - 1].strip()
        if not text or not ref:
            skip(f"utterance {uid}: empty {'transcript' if not text else 'translation'} at line {ln} of "
                 f"{os.path.join(d, 'segments.' + (src if not text else tgt))}")
            continue
        by_speech.setdefault(speech, []).append((ln, uid, start, end, text, ref))
    os.makedirs(audio_out, exist_ok=True)
    utts = {}
    for speech in sorted(by_speech):
        todo = by_speech[speech]
        outs = {uid: os.path.join(audio_out, f"{uid}.wav") for _, uid, *_ in todo}
        audio = next((os.path.join(audio_dir, speech + e) for e in EUROPARL_ST_AUDIO_EXTS
                      if os.path.isfile(os.path.join(audio_dir, speech + e))), None)
        if audio is None:
            for ln, uid, *_ in todo:
                skip(f"utterance {uid}: recording {os.path.join(audio_dir, speech + '.m4a')} missing "
                     f"(segments.lst line {ln})")
            continue
        x = None
        if not all(os.path.isfile(p) for p in outs.values()):
            try:
                x = load_audio(audio, target_sr=sr, utt=speech)
            except AudioError as e:
                if "needs ffmpeg" in str(e):
                    raise CorpusError(str(e)) from e  # not the corpus' fault: every recording would fail
                for ln, uid, *_ in todo:
                    skip(f"utterance {uid}: recording {audio} unreadable: {e}")
                continue
        for ln, uid, start, end, text, ref in todo:
            wav = outs[uid]
            if x is not None:
                dur = len(x) / sr
                if start < 0 or end <= start or end > dur + 0.05:
                    skip(f"utterance {uid}: mis-timed segment {start:.2f}-{end:.2f} s (segments.lst line {ln}) of "
                         f"{audio}, which lasts {dur:.2f} s")
                    continue
                cut = x[int(round(start * sr)):int(round(end * sr))]
                if len(cut) < 400 or float(np.abs(cut).max()) < 1e-4:
                    skip(f"utterance {uid}: empty segment {start:.2f}-{end:.2f} s (segments.lst line {ln}) of "
                         f"{audio}: {'shorter than one 25 ms frame' if len(cut) < 400 else 'no signal'}")
                    continue
                if not os.path.isfile(wav):  # cut by an earlier run (same id = same times): kept
                    write_wav_atomic(wav, cut, sr)
            utts[uid] = {"wav": os.path.abspath(wav), "text": text, "spk": speech, "ref": ref,
                         "dur": round(end - start, 3)}
    skip.check(len(utts))
    if not utts:
        raise CorpusError(f"Europarl-ST {src}->{tgt} {split}: no usable segments in {seg_p}")
    return utts


# ---------------------------------------------------------------------------- spoken QA (SQQA / SQA)
def prepare_spoken_qa(root: str, split: str, task: str, *, var: str = "SQQA", strict: bool = False,
                      max_utts: int = 0, max_skip_frac: float | None = None) -> dict:
    """A local spoken-QA source (no standard corpus: the layout is w2p's own, README "Local corpora"):
    <root>/<split>.jsonl, one utterance a line: {"id", "audio" (path, relative to <root>), "text" (what is said),
    "answer"; SQA also "question" (the text question about the spoken statement); optional "spk"}."""
    _check_root(root, f"{task.upper()} source", var)
    jl = os.path.join(root, f"{split}.jsonl")
    if not os.path.isfile(jl):
        raise CorpusError(f"{jl} missing. Fix: {var} in db.sh must hold {split}.jsonl (README, 'Local corpora')")
    need = ("id", "audio", "text", "answer") + (("question",) if task == "sqa" else ())
    skip = Skips(f"{task.upper()} {split}", strict=strict, max_frac=max_skip_frac)
    utts = {}
    for ln, line in _nonblank_lines(jl):
        try:
            r = json.loads(line)
            missing = [k for k in need if not str(r.get(k) or "").strip()]
        except (json.JSONDecodeError, AttributeError) as e:
            raise CorpusError(f"{jl}:{ln}: not a JSON object ({e})") from e
        uid = str(r.get("id") or f"line{ln}")
        if missing:
            skip(f"utterance {uid}: {jl}:{ln} has no {', '.join(missing)}")
            continue
        wav = os.path.join(root, r["audio"])
        if not os.path.isfile(wav):
            skip(f"utterance {uid}: audio file {wav} missing ({jl}:{ln})")
            continue
        u = {"wav": os.path.abspath(wav), "text": normalize_transcript(r["text"]), "spk": str(r.get("spk") or uid),
             "ref": str(r["answer"]).strip()}
        if task == "sqa":
            u["question"] = str(r["question"]).strip()
        utts[uid] = u
        if max_utts and len(utts) >= max_utts:
            break
    skip.check(len(utts))
    if not utts:
        raise CorpusError(f"{task.upper()} {split}: no usable utterances in {jl}")
    return utts
