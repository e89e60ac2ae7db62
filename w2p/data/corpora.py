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
def prepare_librispeech(root: str, subset: str, *, strict: bool = False, max_utts: int = 0) -> dict:
    """<root>/<subset>/<spk>/<chapter>/<spk>-<chapter>-<nnnn>.flac + <spk>-<chapter>.trans.txt."""
    _check_root(os.path.join(root or "", subset), f"LibriSpeech subset {subset}", "LIBRISPEECH")
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
                    _skip(strict, f"utterance {uid}: empty transcript in {trans}:{ln}")
                    continue
                if not os.path.isfile(wav):
                    _skip(strict, f"utterance {uid}: audio file {wav} missing (listed in {trans})")
                    continue
                utts[uid] = {"wav": os.path.abspath(wav), "text": text, "spk": spk}
        for flac in sorted(glob.glob(os.path.join(d, "*.flac"))):
            uid = os.path.basename(flac)[:-5]
            if uid not in listed:
                _skip(strict, f"utterance {uid}: audio {flac} has no transcript line in {trans}")
    if not utts:
        raise CorpusError(f"LibriSpeech {subset}: no utterances found under {os.path.join(root, subset)}")
    if max_utts:
        utts = {k: utts[k] for k in sorted(utts)[:max_utts]}
    return utts


# ------------------------------------------------------------------------------------------- CoVoST 2
def prepare_covost2(root: str, split: str, *, tgt_lang: str = "fr", clips_dir: str | None = None,
                    strict: bool = False, max_utts: int = 0) -> dict:
    """CoVoST 2 En->X: <root>/covost_v2.en_<lang>.<split>.tsv (path, sentence, translation, client_id)
    with Common Voice clips in <clips_dir> (default <root>/clips)."""
    _check_root(root, "CoVoST 2", "COVOST2")
    tsv = os.path.join(root, f"covost_v2.en_{tgt_lang}.{split}.tsv")
    if not os.path.isfile(tsv):
        raise CorpusError(f"{tsv} missing. Fix: put the CoVoST 2 tsv (covost_v2.en_{tgt_lang}.tsv split with "
                          f"get_covost_splits.py) in COVOST2")
    clips = clips_dir or os.path.join(root, "clips")
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
                _skip(strict, f"utterance {uid}: empty {'sentence' if not text else 'translation'} in {tsv}")
                continue
            if not os.path.isfile(wav):
                _skip(strict, f"utterance {uid}: audio file {wav} missing")
                continue
            utts[uid] = {"wav": os.path.abspath(wav), "text": text, "spk": spk, "ref": ref}
            if max_utts and len(utts) >= max_utts:
                break
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


def prepare_slurp(root: str, split: str, *, audio_dir: str | None = None, strict: bool = False,
                  max_utts: int = 0, headset_only: bool = False) -> tuple[dict, list[str]]:
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
            with open(p, encoding="utf-8") as f:
                intents.update(json.loads(x)["intent"] for x in f if x.strip())
    utts = {}
    with open(jl, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            d = json.loads(line)
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
                    _skip(strict, f"utterance {uid}: empty sentence in {jl}:{ln}")
                    continue
                if not os.path.isfile(wav):
                    _skip(strict, f"utterance {uid}: audio file {wav} missing")
                    continue
                # SLURP has no speaker ids in the jsonl; each recording is its own speaker (Kaldi convention)
                utts[uid] = {"wav": os.path.abspath(wav), "text": text, "spk": uid, "ref": d["intent"], "slots": slots}
            if max_utts and len(utts) >= max_utts:
                break
    if not utts:
        raise CorpusError(f"SLURP {split}: no usable utterances in {jl}")
    return utts, sorted(intents)
