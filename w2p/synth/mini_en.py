"""Deterministic text generator of the ``mini_en`` corpus (ASR + zero-shot ST/SLU/SQQA/SQA sets).

Every set is produced from one ``random.Random(seed)`` so the same seed always yields the same
corpus, independently of how synthesis is later split over jobs.

Design choices
--------------
* **One vocabulary, many patterns.** Wav2Prompt learns from ASR data only and must then transcribe
  task speech it never saw, so the ASR sentences are drawn from the *same* pattern families and
  lexicon as the task sentences (ST declaratives, SLU commands, SQQA questions, SQA statements),
  while the exact task sentences are kept disjoint from all ASR sentences (and from each other).
* **Text normalisation (decision).** Transcripts are *sentence case*: the first letter is upper
  case, proper nouns (names, countries, cities, days, months) and "I" keep their capitals, every
  other word is lower case; numbers are written as words; there is no punctuation except a final
  "?" on questions (no commas, no final full stop, no apostrophes). This keeps prompts close to
  what the frozen LLM sees in natural text (``What is the capital of France?``) while leaving only
  a few, audible-from-context casing decisions and one punctuation mark to learn from speech.
  French references follow the same convention (sentence case, no final full stop).
* **Open vocabulary (opt-in).** ``generate(open_vocab=F)`` makes a fraction F of train WordNet example sentences
  (w2p.synth.wordnet) and drops the coverage pass; ``heldout=N`` adds ``test_heldout``, N WordNet sentences each
  with words train never says. Their own RNG: every other sentence is the one the default draws.
* **Short utterances.** 3-14 words (about 1-4 s with espeak-ng), so CPU training stays cheap.
* **References.** ST: French from the bilingual lexicon (gender/number agreement, elision,
  contraction, adjective placement). SLU: intent name (``ref``) + slot values (``slots`` JSON) and
  the label set (``intents``). SQQA: a short gold answer that a small instruction LLM knows from
  text (capitals, colours of well-known things, opposites, small arithmetic, day/month order).
  SQA: a spoken statement, a text ``question`` about it and the short answer (``ref``).
  Answers are lower case words except proper nouns; numbers are words ("five").
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from w2p.synth import lexicon as L

ASR_SETS = ("train", "dev", "test")
TASKS = ("st", "slu", "sqqa", "sqa")
TASK_SETS = tuple(f"{t}_{s}" for t in TASKS for s in ("fewshot", "test"))
ALL_SETS = ASR_SETS + TASK_SETS

# train: 7600 drawn + the coverage pass (every word of the other sets >= MIN_TRAIN_COUNT times) -> about 7700.
# Stage 4 trains for a fixed number of steps, so more distinct sentences cost only synthesis time and stop the
# encoder memorising them (measured: egs/mini_en/w2p1/README.md).
DEFAULT_SIZES = {"train": 7600, "dev": 300, "test": 300}
DEFAULT_SIZES.update({f"{t}_fewshot": 300 for t in TASKS})
DEFAULT_SIZES.update({f"{t}_test": 240 for t in TASKS})

MIN_WORDS, MAX_WORDS = 3, 14


@dataclass
class Item:
    text: str
    ref: str | None = None
    question: str | None = None
    slots: dict | None = None
    family: str = ""
    extra: dict = field(default_factory=dict)


def sentence_case(s: str) -> str:
    s = re.sub(r"\s+", " ", s).strip()
    return s[:1].upper() + s[1:]


def norm_key(s: str) -> str:
    """Key used for disjointness: case and punctuation do not make a sentence new."""
    return re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()


def n_words(s: str) -> int:
    return len(s.split())


# ---------------------------------------------------------------- ST / declarative families
def _nouns_with(tags) -> list[L.Noun]:
    tags = set(tags.split(",")) if isinstance(tags, str) else set(tags)
    return [n for n in L.NOUNS if n.tags & tags]


_ATTR_TAGS = {"person": {"person_ok", "person_only"}, "animal": {"colour", "size", "person_ok", "person_only"},
              "place": {"size", "quality", "state"}, "other": {"colour", "size", "quality", "state"}}
_PRED_TAGS = {"person": {"feeling", "person_ok"}, "animal": {"colour", "size", "feeling"},
              "place": {"size", "quality", "state"}, "other": {"colour", "size", "quality", "state"}}


def _cls(noun: L.Noun) -> str:
    for c in ("person", "animal", "place"):
        if c in noun.tags:
            return c
    return "other"


def _adj_for(rng, noun, predicative=False, p=0.5):
    if rng.random() > p and not predicative:
        return None
    allowed = (_PRED_TAGS if predicative else _ATTR_TAGS)[_cls(noun)]
    cands = [a for a in L.ADJS if a.tags & allowed]
    if not predicative:
        cands = [a for a in cands if a.en != "lost"]  # "a lost dog" fine but "perdu" placement is odd
    return rng.choice(cands)


def _object_np(rng, noun, allow_bare=True, allow_some=True, p_adj=0.5):
    """Random determiner/number/plural + optional adjective. Returns (en, fr_tokens, plural, det, number)."""
    r = rng.random()
    adj = _adj_for(rng, noun, p=p_adj)
    if r < 0.25:
        number = rng.randint(2, 12)
        en, fr = L.noun_phrase("", noun, True, adj, number)
        return en, fr, True, "", number
    if r < 0.32 and allow_bare:
        en, fr = L.noun_phrase("", noun, True, adj)
        fr = (["de"] if adj is not None and adj.pre else ["des"]) + fr
        return en, fr, True, "some", None
    dets = ["a", "the", "my", "your", "his", "her", "our", "their", "this"] + (["some"] if allow_some else [])
    det = rng.choice(dets)
    plural = det == "some" or (det not in ("a",) and rng.random() < 0.35)
    en, fr = L.noun_phrase(det, noun, plural, adj)
    return en, fr, plural, det, None


def _subject(rng, allow_you=True, allow_i=True):
    """Returns (en, fr_tokens, person_index, plural, gender)."""
    r = rng.random()
    if r < 0.4:
        name, g = rng.choice(L.NAMES)
        return name, [name], 2, False, g
    if r < 0.7:
        pr = [p for p in L.PRONOUNS if (allow_you or p[0] != "you") and (allow_i or p[0] != "I")]
        en, fr, idx, pl, g = rng.choice(pr)
        return en, [fr], idx, pl, g
    noun = rng.choice(_nouns_with("person" if rng.random() < 0.7 else "animal"))
    plural = rng.random() < 0.35
    det = rng.choice(["the", "my", "our", "his", "her", "their", "this"])
    adj = _adj_for(rng, noun, p=0.3)
    en, fr = L.noun_phrase(det, noun, plural, adj)
    return en, fr, 5 if plural else 2, plural, noun.g


def _fr_sentence(tokens: list[str]) -> str:
    toks = " ".join(tokens).split()
    return sentence_case(L.join_fr(L.contract_de(toks)))


def _en_be(idx: int, past: bool) -> str:
    return L.EN_BE.get(idx, ("are", "were"))[1 if past else 0]


def _pp(rng):
    en_p, fr_p, tags = rng.choice(L.PREPS)
    loc = rng.choice(_nouns_with(tags))
    en, fr = L.noun_phrase("the", loc, False)
    return f"{en_p} {en}", [fr_p] + fr, loc


def gen_past(rng) -> Item:
    en_s, fr_s, idx, _, _ = _subject(rng)
    en_v, fr_v, tags = rng.choice(L.PAST_VERBS)
    noun = rng.choice(_nouns_with(tags))
    en_o, fr_o, *_ = _object_np(rng, noun)
    en = f"{en_s} {en_v} {en_o}"
    fr = fr_s + [L.AVOIR[idx], fr_v] + fr_o
    if rng.random() < 0.45:
        t_en, t_fr = rng.choice(L.PAST_TIMES)
        en += " " + t_en
        fr += [t_fr]
    return Item(sentence_case(en), ref=_fr_sentence(fr), family="st_past")


def gen_pred(rng) -> Item:
    past = rng.random() < 0.35
    if rng.random() < 0.55:
        noun = rng.choice([n for n in L.NOUNS if _cls(n) != "person"])
        plural = rng.random() < 0.35
        det = rng.choice(["the", "my", "your", "his", "her", "our", "their", "this"])
        en_s, fr_s = L.noun_phrase(det, noun, plural)
        idx, g = (5 if plural else 2), noun.g
    else:
        en_s, fr_s, idx, plural, g = _subject(rng, allow_you=False)
        noun = L.NOUNS[[n.en for n in L.NOUNS].index("man")]  # people adjectives
    adj = _adj_for(rng, noun, predicative=True)
    be_fr = (L.ETRE_IMPF if past else L.ETRE)[idx]
    en = f"{en_s} {_en_be(idx, past)} {adj.en}"
    fr = fr_s + [be_fr, adj.form(g, plural)]
    return Item(sentence_case(en), ref=_fr_sentence(fr), family="st_pred")


def gen_exist(rng) -> Item:
    past = rng.random() < 0.3
    noun = rng.choice(_nouns_with("obj,animal,food"))
    r = rng.random()
    adj = _adj_for(rng, noun, p=0.5)
    if r < 0.45:
        en_o, fr_o = L.noun_phrase("a", noun, False, adj)
        plural = False
    elif r < 0.8:
        number = rng.randint(2, 12)
        en_o, fr_o = L.noun_phrase("", noun, True, adj, number)
        plural = True
    else:
        en_o, fr_o = L.noun_phrase("some", noun, True, adj)
        plural = True
    en_pp, fr_pp, _ = _pp(rng)
    be = ("were" if plural else "was") if past else ("are" if plural else "is")
    en = f"there {be} {en_o} {en_pp}"
    fr = ["il", "y", "avait" if past else "a"] + fr_o + fr_pp
    return Item(sentence_case(en), ref=_fr_sentence(fr), family="st_exist")


def gen_pres(rng) -> Item:
    en_s, fr_s, idx, plural, _ = _subject(rng)
    base, s3, fr_forms, tags, art = rng.choice(L.PRES_VERBS)
    noun = rng.choice(_nouns_with(tags))
    en_v = s3 if idx == 2 else base
    if base == "like" and rng.random() < 0.4:
        adj = _adj_for(rng, noun)
        en_o, fr_o = L.noun_phrase("", noun, True, adj)  # generic bare plural -> les
        fr_o = ["les"] + fr_o
    else:
        # "need" takes de + determiner (j'ai besoin d'un livre, du pain): no bare/"some" plurals
        en_o, fr_o, *_ = _object_np(rng, noun, allow_bare=base != "need", allow_some=base != "need")
    en = f"{en_s} {en_v} {en_o}"
    fr = fr_s + fr_forms[idx].split() + fr_o
    return Item(sentence_case(en), ref=_fr_sentence(fr), family="st_pres")


def gen_loc(rng) -> Item:
    noun = rng.choice(_nouns_with("obj,animal"))
    plural = rng.random() < 0.4
    past = rng.random() < 0.3
    det = rng.choice(["the", "my", "your", "his", "her", "our", "their", "this"])
    adj = _adj_for(rng, noun, p=0.4)
    en_s, fr_s = L.noun_phrase(det, noun, plural, adj)
    idx = 5 if plural else 2
    en_pp, fr_pp, _ = _pp(rng)
    en = f"{en_s} {_en_be(idx, past)} {en_pp}"
    fr = fr_s + [(L.ETRE_IMPF if past else L.ETRE)[idx]] + fr_pp
    return Item(sentence_case(en), ref=_fr_sentence(fr), family="st_loc")


ST_FAMILIES = [(gen_past, 0.34), (gen_pred, 0.18), (gen_exist, 0.18), (gen_pres, 0.2), (gen_loc, 0.1)]


def gen_st(rng) -> Item:
    return _weighted(rng, ST_FAMILIES)(rng)


# ---------------------------------------------------------------- SLU (SLURP-like commands)
CITIES = ["London", "Paris", "Berlin", "Madrid", "Rome", "Tokyo", "Dublin", "Vienna", "Oslo", "Lisbon",
          "Athens", "Cairo", "Moscow", "Chicago", "Boston", "Sydney", "Toronto", "Dallas", "Seattle", "Denver"]
TIMES = ["six am", "seven am", "eight am", "nine am", "ten am", "noon", "one pm", "two pm", "three pm",
         "five pm", "six pm", "seven pm", "eight pm", "nine pm", "ten pm", "midnight", "six thirty",
         "seven thirty", "half past eight", "quarter to nine", "quarter past seven", "five fifteen"]
DATES = ["today", "tomorrow", "tonight", "this evening", "tomorrow morning", "on Monday", "on Tuesday",
         "on Wednesday", "on Thursday", "on Friday", "on Saturday", "on Sunday", "this weekend", "next week",
         "next Friday", "next Monday"]
GENRES = ["jazz", "rock", "pop", "classical", "country", "reggae", "blues", "folk", "dance", "piano"]
ARTISTS = ["Adele", "Madonna", "Queen", "Mozart", "Beethoven", "Elvis", "Shakira", "the Beatles",
           "Bob Marley", "Taylor Swift", "Michael Jackson", "Frank Sinatra"]
STATIONS = ["Radio One", "Radio Two", "the news station", "the sports station", "jazz radio", "classic radio"]
ROOMS = ["kitchen", "bedroom", "bathroom", "living room", "garden", "hall", "office", "garage"]
DURATIONS = ["five minutes", "ten minutes", "fifteen minutes", "twenty minutes", "thirty minutes", "one hour",
             "two hours", "half an hour", "three minutes", "forty minutes"]
ITEMS = ["milk", "bread", "eggs", "apples", "bananas", "cheese", "butter", "rice", "coffee", "tea", "sugar",
         "tomatoes", "potatoes", "carrots", "onions", "soap", "chicken", "pasta", "orange juice", "cookies"]
LISTS = ["shopping", "grocery", "todo", "party", "holiday"]
FOODS = ["pizza", "burger", "curry", "salad", "sandwich", "soup", "noodles", "sushi", "chicken wings", "pasta"]
RESTAURANTS = ["Pizza Palace", "the Golden Dragon", "the corner cafe", "Burger Town", "the Indian restaurant",
               "the noodle bar"]
CONTACTS = ["Tom", "Anna", "Paul", "Maria", "Peter", "Lucy", "David", "Emma", "John", "Sarah", "mum", "dad",
            "my boss", "my sister", "my brother", "the doctor"]
TOPICS = ["the meeting", "the party", "dinner", "the project", "the holiday", "the weekend", "the report",
          "the tickets", "the football match", "the concert"]
NEWS = ["sports", "politics", "business", "science", "technology", "weather", "music", "health", "travel"]
DISHES = ["pancakes", "tomato soup", "apple pie", "pasta", "chocolate cake", "fried rice", "an omelette",
          "banana bread", "lemon chicken", "vegetable curry"]
DESTS = ["the airport", "the station", "the hospital", "the museum", "the office", "the city centre",
         "the hotel", "the beach", "the stadium", "the park"]
ACTIVITIES = ["call mum", "buy milk", "water the plants", "pay the bills", "feed the cat", "take my medicine",
              "book the tickets", "clean the kitchen", "walk the dog", "send the report"]
LEVELS = ["five", "six", "seven", "eight", "ten", "maximum"]

# intent -> list of (template, question?) ; slots are {name} fields, filled from SLOT_VALUES
SLU_TEMPLATES = {
    "set_alarm": ["set an alarm for {time}", "wake me up at {time} {date}", "please set an alarm at {time} {date}",
                  "I need an alarm at {time}", "set my alarm for {time} {date}"],
    "cancel_alarm": ["cancel my alarm for {time}", "remove the {time} alarm", "turn off my alarm {date}",
                     "delete the alarm for {time} {date}", "cancel all my alarms {date}"],
    "play_music": ["play some {genre} music", "play a song by {artist}", "I want to listen to {artist}",
                   "put on some {genre}", "play my {genre} playlist", "play the latest songs by {artist}"],
    "play_radio": ["play {station}", "turn on the radio", "put on {station} please", "switch the radio to {station}",
                   "I want to listen to {station}"],
    "weather_query": ["what is the weather like in {city} {date}?", "will it rain {date}?",
                      "is it going to be sunny in {city} {date}?", "do I need an umbrella {date}?",
                      "how cold will it be in {city} {date}?", "tell me the weather for {date}"],
    "lights_on": ["turn on the lights in the {room}", "switch on the {room} lights", "lights on in the {room} please",
                  "make the {room} brighter"],
    "lights_off": ["turn off the lights in the {room}", "switch off the {room} lights", "lights off in the {room}",
                   "make the {room} dark"],
    "volume_up": ["turn the volume up", "make it louder please", "increase the volume to {level}",
                  "I cannot hear it turn it up", "volume up to {level}"],
    "volume_down": ["turn the volume down", "make it quieter please", "lower the volume to {level}",
                    "it is too loud turn it down", "volume down to {level}"],
    "set_timer": ["set a timer for {duration}", "start a {duration} timer", "time {duration} for me",
                  "count down {duration} please"],
    "add_to_list": ["add {item} to my {list} list", "put {item} on the {list} list", "remember to buy {item}",
                    "please add {item} to the {list} list"],
    "order_food": ["order a {food} from {restaurant}", "I want to order {food} for dinner",
                   "get me some {food} from {restaurant}", "order {food} for {time}"],
    "send_email": ["send an email to {contact} about {topic}", "email {contact} about {topic}",
                   "write an email to {contact} {date}", "tell {contact} by email that I will be late"],
    "calendar_event": ["remind me to {activity} {date}", "schedule a meeting with {contact} {date} at {time}",
                       "add {topic} to my calendar for {date}", "put a reminder to {activity} at {time}"],
    "news_query": ["what is the latest {news} news?", "tell me the {news} news", "read me the {news} headlines",
                   "what happened in {city} {date}?", "any {news} news {date}?"],
    "time_query": ["what time is it in {city}?", "what is the date {date}?", "what time is it now?",
                   "what day is it {date}?", "tell me the time in {city}"],
    "call_contact": ["call {contact}", "phone {contact} now", "please ring {contact}", "make a call to {contact}",
                     "call {contact} {date} at {time}"],
    "book_taxi": ["book a taxi to {dest} at {time}", "get me a taxi to {dest}", "I need a taxi to {dest} {date}",
                  "order a taxi for {time}"],
    "tell_joke": ["tell me a joke", "say something funny", "tell me a joke about {topic}", "make me laugh please",
                  "do you know a good joke?"],
    "cooking_recipe": ["how do I make {dish}?", "give me a recipe for {dish}", "how long do I cook {dish}?",
                       "show me how to cook {dish}"],
}
INTENTS = sorted(SLU_TEMPLATES)
SLOT_VALUES = {"time": TIMES, "date": DATES, "genre": GENRES, "artist": ARTISTS, "station": STATIONS,
               "city": CITIES, "room": ROOMS, "level": LEVELS, "duration": DURATIONS, "item": ITEMS,
               "list": LISTS, "food": FOODS, "restaurant": RESTAURANTS, "contact": CONTACTS, "topic": TOPICS,
               "news": NEWS, "dish": DISHES, "dest": DESTS, "activity": ACTIVITIES}


SLU_PREFIXES = ["please", "hey", "okay", "now"]
SLU_SUFFIXES = ["please", "now", "for me", "right now", "thanks"]


def gen_slu(rng) -> Item:
    intent = rng.choice(INTENTS)
    tpl = rng.choice(SLU_TEMPLATES[intent])
    slots = {}
    for name in re.findall(r"\{(\w+)\}", tpl):
        slots[name] = rng.choice(SLOT_VALUES[name])
    text = tpl.format(**slots)
    # SLURP-like spoken variation; widens the pool so ASR keeps sentences after the task sets are drawn
    if not text.endswith("?"):
        if rng.random() < 0.3 and not text.startswith("please"):
            text = f"{rng.choice(SLU_PREFIXES)} {text}"
        if rng.random() < 0.3 and not text.endswith("please"):
            text = f"{text} {rng.choice(SLU_SUFFIXES)}"
    return Item(sentence_case(text), ref=intent, slots=slots, family="slu")


# ---------------------------------------------------------------- SQQA (spoken questions with known answers)
CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
            ("England", "London"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"),
            ("China", "Beijing"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
            ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"),
            ("Thailand", "Bangkok"), ("South Korea", "Seoul"), ("Kenya", "Nairobi"), ("Cuba", "Havana"),
            ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Turkey", "Ankara"), ("Finland", "Helsinki"),
            ("Hungary", "Budapest"), ("Scotland", "Edinburgh"), ("Mexico", "Mexico City"), ("India", "New Delhi")]
COLOURS_OF = [("the sky", "is", "blue"), ("grass", "is", "green"), ("snow", "is", "white"),
              ("a banana", "is", "yellow"),
              ("milk", "is", "white"), ("coal", "is", "black"), ("a lemon", "is", "yellow"), ("a tomato", "is", "red"),
              ("blood", "is", "red"), ("chocolate", "is", "brown"), ("a carrot", "is", "orange"),
              ("the sun", "is", "yellow"), ("a strawberry", "is", "red"), ("a frog", "is", "green"),
              ("leaves", "are", "green"), ("clouds", "are", "white"), ("bananas", "are", "yellow"),
              ("the sea", "is", "blue"), ("an orange", "is", "orange"), ("a cherry", "is", "red")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("happy", "sad"), ("fast", "slow"), ("day", "night"),
             ("black", "white"), ("old", "new"), ("open", "closed"), ("wet", "dry"), ("tall", "short"),
             ("light", "dark"), ("good", "bad"), ("full", "empty"), ("left", "right"), ("early", "late"),
             ("clean", "dirty"), ("hard", "soft"), ("rich", "poor"), ("strong", "weak"), ("loud", "quiet"),
             ("win", "lose"), ("yes", "no"), ("inside", "outside"), ("heavy", "light"), ("thick", "thin"),
             ("cheap", "expensive"), ("love", "hate"), ("first", "last"), ("true", "false"), ("begin", "end"),
             ("asleep", "awake"), ("push", "pull"), ("buy", "sell"), ("arrive", "leave"), ("never", "always")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
NUM_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
             "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
FACTS = [("how many days are there in a week?", "seven"), ("how many months are there in a year?", "twelve"),
         ("how many legs does a spider have?", "eight"), ("how many legs does a dog have?", "four"),
         ("how many legs does a bird have?", "two"), ("how many hours are there in a day?", "twenty four"),
         ("how many minutes are there in an hour?", "sixty"), ("which animal says moo?", "cow"),
         ("which animal barks?", "dog"), ("what do bees make?", "honey"), ("what do cows drink?", "water"),
         ("what is frozen water called?", "ice"), ("which planet do we live on?", "Earth"),
         ("what is the largest ocean?", "Pacific"), ("how many wheels does a bicycle have?", "two"),
         ("which season comes after winter?", "spring"), ("which season comes after summer?", "autumn"),
         ("what do we call a baby cat?", "kitten"), ("what do we call a baby dog?", "puppy"),
         ("how many sides does a triangle have?", "three"), ("how many sides does a square have?", "four")]


def _sqqa_capital(rng):
    c, a = rng.choice(CAPITALS)
    tpl = rng.choice(["what is the capital of {c}?", "what is the capital city of {c}?",
                      "which city is the capital of {c}?", "can you tell me the capital of {c}?",
                      "do you know the capital of {c}?", "name the capital of {c}"])
    return tpl.format(c=c), a


def _sqqa_colour(rng):
    thing, be, a = rng.choice(COLOURS_OF)
    tpl = rng.choice(["what colour {be} {t}?", "what is the colour of {t}?", "which colour {be} {t}?",
                      "tell me the colour of {t}"])
    return tpl.format(be=be, t=thing), a


def _sqqa_opposite(rng):
    w, o = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        w, o = o, w
    tpl = rng.choice(["what is the opposite of {w}?", "what is the opposite of the word {w}?",
                      "which word means the opposite of {w}?", "tell me the opposite of {w}"])
    return tpl.format(w=w), o


def _sqqa_arith(rng):
    op = rng.choice(["plus", "minus", "times"])
    if op == "plus":
        a, b = rng.randint(1, 10), rng.randint(1, 10)
        r = a + b
    elif op == "minus":
        a = rng.randint(2, 20)
        b = rng.randint(1, min(a, 10))
        r = a - b
    else:
        a, b = rng.randint(1, 5), rng.randint(1, 4)
        r = a * b
    tpl = rng.choice(["what is {a} {op} {b}?", "how much is {a} {op} {b}?", "what does {a} {op} {b} make?"])
    return tpl.format(a=NUM_WORDS[a], op=op, b=NUM_WORDS[b]), NUM_WORDS[r]


def _sqqa_order(rng):
    seq, kind = (DAYS, "day") if rng.random() < 0.45 else (MONTHS, "month")
    i = rng.randrange(len(seq))
    if rng.random() < 0.5:
        tpl = rng.choice(["what {k} comes after {x}?", "which {k} is after {x}?", "what is the {k} after {x}?"])
        ans = seq[(i + 1) % len(seq)]
    else:
        tpl = rng.choice(["what {k} comes before {x}?", "which {k} is before {x}?", "what is the {k} before {x}?"])
        ans = seq[(i - 1) % len(seq)]
    return tpl.format(k=kind, x=seq[i]), ans


LEGS = [("spider", "eight"), ("dog", "four"), ("cat", "four"), ("horse", "four"), ("cow", "four"), ("bird", "two"),
        ("duck", "two"), ("chicken", "two"), ("bee", "six"), ("ant", "six"), ("octopus", "eight"), ("sheep", "four")]


def _sqqa_fact(rng):
    if rng.random() < 0.4:
        animal, n = rng.choice(LEGS)
        tpl = rng.choice(["how many legs does a {a} have?", "how many legs has a {a} got?"])
        return tpl.format(a=animal), n
    return rng.choice(FACTS)


# Declarative forms of the SQQA knowledge (ASR only): same words as the questions, different sentences.
FACT_STATEMENTS = ["there are seven days in a week", "there are twelve months in a year", "a spider has eight legs",
                   "there are twenty four hours in a day", "there are sixty minutes in an hour",
                   "a cow says moo", "a dog barks", "bees make honey", "cows drink water", "frozen water is called ice",
                   "we live on planet Earth", "the Pacific is the largest ocean", "a bicycle has two wheels",
                   "spring comes after winter", "autumn comes after summer", "a baby cat is called a kitten",
                   "a baby dog is called a puppy", "a triangle has three sides", "a square has four sides"]


def gen_fact_statement(rng) -> Item:
    r = rng.random()
    if r < 0.2:
        c, a = rng.choice(CAPITALS)
        t = rng.choice(["{a} is the capital of {c}", "the capital of {c} is {a}", "the capital city of {c} is {a}"])
        text = t.format(a=a, c=c)
    elif r < 0.35:
        thing, be, a = rng.choice(COLOURS_OF)
        text = rng.choice([f"{thing} {be} {a}", f"the colour of {thing} is {a}"])
    elif r < 0.5:
        w, o = rng.choice(OPPOSITES)
        text = rng.choice([f"the opposite of {w} is {o}", f"{o} is the opposite of {w}",
                           f"the word {w} means the opposite of {o}"])
    elif r < 0.7:
        q, a = _sqqa_arith(rng)
        expr = re.sub(r"^(what is|how much is|what does) ", "", q).rstrip("?").replace(" make", "")
        text = rng.choice([f"{expr} is {a}", f"{expr} makes {a}", f"{expr} equals {a}"])
    elif r < 0.85:
        seq, kind = (DAYS, "day") if rng.random() < 0.45 else (MONTHS, "month")
        i = rng.randrange(len(seq))
        nxt, prv = seq[(i + 1) % len(seq)], seq[(i - 1) % len(seq)]
        text = rng.choice([f"{nxt} comes after {seq[i]}", f"{prv} comes before {seq[i]}",
                           f"the {kind} after {seq[i]} is {nxt}", f"the {kind} before {seq[i]} is {prv}"])
    else:
        if rng.random() < 0.5:
            animal, n = rng.choice(LEGS)
            text = f"a {animal} has {n} legs"
        else:
            text = rng.choice(FACT_STATEMENTS)
    return Item(sentence_case(text), family="sqqa_fact")


SQQA_FAMILIES = [(_sqqa_capital, 0.22), (_sqqa_colour, 0.14), (_sqqa_opposite, 0.18), (_sqqa_arith, 0.22),
                 (_sqqa_order, 0.16), (_sqqa_fact, 0.08)]


def gen_sqqa(rng) -> Item:
    q, a = _weighted(rng, SQQA_FAMILIES)(rng)
    return Item(sentence_case(q), ref=a, family="sqqa")


# ---------------------------------------------------------------- SQA (statement + text question)
SQA_VERBS = [("bought", "buy"), ("found", "find"), ("sold", "sell"), ("painted", "paint"), ("washed", "wash"),
             ("carried", "carry"), ("brought", "bring"), ("lost", "lose"), ("kept", "keep"), ("took", "take"),
             ("chose", "choose"), ("hid", "hide"), ("cleaned", "clean"), ("borrowed", "borrow")]
AGES = NUM_WORDS[5:13] + ["twenty", "thirty", "forty", "fifty", "sixty", "seventy"]
COLOUR_ADJS = [a.en for a in L.ADJS if "colour" in a.tags]


def _time_answer(t: str) -> str:
    return t[3:] if t.startswith("on ") else t


def _sqa_buy(rng):
    name, _ = rng.choice(L.NAMES)
    past, base = rng.choice(SQA_VERBS)
    noun = rng.choice(_nouns_with("obj"))
    num = rng.randint(2, 9)
    col = rng.choice(COLOUR_ADJS)
    pl = noun.en_pl
    time = rng.choice(L.PAST_TIMES)[0] if rng.random() < 0.5 else ""
    st = f"{name} {past} {NUM_WORDS[num]} {col} {pl} {time}"
    qs = [(f"What colour were the {pl}?", col), (f"How many {pl} did {name} {base}?", NUM_WORDS[num]),
          (f"Who {past} the {pl}?", name), (f"What did {name} {base}?", f"{col} {pl}")]
    if time:
        qs.append((f"When did {name} {base} the {pl}?", _time_answer(time)))
    return st, rng.choice(qs)


def _sqa_where(rng):
    noun = rng.choice(_nouns_with("obj,animal"))
    en_pp, _, _ = _pp(rng)
    col = rng.choice(COLOUR_ADJS)
    plural = rng.random() < 0.3
    n = noun.en_pl if plural else noun.en
    st = f"the {col} {n} {'are' if plural else 'is'} {en_pp}"
    qs = [(f"Where {'are' if plural else 'is'} the {n}?", en_pp),
          (f"What colour {'are' if plural else 'is'} the {n}?", col)]
    return st, rng.choice(qs)


def _sqa_went(rng):
    (a, _), (b, _) = rng.sample(L.NAMES, 2)
    place = rng.choice(_nouns_with("visit"))
    day = rng.choice(DAYS)
    st = f"{a} went to the {place.en} with {b} on {day}"
    qs = [(f"Where did {a} go?", f"the {place.en}"), (f"Who went to the {place.en} with {a}?", b),
          (f"On which day did {a} go to the {place.en}?", day)]
    return st, rng.choice(qs)


def _sqa_has(rng):
    name, _ = rng.choice(L.NAMES)
    a1, a2 = rng.sample(_nouns_with("animal"), 2)
    n1, n2 = rng.randint(2, 9), rng.randint(2, 9)
    st = f"{name} has {NUM_WORDS[n1]} {a1.en_pl} and {NUM_WORDS[n2]} {a2.en_pl}"
    q = rng.choice([(f"How many {a1.en_pl} does {name} have?", NUM_WORDS[n1]),
                    (f"How many {a2.en_pl} does {name} have?", NUM_WORDS[n2])])
    return st, q


def _sqa_age(rng):
    name, _ = rng.choice(L.NAMES)
    age = rng.choice(AGES)
    city = rng.choice(CITIES)
    st = f"{name} is {age} years old and lives in {city}"
    q = rng.choice([(f"How old is {name}?", age), (f"Where does {name} live?", city)])
    return st, q


def _sqa_gave(rng):
    (a, _), (b, _) = rng.sample(L.NAMES, 2)
    noun = rng.choice(_nouns_with("obj"))
    col = rng.choice(COLOUR_ADJS)
    en_np, _ = L.noun_phrase("a", noun, False, next(x for x in L.ADJS if x.en == col))
    st = f"{a} gave {b} {en_np}"
    qs = [(f"What did {a} give {b}?", noun.en), (f"Who gave {b} the {noun.en}?", a),
          (f"What colour was the {noun.en}?", col), (f"Who got the {noun.en}?", b)]
    return st, rng.choice(qs)


def _sqa_belongs(rng):
    name, _ = rng.choice(L.NAMES)
    noun = rng.choice(_nouns_with("obj,animal"))
    col = rng.choice(COLOUR_ADJS)
    st = f"the {col} {noun.en} belongs to {name}"
    qs = [(f"Who owns the {noun.en}?", name), (f"What colour is {name}'s {noun.en}?", col)]
    return st, rng.choice(qs)


SQA_FAMILIES = [(_sqa_buy, 0.25), (_sqa_where, 0.15), (_sqa_went, 0.15), (_sqa_has, 0.12), (_sqa_age, 0.1),
                (_sqa_gave, 0.13), (_sqa_belongs, 0.1)]


def gen_sqa(rng) -> Item:
    st, (q, a) = _weighted(rng, SQA_FAMILIES)(rng)
    return Item(sentence_case(st), ref=a, question=q, family="sqa")


# ---------------------------------------------------------------- corpus assembly
TASK_GEN = {"st": gen_st, "slu": gen_slu, "sqqa": gen_sqqa, "sqa": gen_sqa}
# ASR draws from every family so that task speech is "in domain" for the recogniser.
ASR_MIX = [(gen_st, 0.48), (gen_slu, 0.18), (gen_sqqa, 0.08), (gen_fact_statement, 0.08), (gen_sqa, 0.18)]
# generators that can produce the words of each family (coverage pass)
FAMILY_GENS = {"st": [gen_st], "slu": [gen_slu], "sqqa": [gen_sqqa, gen_fact_statement], "sqa": [gen_sqa]}
MIN_TRAIN_COUNT = 3


def _weighted(rng, pairs):
    r = rng.random() * sum(w for _, w in pairs)
    for f, w in pairs:
        r -= w
        if r <= 0:
            return f
    return pairs[-1][0]


def _draw(rng, gen, n, used: set, what: str) -> list[Item]:
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise RuntimeError(f"mini_en: could not draw {n} distinct sentences for {what} (got {len(out)})")
        it = gen(rng)
        k = norm_key(it.text)
        if k in used or not (MIN_WORDS <= n_words(it.text) <= MAX_WORDS):
            continue
        used.add(k)
        out.append(it)
    return out


def generate(seed: int = 0, sizes: dict | None = None, cover: bool = True, open_vocab: float = 0.0,
             heldout: int = 0) -> dict[str, list[Item]]:
    """All sets as {set_name: [Item]}; task sets are drawn first so that ASR sentences avoid them.
    cover: append the coverage sentences to train (see _cover).
    open_vocab: this fraction of train is WordNet example sentences (w2p.synth.wordnet) instead of the pattern
    families; the coverage pass is then off (open vocabulary: a test word need not occur in training).
    heldout: also a ``test_heldout`` set of this many WordNet sentences, each with words never in training.
    With both off (the default) the corpus is the original one, draw for draw."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    if not 0.0 <= open_vocab <= 1.0:
        raise ValueError(f"open_vocab is a fraction of train in [0, 1], got {open_vocab}")
    n_open = round(open_vocab * sizes["train"])
    rng = random.Random(seed)
    used: set = set()
    out: dict[str, list[Item]] = {}
    for task in TASKS:
        for split in ("test", "fewshot"):
            name = f"{task}_{split}"
            out[name] = _draw(rng, TASK_GEN[task], sizes[name], used, name)
    for name in ("test", "dev", "train"):
        n = sizes[name] - (n_open if name == "train" else 0)
        out[name] = _draw(rng, lambda r: _weighted(r, ASR_MIX)(r), n, used, name)
    if cover and not n_open:
        out["train"] += _cover(rng, out, used)
    if n_open or heldout:
        _add_open(seed, out, used, n_open, heldout)
    return {k: out[k] for k in ALL_SETS + (("test_heldout",) if heldout else ())}


