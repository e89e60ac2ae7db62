"""The zero-shot tasks in one place: prompt template, answer normalisation, decoding mode and metrics.

Every system (Wav2Prompt, Encoder-LLM, the ASR->LLM cascade, the gold-text topline) uses the SAME template per
task; only what fills ``{speech}`` differs (prompt vectors, or transcript text for the cascade / topline). The
template is the user turn; the frozen LLM's chat template is applied around it (``FrozenLLM.build_inputs``).

Training uses the same templates: the stage-4 CE phase asks for the transcript through the ASR template, and
few-shot fine-tuning uses each task's own.

The templates are the wordings the default LLM (SmolLM2-135M-Instruct) followed best on gold text:
  * ST: the plain "Translate into French:" instruction; longer or one-shot variants were no better, and short
    prompts decode fastest.
  * SLU: a small LLM does not write an intent name reliably when asked to generate one (it paraphrases the
    command), so SLU is decoded as a closed-set choice: every listed intent is scored by the LLM's log-probability
    as the answer (intent words + eos) and the best is taken. A small LLM prefers some labels whatever the input,
    so the scores are calibrated (w2p.decode.calibrate_scores): ``content_free`` ("calibrate before use", Zhao et
    al. 2021) subtracts the log-probability of the same label given a content-free input ("N/A" in place of
    ``{speech}``), which a single input (w2p.infer) can use; ``batch`` (Zhou et al. 2024, the test-set default)
    divides out each label's mean probability over the system's own inputs, because the "N/A" prior is a text
    prior and penalises speech prompts (the measured effect: egs/mini_en/w2p1/README.md).
  * SQQA / SQA: short-answer instructions; the model answers in a sentence ("The capital of France is Paris."),
    which the "contains the gold answer" accuracy credits, while normalised exact match stays strict.

Answer normalisation (``normalize_answer``), applied to hypothesis and reference before exact match / contains:
  lower-case; Unicode NFKC; apostrophes and all other punctuation -> space (so "Paris." == "paris"); English
  articles a/an/the dropped; number words 0..99 -> digits ("five" == "5", "twenty-one" == "21"); whitespace collapsed.
Intent names (``canonical_intent``): lower-case, "_", "-", "." and spaces are one separator, so "Set_Alarm",
  "set alarm" and "set-alarm" are the same intent; the prompt lists intents in that readable spaced form.
ST is scored on raw (detokenised, case-sensitive) text with sacreBLEU, as usual for BLEU/chrF.
"""
from __future__ import annotations

import re
import string
import unicodedata
from dataclasses import dataclass, field

SPEECH = "{speech}"


@dataclass(frozen=True)
class Task:
    name: str
    template: str
    fields: tuple[str, ...] = ()  # template placeholders besides {speech}, filled per utterance / per set
    mode: str = "generate"  # "generate" (beam search) | "choice" (closed-set scoring over the listed labels)
    max_new_tokens: int = 24
    metrics: tuple[str, ...] = ()
    description: str = ""
    extra: dict = field(default_factory=dict)


TASKS: dict[str, Task] = {
    "asr": Task("asr", "Repeat the following sentence: {speech}", max_new_tokens=40, metrics=("wer",),
                description="repeat the spoken sentence (speech recognition)"),
    "st": Task("st", "Translate into French: {speech}", max_new_tokens=40, metrics=("bleu", "chrf"),
               description="translate the spoken English sentence into French"),
    # the paper's second ST direction (Europarl-ST En->Es); same wording as st
    "st_es": Task("st_es", "Translate into Spanish: {speech}", max_new_tokens=40, metrics=("bleu", "chrf"),
                  description="translate the spoken English sentence into Spanish"),
    # CoVoST 2 has no En->Fr/Es; its En->De is the ST task a CoVoST-only setup can run
    "st_de": Task("st_de", "Translate into German: {speech}", max_new_tokens=40, metrics=("bleu", "chrf"),
                  description="translate the spoken English sentence into German"),
    "slu": Task("slu", "Classify the intent of this command: {speech}\nIntents: {intents}.\n"
                "Answer with the intent name only.", fields=("intents",), mode="choice", max_new_tokens=8,
                metrics=("intent_acc",), description="pick the intent of a spoken command from the listed set"),
    "sqqa": Task("sqqa", "Answer the question in a few words: {speech}", max_new_tokens=16,
                 metrics=("exact", "contains"), description="answer the spoken question"),
    "sqa": Task("sqa", "{speech}\n{question} Answer in a few words.", fields=("question",), max_new_tokens=16,
                metrics=("exact", "contains"), description="answer a text question about the spoken statement"),
}

