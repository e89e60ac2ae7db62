"""Open-vocabulary English sentences: the quoted usage examples of WordNet's glosses (Debian ``wordnet-base``).

WordNet 3.0's glosses hold ~48k short example sentences and phrases written by lexicographers ("the train moved
ahead slowly", "She wants to leave"): real English over ~25k distinct words, offline and maintained by a distro, with
no templates to write. ``sentences()`` keeps the ones every synthesis engine can speak and that follow mini_en's
text convention (w2p.synth.mini_en): ASCII letters, 4-15 words, no digits, no apostrophes or hyphens, no acronyms
(engines spell them, so the transcript would be ambiguous), no punctuation except a final "?"; sentence case.
"""
from __future__ import annotations

import functools
import glob
import os
import re

DEFAULT_DIR = "/usr/share/wordnet"
MIN_WORDS, MAX_WORDS = 4, 15
_OFFENSIVE = re.compile(r"\b(fuck|shit|bitch|whore|bastard|cunt|slut|nigg|fag|dick|piss|cock|wank|twat)")


class WordNetMissing(RuntimeError):
    pass


def wordnet_dir() -> str:
    return os.environ.get("W2P_WORDNET", DEFAULT_DIR)


def _clean(q: str) -> str | None:
    """One quoted gloss example -> a speakable sentence in mini_en's convention, or None."""
    s = re.sub(r"\s+", " ", q).strip()
    s = re.sub(r"[.!]+$", "", s).strip()
    question = s.endswith("?")
    s = s.rstrip("?").strip()
    s = re.sub(r"\s*[,;]\s*", " ", s)  # no commas (mini_en convention); the words stay
    if not re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*", s):
        return None  # digits, apostrophes, hyphens, brackets, quotes, other punctuation
    words = s.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    if any(len(w) > 1 and w.isupper() for w in words) or any(len(w) == 1 and w not in "aAI" for w in words):
        return None  # acronyms and stray letters
    if _OFFENSIVE.search(s.lower()):
        return None  # a handful of profanities and slurs: nothing a demo should be trained to write
    s = s[:1].upper() + s[1:]
    return s + ("?" if question else "")


def sentences(path: str | None = None) -> tuple[str, ...]:
    """Distinct (case/punctuation-insensitive) cleaned example sentences, sorted: a pure function of the files."""
    return _sentences(os.path.abspath(path or wordnet_dir()))


@functools.lru_cache(maxsize=2)
def _sentences(path: str) -> tuple[str, ...]:
    files = sorted(glob.glob(os.path.join(path, "data.*")))
    if not files:
        raise WordNetMissing(f"no WordNet data files (data.noun, ...) in {path}: the open vocabulary needs them. "
                             "Fix: apt-get install wordnet-base (or set W2P_WORDNET to a WordNet 3.0 dict dir)")
    seen: dict[str, str] = {}
    for f in files:
        with open(f, encoding="latin-1") as fh:
            for line in fh:
                if line.startswith("  ") or "|" not in line:  # the licence header lines start with two spaces
                    continue
                for q in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    s = _clean(q)
                    if s is not None:
                        seen.setdefault(re.sub(r"[^a-z ]", "", s.lower()), s)
    return tuple(seen[k] for k in sorted(seen))