HELDOUT_SET = "test_heldout"
# the task sets on HELDOUT_SET (name <task>_<test set>) -> the set whose items they are: the same questions and
# answers as the in-domain set, spoken by the held-out engines only (w2p.synth.make_corpus draws their voices)
HELDOUT_TASK_SETS = {f"sqqa_{HELDOUT_SET}": "sqqa_test"}


def _add_open(seed: int, out: dict, used: set, n_open: int, n_heldout: int) -> None:
    """Held-out sentences first, from the WordNet pool: each has >= 1 word outside every pattern-family sentence
    of the corpus, and all such words (H) are then barred from train; then n_open WordNet training sentences
    without any word of H. So test_heldout shares no sentence with train and every word it has that train lacks
    is new. Its own RNG: the pattern-family draws above stay those of the original corpus."""
    from w2p.synth import wordnet

    rng = random.Random(f"mini_en-open-{seed}")
    pool = list(wordnet.sentences())
    rng.shuffle(pool)
    family_vocab = vocabulary(out)
    held: list[Item] = []
    barred: set = set()
    it = iter(pool)
    for s in it:
        if len(held) >= n_heldout:
            break
        new = set(_words(s)) - family_vocab
        if new and norm_key(s) not in used:
            used.add(norm_key(s))
            barred |= new
            held.append(Item(s, family="heldout"))
    train: list[Item] = []
    for s in it:
        if len(train) >= n_open:
            break
        if norm_key(s) not in used and not barred & set(_words(s)):
            used.add(norm_key(s))
            train.append(Item(s, family="wordnet"))
    if len(held) < n_heldout or len(train) < n_open:
        raise RuntimeError(f"mini_en: the WordNet pool ({len(pool)} sentences) gave {len(held)}/{n_heldout} held-out "
                           f"and {len(train)}/{n_open} open-vocabulary training sentences; ask for fewer")
    out["train"] += train
    if n_heldout:
        out[HELDOUT_SET] = held


