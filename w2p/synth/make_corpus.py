"""Stage 0 of egs/mini_en (local/data.sh): generate the mini_en text (seeded) and speak it with espeak-ng.

  python -m w2p.synth.make_corpus --corpus corpus [--seed 0] [--max_utts N] [--engines espeak]
                                  [--open_vocab 0.5] [--heldout 300 --heldout_engines festival]
                                  [--nj N --job J | --finalize]

``--engines espeak`` (the default) is the original corpus: espeak-ng accents x variants (w2p.synth.espeak), byte
for byte. A list (``espeak,flite,festival``) draws an engine, one of its voices, a tempo and an f0 factor per
utterance (w2p.synth.engines); the manifests then carry ``engine`` and the speaker is ``<engine>_<voice>``.
``--open_vocab F`` makes a fraction F of train WordNet example sentences (open vocabulary, no coverage pass);
``--heldout N`` adds the ASR set ``test_heldout``: N WordNet sentences with words not in training, spoken only by
``--heldout_engines`` (none of them in ``--engines``), and the spoken-question set ``sqqa_test_heldout``: the questions
and answers of ``sqqa_test`` spoken by those engines. Both off = the original corpus.

Run as N parallel jobs (``--nj N --job J``, J = 1..N, e.g. through run.pl), then once with
``--finalize`` which checks that every wav exists and writes the manifests
``<corpus>/<set>.jsonl`` (id, spk, wav, dur, text, ref, question, slots) and ``<corpus>/stats.json``.
Re-running is safe: existing valid wavs are kept, missing ones are synthesised.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time

import soundfile as sf

from w2p.data.audio import write_wav_atomic
from w2p.io import write_atomic
from w2p.synth import mini_en
from w2p.synth.engines import EngineMissing, draw_voices, get_engine, parse_engines
from w2p.synth.espeak import check_espeak, draw_speakers, synthesize
from w2p.synth.wordnet import WordNetMissing

log = logging.getLogger("make_corpus")


DEFAULT_ENGINES = ("espeak",)


def plan(seed: int, max_utts: int | None, corpus: str, engines=DEFAULT_ENGINES, open_vocab: float = 0.0,
         heldout: int = 0, heldout_engines=()) -> list[dict]:
    """Every utterance of every set with its voice and output path, in a fixed order.
    open_vocab / heldout: see mini_en.generate; the test_heldout set is spoken by heldout_engines only (none of
    them a training engine: leave-one-engine-out), with its own voice draws (the other sets' are unchanged), and so
    are the task sets on it (mini_en.HELDOUT_TASK_SETS: sqqa_test_heldout = sqqa_test's items and references)."""
    sizes = dict(mini_en.DEFAULT_SIZES)
    if max_utts:
        sizes = {k: min(v, max_utts) for k, v in sizes.items()}
        heldout = min(heldout, max_utts)
    if heldout and set(heldout_engines) & set(engines):
        raise ValueError(f"held-out engines {','.join(heldout_engines)} also speak the training sets "
                         f"({','.join(engines)}): a held-out set needs engines not used in training")
    if heldout and not heldout_engines:
        raise ValueError("a held-out set needs its own engines (e.g. --heldout_engines festival)")
    # the coverage pass adds training sentences; a capped (test) corpus stays capped
    sets = mini_en.generate(seed, sizes, cover=not max_utts, open_vocab=open_vocab, heldout=heldout)
    flat = [(s, i, it) for s in mini_en.ALL_SETS for i, it in enumerate(sets[s])]
    if tuple(engines) == DEFAULT_ENGINES:  # the original corpus (its draws and ids unchanged)
        spk = draw_speakers(len(flat), seed + 1)
    else:
        spk = draw_voices(len(flat), seed + 1, list(engines))
    if heldout:
        hs = sets[mini_en.HELDOUT_SET]
        flat += [(mini_en.HELDOUT_SET, i, it) for i, it in enumerate(hs)]
        spk = list(spk) + draw_voices(len(hs), seed + 2, list(heldout_engines))
        # the task sets on test_heldout (sqqa_test_heldout): the in-domain test set's items, spoken by the held-out
        # engines with their own draws; appended last, so every other set's draws and ids stay as they were
        for k, (name, src) in enumerate(mini_en.HELDOUT_TASK_SETS.items()):
            flat += [(name, i, it) for i, it in enumerate(sets[src])]
            spk += draw_voices(len(sets[src]), seed + 3 + k, list(heldout_engines))
    out = []
    corpus = os.path.abspath(corpus)
    for (s, i, it), v in zip(flat, spk):
        uid = f"{v['spk']}-{s}-{i:05d}"
        out.append({"id": uid, "set": s, "item": it, **v, "wav": os.path.join(corpus, "wav", s, f"{uid}.wav")})
    return out


def _plan_digest(utts: list[dict]) -> str:
    return hashlib.sha256(json.dumps([(u["id"], u["item"].text, u["voice"], u.get("variant", u.get("engine")),
                                       u["speed"], u["pitch"]) for u in utts]).encode()).hexdigest()[:16]


def _valid_wav(path: str) -> bool:
    try:
        return sf.info(path).frames > 0
    except Exception:
        return False


def run_job(utts: list[dict], nj: int, job: int) -> int:
    if any("engine" not in u for u in utts):
        check_espeak()
    done = 0
    t0 = time.time()
    mine = utts[job - 1::nj]
    batches: dict[str, list] = {}  # engine -> its pending utterances (festival runs them in batches)
    for u in mine:
        if _valid_wav(u["wav"]):
            continue
        if "engine" in u:
            batches.setdefault(u["engine"], []).append(
                (u["item"].text, u["voice"], u["speed"], u["pitch"], u["wav"]))
        else:
            x = synthesize(u["item"].text, u["voice"], u["variant"], u["speed"], u["pitch"])
            write_wav_atomic(u["wav"], x, 16000)
        done += 1
    for eng, todo in sorted(batches.items()):
        todo.sort(key=lambda j: j[1])  # by voice: festival loads each voice once per batch
        for i in range(0, len(todo), 200):
            get_engine(eng).synthesize_many(todo[i:i + 200])
    log.info("job %d/%d: %d utterances (%d synthesised, %d already present) in %.1fs",
             job, nj, len(mine), done, len(mine) - done, time.time() - t0)
    return done


def finalize(utts: list[dict], corpus: str, seed: int) -> dict:
    missing = [u for u in utts if not _valid_wav(u["wav"])]
    if missing:
        raise SystemExit(f"make_corpus: {len(missing)} wavs missing or unreadable, e.g. {missing[0]['wav']} "
                         f"(utterance {missing[0]['id']}); re-run stage 0 to synthesise them")
    by_set: dict[str, list[str]] = {}
    secs: dict[str, float] = {}
    for u in utts:
        it = u["item"]
        dur = sf.info(u["wav"]).duration
        secs[u["set"]] = secs.get(u["set"], 0.0) + dur
        if "engine" in u:
            rec = {"id": u["id"], "spk": u["spk"], "wav": u["wav"], "dur": round(dur, 3), "text": it.text,
                   "engine": u["engine"], "voice": u["voice"], "speed": u["speed"], "pitch": u["pitch"],
                   "family": it.family}
        else:
            rec = {"id": u["id"], "spk": u["spk"], "wav": u["wav"], "dur": round(dur, 3), "text": it.text,
                   "voice": u["voice"], "variant": u["variant"], "speed": u["speed"], "pitch": u["pitch"],
                   "family": it.family}
        # ASR sets mix all families: their references would be partial files, so only task sets carry them
        task_set = u["set"] in mini_en.TASK_SETS or u["set"] in mini_en.HELDOUT_TASK_SETS
        for k in ("ref", "question", "slots") if task_set else ():
            if getattr(it, k) is not None:
                rec[k] = getattr(it, k)
        by_set.setdefault(u["set"], []).append(json.dumps(rec, ensure_ascii=False) + "\n")
    for s, lines in by_set.items():
        write_atomic(os.path.join(corpus, f"{s}.jsonl"), "".join(lines))
    write_atomic(os.path.join(corpus, "intents"), "".join(f"{i}\n" for i in mini_en.INTENTS))
    words = {w.lower().strip("?") for u in utts for w in u["item"].text.split()}
    stats = {"seed": seed, "utterances": {s: len(v) for s, v in by_set.items()},
             "total_utterances": len(utts), "vocabulary_size": len(words),
             "hours": {s: round(v / 3600, 4) for s, v in secs.items()},
             "total_hours": round(sum(secs.values()) / 3600, 4),
             "speakers": len({u["spk"] for u in utts})}
    if any(u["item"].family in ("wordnet", "heldout") for u in utts):  # open vocabulary (absent by default)
        train_words = {w for u in utts if u["set"] == "train" for w in mini_en._words(u["item"].text)}
        stats["train_vocabulary_size"] = len(train_words)
    if any("engine" in u for u in utts):
        # (the original espeak draws carry no engine field: they count as espeak)
        eng = [u.get("engine", "espeak") for u in utts]
        stats["engines"] = {e: eng.count(e) for e in sorted(set(eng))}
    write_atomic(os.path.join(corpus, "stats.json"), json.dumps(stats, indent=1) + "\n")
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, help="output directory (wav/<set>/*.wav + manifests)")
    ap.add_argument("--seed", type=int, default=0, help="text and voice seed (the corpus is a function of it)")
    ap.add_argument("--max_utts", type=int, default=0, help="cap every set at this size (0 = full corpus; tests)")
    ap.add_argument("--nj", type=int, default=1, help="number of parallel jobs the work is split into")
    ap.add_argument("--job", type=int, default=0, help="this job's index 1..nj (0 = do all jobs' work here)")
    ap.add_argument("--finalize", action="store_true", help="check the wavs and write manifests + stats.json")
    ap.add_argument("--engines", default="espeak",
                    help="synthesis engines, comma-separated (espeak, flite, festival; w2p info lists them). "
                    "espeak alone = the original corpus")
    ap.add_argument("--open_vocab", type=float, default=0.0,
                    help="fraction of train drawn from WordNet's example sentences (open vocabulary; 0 = off, the "
                    "original corpus; needs apt wordnet-base)")
    ap.add_argument("--heldout", type=int, default=0,
                    help="size of the test_heldout set: WordNet sentences with words not in training, spoken by "
                    "--heldout_engines only (0 = no such set); also adds sqqa_test_heldout, sqqa_test spoken by them")
    ap.add_argument("--heldout_engines", default="festival",
                    help="engines of test_heldout, none of them in --engines (leave-one-engine-out)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if a.nj < 1 or not 0 <= a.job <= a.nj:
        ap.error(f"need 1 <= nj and 0 <= job <= nj (got nj={a.nj}, job={a.job})")
    try:
        engines = tuple(parse_engines(a.engines))
    except (EngineMissing, ValueError) as e:
        raise SystemExit(f"make_corpus: --engines {a.engines}: {e}") from e
    heldout_engines: tuple = ()
    if a.heldout:
        try:
            heldout_engines = tuple(parse_engines(a.heldout_engines))
        except (EngineMissing, ValueError) as e:
            raise SystemExit(f"make_corpus: --heldout_engines {a.heldout_engines}: {e}") from e
    try:
        utts = plan(a.seed, a.max_utts or None, a.corpus, engines, a.open_vocab, a.heldout, heldout_engines)
    except (ValueError, WordNetMissing) as e:
        raise SystemExit(f"make_corpus: {e}") from e
    # the stamp pins the exact plan (texts, voices): a corpus dir is never silently mixed from two
    # configurations or generator versions, since existing wavs are reused on re-runs
    digest = _plan_digest(utts)
    stamp = os.path.join(a.corpus, ".config.json")
    cfg = {"seed": a.seed, "max_utts": a.max_utts, "plan_sha256": digest}
    if engines != DEFAULT_ENGINES:  # (the default corpus's stamp is unchanged)
        cfg["engines"] = list(engines)
    if a.open_vocab:
        cfg["open_vocab"] = a.open_vocab
    if a.heldout:
        cfg.update(heldout=a.heldout, heldout_engines=list(heldout_engines))
    if os.path.exists(stamp):
        with open(stamp) as f:
            old = json.load(f)
        # a held-out corpus made before its task sets existed: its wavs are planned as they were (the new sets
        # come last), so it is completed here rather than refused
        before = {**cfg, "plan_sha256": _plan_digest([u for u in utts if u["set"] not in mini_en.HELDOUT_TASK_SETS])}
        if a.heldout and old == before:
            log.info("%s: adding %s to a held-out corpus made without them", a.corpus,
                     " ".join(mini_en.HELDOUT_TASK_SETS))
            write_atomic(stamp, json.dumps(cfg) + "\n")
        elif old != cfg:
            raise SystemExit(f"make_corpus: {a.corpus} was generated with {old}, not {cfg}; "
                             f"remove {a.corpus} or use the same options")
    else:
        write_atomic(stamp, json.dumps(cfg) + "\n")
    if a.finalize:
        stats = finalize(utts, a.corpus, a.seed)
        log.info("corpus ready: %s", json.dumps(stats))
        return 0
    jobs = [a.job] if a.job else range(1, a.nj + 1)
    for j in jobs:
        run_job(utts, a.nj, j)
    return 0


if __name__ == "__main__":
    sys.exit(main())