# content-free input for the calibration of closed-set (choice) scoring
CALIBRATION_INPUT = "N/A"


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def template_fields(template: str) -> list[str]:
    """Placeholder names of a template, in order (``{speech}`` included)."""
    return re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", template)


def check_template(template: str, given: list[str] | tuple[str, ...] = ()) -> None:
    """Raise a clear ValueError when {speech} is missing/duplicated or a placeholder has no value."""
    names = template_fields(template)
    if names.count("speech") != 1:
        raise ValueError(f"template must contain exactly one {SPEECH} placeholder (found {names.count('speech')}):"
                         f" {template!r}")
    missing = [n for n in names if n != "speech" and n not in given]
    if missing:
        raise ValueError(f"template placeholder(s) {missing} have no value: pass them (e.g. --{missing[0]} ...) "
                         f"or remove them from the template {template!r}")


# -- normalisation ---------------------------------------------------------------------------------------------
_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
            "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
         "ninety": 90}
_UNITS = {w: i for i, w in enumerate(_NUMBERS)}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "\u2018\u2019\u201c\u201d\u00ab\u00bb\u2026\u2013\u2014]")


def _numbers_to_digits(words: list[str]) -> list[str]:
    """"twenty one" / "twenty-one" (already split) -> "21"; "thirteen" -> "13" (0..99)."""
    out, i = [], 0
    while i < len(words):
        w = words[i]
        if w in _TENS:
            n = _TENS[w]
            if i + 1 < len(words) and words[i + 1] in _UNITS and 0 < _UNITS[words[i + 1]] < 10:
                n += _UNITS[words[i + 1]]
                i += 1
            out.append(str(n))
        elif w in _UNITS:
            out.append(str(_UNITS[w]))
        else:
            out.append(w)
        i += 1
    return out


def normalize_answer(text: str) -> str:
    """Answer normalisation for exact-match / contains scoring (see module docstring)."""
    t = unicodedata.normalize("NFKC", text or "").lower()
    t = _PUNCT.sub(" ", t)
    words = _numbers_to_digits([w for w in t.split() if w not in _ARTICLES])
    return " ".join(words)


def normalize_transcript(text: str) -> str:
    """For WER: lower-case, punctuation removed (apostrophes kept inside words), whitespace collapsed."""
    t = unicodedata.normalize("NFKC", text or "").lower().replace("\u2019", "'")
    t = re.sub(r"[^\w\s']", " ", t)
    t = re.sub(r"(?<!\w)'|'(?!\w)", " ", t)
    return " ".join(t.split())


def canonical_intent(name: str) -> str:
    """"Set_Alarm" / "set alarm" / "set-alarm" -> "set_alarm"."""
    return "_".join(re.split(r"[\s_\-.]+", (name or "").strip().lower())).strip("_")


def readable_intent(name: str) -> str:
    """Intent name as words for the prompt ("set_alarm" -> "set alarm")."""
    return canonical_intent(name).replace("_", " ")


def intents_prompt(intents: list[str]) -> str:
    """The ``{intents}`` value: the label set as readable comma-separated words."""
    return ", ".join(readable_intent(i) for i in intents)