def _words(text: str) -> list[str]:
    return [w.lower().strip("?") for w in text.split()]


# Fallback frames for a word whose own patterns are used up (small closed sets such as country names):
# the word is spoken in a neutral carrier sentence, which is enough for the recogniser to learn it.
WORD_FRAMES = ["{n} wrote the word {w} on the board", "{n} said the word {w} {t}", "please spell the word {w}",
               "the next word is {w}", "{n} can read the word {w}", "the word {w} is on the list",
               "{n} heard the word {w} {t}", "{n} asked about the word {w}"]


def _cover(rng, sets: dict, used: set, min_count: int = MIN_TRAIN_COUNT, max_tries: int = 400) -> list[Item]:
    """Extra training sentences so that every word spoken in a task/dev/test set occurs >= min_count times
    in train: Wav2Prompt only ever learns from ASR data, so a task word it never heard cannot be prompted."""
    from collections import Counter

    counts = Counter(w for it in sets["train"] for w in _words(it.text))
    need: dict[str, str] = {}
    surface: dict[str, str] = {}
    for name, items in sets.items():
        for it in items:
            fam = it.family.split("_")[0]
            for i, raw in enumerate(it.text.rstrip("?").split()):
                w = raw.lower()
                if i > 0 or w not in surface:
                    surface[w] = raw if i > 0 else raw.lower()  # casing as seen inside a sentence
                if name != "train":
                    need.setdefault(w, fam)
    extra: list[Item] = []

    def add(it: Item) -> bool:
        k = norm_key(it.text)
        if k in used or not (MIN_WORDS <= n_words(it.text) <= MAX_WORDS):
            return False
        used.add(k)
        extra.append(it)
        counts.update(_words(it.text))
        return True

    for w in sorted(need):
        gens = FAMILY_GENS[need[w]]
        tries = 0
        while counts[w] < min_count and tries < max_tries:
            tries += 1
            it = rng.choice(gens)(rng)
            if w in _words(it.text):
                add(it)
        tries = 0
        while counts[w] < min_count and tries < max_tries:
            tries += 1
            frame = rng.choice(WORD_FRAMES)
            text = frame.format(n=rng.choice(L.NAMES)[0], w=surface.get(w, w), t=rng.choice(L.PAST_TIMES)[0])
            add(Item(sentence_case(text), family="word_frame"))
    return extra


def vocabulary(sets: dict[str, list[Item]]) -> set[str]:
    """Distinct spoken words (case-folded, '?' stripped) over all sets."""
    words = set()
    for items in sets.values():
        for it in items:
            words.update(_words(it.text))
    return words
