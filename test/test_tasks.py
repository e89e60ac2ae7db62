"""Task declarations, templates and answer normalisation (no LLM needed)."""
import pytest

from w2p.tasks import (TASKS, canonical_intent, check_template, get_task, intents_prompt,
                       normalize_answer, normalize_transcript, readable_intent, template_fields)


def test_every_task_has_one_speech_slot_and_declared_fields():
    assert set(TASKS) == {"asr", "st", "st_es", "st_de", "slu", "sqqa", "sqa"}
    for t, lang in (("st", "French"), ("st_es", "Spanish"), ("st_de", "German")):  # one ST task per target language
        assert TASKS[t].template == f"Translate into {lang}: {{speech}}" and TASKS[t].metrics == ("bleu", "chrf")
    for t in TASKS.values():
        names = template_fields(t.template)
        assert names.count("speech") == 1, t.name
        assert sorted(n for n in names if n != "speech") == sorted(t.fields), t.name
        assert t.metrics and t.max_new_tokens > 0
        check_template(t.template, given=t.fields)
    assert get_task("slu").mode == "choice" and get_task("st").mode == "generate"


def test_unknown_task_and_bad_templates_are_clear_errors():
    with pytest.raises(ValueError, match="unknown task 'summarise'.*asr"):
        get_task("summarise")
    with pytest.raises(ValueError, match=r"exactly one \{speech\}"):
        check_template("Translate this please")
    with pytest.raises(ValueError, match=r"exactly one \{speech\}"):
        check_template("{speech} and {speech}")
    with pytest.raises(ValueError, match=r"\['question'\] have no value"):
        check_template("{speech} {question}")
    check_template("{speech} {question}", given=["question"])


@pytest.mark.parametrize("hyp,ref", [
    ("The capital of Kenya is Nairobi.", "capital of kenya is nairobi"),
    ("Paris!", "paris"), ("Thirteen", "13"), ("twenty-one", "21"), ("The answer: “Lisbon”", "answer lisbon"),
])
def test_normalize_answer(hyp, ref):
    assert normalize_answer(hyp) == ref


def test_normalize_transcript_keeps_word_apostrophes():
    assert normalize_transcript("It's ON, the 'table'!") == "it's on the table"


def test_intent_canonicalisation():
    assert canonical_intent("Set-Alarm") == canonical_intent("set alarm") == "set_alarm"
    assert readable_intent("weather_query") == "weather query"
    assert intents_prompt(["set_alarm", "play_music"]) == "set alarm, play music"
