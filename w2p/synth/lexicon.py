"""English-French lexicon and French agreement rules used by the mini_en text generator.

The tables are written by hand (not copied) as compact ``|``-separated rows so that the
French side carries gender and irregular plurals; the functions below render noun phrases
with correct determiners, elision (l', j'), prenominal/postnominal adjective placement and
gender/number agreement, which is what makes the ST references correct French.
"""
from __future__ import annotations

from dataclasses import dataclass

VOWELS_FR = set("aeiouyhàâéèêëîïôûœ")


@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    fr: str
    fr_pl: str
    g: str  # French gender: "m" or "f"
    tags: frozenset


@dataclass(frozen=True)
class Adj:
    en: str
    ms: str
    fs: str
    mp: str
    fp: str
    pre: bool  # placed before the noun in French (BAGS adjectives)
    tags: frozenset
    ms_vowel: str = ""  # masculine singular before a vowel (vieil, nouvel, bel)

    def form(self, g: str, plural: bool, next_word: str = "") -> str:
        if plural:
            return self.fp if g == "f" else self.mp
        if g == "f":
            return self.fs
        if self.ms_vowel and next_word and next_word[0] in VOWELS_FR:
            return self.ms_vowel
        return self.ms


def _plural_fr(w: str) -> str:
    if w.endswith(("s", "x", "z")):
        return w
    if w.endswith(("eau", "eu")):
        return w + "x"
    if w.endswith("al"):
        return w[:-2] + "aux"
    return w + "s"


def _plural_en(w: str) -> str:
    if w.endswith(("s", "x", "ch", "sh")):
        return w + "es"
    if w.endswith("y") and w[-2] not in "aeiou":
        return w[:-1] + "ies"
    return w + "s"


# en | en plural ("" = regular) | fr | fr plural ("" = regular) | gender | tags
_NOUNS = """
apple||pomme||f|food,fruit,obj
banana||banane||f|food,fruit,obj
orange||orange||f|food,fruit,obj
lemon||citron||m|food,fruit,obj
pear||poire||f|food,fruit,obj
strawberry||fraise||f|food,fruit,obj
cherry||cerise||f|food,fruit,obj
peach|peaches|pêche||f|food,fruit,obj
melon||melon||m|food,fruit,obj
tomato|tomatoes|tomate||f|food,veg,obj
potato|potatoes|pomme de terre|pommes de terre|f|food,veg,obj
carrot||carotte||f|food,veg,obj
onion||oignon||m|food,veg,obj
mushroom||champignon||m|food,veg,obj
cucumber||concombre||m|food,veg,obj
egg||œuf||m|food,obj
cake||gâteau||m|food,obj
cookie||biscuit||m|food,obj
sandwich||sandwich||m|food,obj
pizza||pizza||f|food,obj
pie||tarte||f|food,obj
sausage||saucisse||f|food,obj
sweet||bonbon||m|food,obj
book||livre||m|obj,read
newspaper||journal||m|obj,read
magazine||magazine||m|obj,read
letter||lettre||f|obj,read,write
postcard||carte postale|cartes postales|f|obj,read,write
story|stories|histoire||f|obj,read,write
poem||poème||m|obj,read,write
pen||stylo||m|obj,small
pencil||crayon||m|obj,small
bag||sac||m|obj,open,container
box|boxes|boîte||f|obj,open,container
basket||panier||m|obj,container
bottle||bouteille||f|obj,open,small
jar||pot||m|obj,open,small
cup||tasse||f|obj,small
glass|glasses|verre||m|obj,small
plate||assiette||f|obj,small
bowl||bol||m|obj,small
spoon||cuillère||f|obj,small
fork||fourchette||f|obj,small
knife|knives|couteau||m|obj,small
hat||chapeau||m|obj,wear
shoe||chaussure||f|obj,wear
shirt||chemise||f|obj,wear
dress|dresses|robe||f|obj,wear
coat||manteau||m|obj,wear
jacket||veste||f|obj,wear
sock||chaussette||f|obj,wear
scarf|scarves|écharpe||f|obj,wear
umbrella||parapluie||m|obj,open
ball||ballon||m|obj,toy
toy||jouet||m|obj,toy
doll||poupée||f|obj,toy
kite||cerf-volant|cerfs-volants|m|obj,toy
bicycle||vélo||m|obj,vehicle
car||voiture||f|obj,vehicle,container
truck||camion||m|obj,vehicle
boat||bateau||m|obj,vehicle
key||clé||f|obj,small
phone||téléphone||m|obj
computer||ordinateur||m|obj
lamp||lampe||f|obj,surface_no
clock||horloge||f|obj
watch|watches|montre||f|obj,wear,small
ring||bague||f|obj,wear,small
necklace||collier||m|obj,wear,small
wallet||portefeuille||m|obj,small
guitar||guitare||f|obj
piano||piano||m|obj
drum||tambour||m|obj
radio||radio||f|obj
candle||bougie||f|obj,small
mirror||miroir||m|obj
picture||photo||f|obj
painting||tableau||m|obj
ticket||billet||m|obj,small
map||carte||f|obj,read
gift||cadeau||m|obj,open
envelope||enveloppe||f|obj,open,small
notebook||cahier||m|obj,read,write
towel||serviette||f|obj
blanket||couverture||f|obj
pillow||oreiller||m|obj
brush|brushes|brosse||f|obj,small
ladder||échelle||f|obj
hammer||marteau||m|obj
rope||corde||f|obj
flower||fleur||f|obj,plant
rose||rose||f|obj,plant
leaf|leaves|feuille||f|obj,plant
stone||pierre||f|obj
shell||coquillage||m|obj
feather||plume||f|obj
table||table||f|furniture,surface
chair||chaise||f|furniture,surface
bed||lit||m|furniture,surface
sofa||canapé||m|furniture,surface
shelf|shelves|étagère||f|furniture,surface
desk||bureau||m|furniture,surface
drawer||tiroir||m|furniture,container
fridge||frigo||m|furniture,container
cupboard||placard||m|furniture,container
door||porte||f|furniture,open,near
window||fenêtre||f|furniture,open,near
tree||arbre||m|near,plant
wall||mur||m|near
kitchen||cuisine||f|place,room
garden||jardin||m|place,room
bedroom||chambre||f|place,room
bathroom||salle de bain|salles de bain|f|place,room
living room||salon||m|place,room
house||maison||f|place,near
school||école||f|place,visit
park||parc||m|place,visit
shop||magasin||m|place,visit
market||marché||m|place,visit
station||gare||f|place,visit
library|libraries|bibliothèque||f|place,visit
hospital||hôpital||m|place,visit
bank||banque||f|place,visit
church|churches|église||f|place,visit
museum||musée||m|place,visit
beach|beaches|plage||f|place,visit
forest||forêt||f|place,visit
river||rivière||f|place,visit
lake||lac||m|place,visit
mountain||montagne||f|place,visit
village||village||m|place,visit
city|cities|ville||f|place,visit
bridge||pont||m|place,visit
farm||ferme||f|place,visit
zoo||zoo||m|place,visit
restaurant||restaurant||m|place,visit
hotel||hôtel||m|place,visit
airport||aéroport||m|place,visit
castle||château||m|place,visit
island||île||f|place,visit
dog||chien||m|animal
cat||chat||m|animal
horse||cheval||m|animal
cow||vache||f|animal
bird||oiseau||m|animal
fish|fish|poisson||m|animal
mouse|mice|souris|souris|f|animal
rabbit||lapin||m|animal
duck||canard||m|animal
sheep|sheep|mouton||m|animal
pig||cochon||m|animal
goat||chèvre||f|animal
hen||poule||f|animal
lion||lion||m|animal
tiger||tigre||m|animal
bear||ours|ours|m|animal
wolf|wolves|loup||m|animal
fox|foxes|renard||m|animal
frog||grenouille||f|animal
snake||serpent||m|animal
monkey||singe||m|animal
elephant||éléphant||m|animal
spider||araignée||f|animal
bee||abeille||f|animal
turtle||tortue||f|animal
donkey||âne||m|animal
whale||baleine||f|animal
dolphin||dauphin||m|animal
giraffe||girafe||f|animal
kitten||chaton||m|animal
puppy|puppies|chiot||m|animal
parrot||perroquet||m|animal
squirrel||écureuil||m|animal
boy||garçon||m|person
girl||fille||f|person
man|men|homme||m|person
woman|women|femme||f|person
teacher||professeur||m|person
doctor||médecin||m|person
brother||frère||m|person,family
sister||sœur||f|person,family
mother||mère||f|person,family
father||père||m|person,family
friend||ami||m|person,family
neighbour||voisin||m|person
child|children|enfant||m|person
baby|babies|bébé||m|person
student||étudiant||m|person
farmer||fermier||m|person
driver||chauffeur||m|person
cook||cuisinier||m|person
nurse||infirmière||f|person
king||roi||m|person
queen||reine||f|person
uncle||oncle||m|person,family
aunt||tante||f|person,family
grandmother||grand-mère|grands-mères|f|person,family
grandfather||grand-père|grands-pères|m|person,family
cousin||cousin||m|person,family
waiter||serveur||m|person
singer||chanteur||m|person
baker||boulanger||m|person
artist||artiste||m|person
soldier||soldat||m|person
pilot||pilote||m|person
guest||invité||m|person
"""

# en | m sg | f sg ("" = +e) | m pl ("" = +s) | f pl ("" = f sg+s) | pre/post | tags | m sg before vowel
_ADJS = """
red|rouge||||post|colour
blue|bleu||||post|colour
green|vert||||post|colour
black|noir||||post|colour
white|blanc|blanche|||post|colour
yellow|jaune||||post|colour
brown|marron|marron|marron|marron|post|colour
grey|gris|grise|gris||post|colour
pink|rose||||post|colour
purple|violet|violette|||post|colour
big|grand||||pre|size,person_ok
small|petit||||pre|size,person_ok
old|vieux|vieille|vieux|vieilles|pre|quality,person_ok|vieil
new|nouveau|nouvelle|nouveaux|nouvelles|pre|quality|nouvel
beautiful|beau|belle|beaux|belles|pre|quality|bel
pretty|joli||||pre|quality
young|jeune||||pre|person_only
good|bon|bonne|||pre|quality
long|long|longue|||pre|size
hot|chaud||||post|state
cold|froid||||post|state
clean|propre||||post|state
dirty|sale||||post|state
heavy|lourd||||post|state
light|léger|légère|||post|state
expensive|cher|chère|||post|state
cheap|bon marché|bon marché|bon marché|bon marché|post|state
broken|cassé||||post|state
empty|vide||||post|state
full|plein||||post|state
round|rond||||post|state
soft|doux|douce|doux||post|state
wet|mouillé||||post|state
dry|sec|sèche|secs||post|state
strange|étrange||||post|state
famous|célèbre||||post|quality,person_ok
modern|moderne||||post|state
wooden|en bois|en bois|en bois|en bois|post|state
happy|heureux|heureuse|heureux||post|feeling
sad|triste||||post|feeling
tired|fatigué||||post|feeling
sick|malade||||post|feeling
busy|occupé||||post|feeling
ready|prêt||||post|feeling
angry|fâché||||post|feeling
late|en retard|en retard|en retard|en retard|post|feeling
kind|gentil|gentille|||post|feeling
funny|drôle||||post|feeling
nervous|nerveux|nerveuse|nerveux||post|feeling
proud|fier|fière|||post|feeling
calm|calme||||post|feeling
lost|perdu||||post|feeling
quiet|silencieux|silencieuse|silencieux||post|feeling
"""

# en past | fr past participle (avoir) | object tags (any of)
_PAST_VERBS = """
bought|acheté|obj
saw|vu|obj,animal,person,furniture
ate|mangé|food
took|pris|obj
found|trouvé|obj,animal
sold|vendu|obj,animal,vehicle
washed|lavé|obj,animal,furniture
cooked|cuisiné|food
painted|peint|obj,furniture
opened|ouvert|open
closed|fermé|open
carried|porté|obj
brought|apporté|obj
read|lu|read
wrote|écrit|write
chose|choisi|obj
lost|perdu|obj
forgot|oublié|obj
fixed|réparé|obj,furniture
cleaned|nettoyé|obj,furniture
drew|dessiné|obj,animal,person
ordered|commandé|food
caught|attrapé|ball,animal
broke|cassé|small,toy
hid|caché|obj
borrowed|emprunté|obj
cut|coupé|food
kept|gardé|obj
fed|nourri|animal
followed|suivi|animal,person
met|rencontré|person
called|appelé|person,animal
visited|visité|visit
helped|aidé|person
heard|entendu|animal,person
liked|aimé|obj,food,animal
wanted|voulu|obj,food
"""

# en base | en 3sg | fr [je, tu, il, nous, vous, ils] | object tags | French article for bare plurals
_PRES_VERBS = """
like|likes|aime,aimes,aime,aimons,aimez,aiment|food,animal,obj|les
want|wants|veux,veux,veut,voulons,voulez,veulent|food,obj,animal|des
have|has|ai,as,a,avons,avez,ont|obj,animal|des
see|sees|vois,vois,voit,voyons,voyez,voient|obj,animal,person,furniture|des
need|needs|ai besoin de,as besoin de,a besoin de,avons besoin de,avez besoin de,ont besoin de|obj|de
"""

NAMES = [
    ("Tom", "m"), ("Anna", "f"), ("Paul", "m"), ("Maria", "f"), ("Peter", "m"), ("Lucy", "f"),
    ("David", "m"), ("Emma", "f"), ("John", "m"), ("Sarah", "f"), ("James", "m"), ("Julia", "f"),
    ("Mark", "m"), ("Laura", "f"), ("Simon", "m"), ("Sophie", "f"), ("Daniel", "m"), ("Alice", "f"),
    ("Robert", "m"), ("Helen", "f"), ("Michael", "m"), ("Kate", "f"), ("Oliver", "m"), ("Lisa", "f"),
    ("Henry", "m"), ("Clara", "f"), ("Victor", "m"), ("Nina", "f"), ("Leo", "m"), ("Rose", "f"),
    ("Hugo", "m"), ("Eva", "f"), ("Max", "m"), ("Linda", "f"), ("Sam", "m"), ("Mia", "f"),
]

# English subject pronoun, French pronoun, person index (0 je .. 5 ils), plural, gender
PRONOUNS = [
    ("I", "je", 0, False, "m"), ("you", "vous", 4, True, "m"), ("he", "il", 2, False, "m"),
    ("she", "elle", 2, False, "f"), ("we", "nous", 3, True, "m"), ("they", "ils", 5, True, "m"),
]

AVOIR = ["ai", "as", "a", "avons", "avez", "ont"]
ETRE = ["suis", "es", "est", "sommes", "êtes", "sont"]
ETRE_IMPF = ["étais", "étais", "était", "étions", "étiez", "étaient"]
EN_BE = {0: ("am", "was"), 2: ("is", "was"), 3: ("are", "were"), 4: ("are", "were"), 5: ("are", "were")}

NUMBERS = [
    ("one", "un"), ("two", "deux"), ("three", "trois"), ("four", "quatre"), ("five", "cinq"),
    ("six", "six"), ("seven", "sept"), ("eight", "huit"), ("nine", "neuf"), ("ten", "dix"),
    ("eleven", "onze"), ("twelve", "douze"),
]

# past time expressions: (en, fr)
PAST_TIMES = [
    ("yesterday", "hier"), ("this morning", "ce matin"), ("last night", "hier soir"),
    ("last week", "la semaine dernière"), ("this afternoon", "cet après-midi"),
    ("last summer", "l'été dernier"), ("two days ago", "il y a deux jours"), ("last month", "le mois dernier"),
    ("on Monday", "lundi"), ("on Tuesday", "mardi"), ("on Wednesday", "mercredi"), ("on Thursday", "jeudi"),
    ("on Friday", "vendredi"), ("on Saturday", "samedi"), ("on Sunday", "dimanche"),
]

# English preposition, French preposition ("de" contracts), location-noun tags
PREPS = [
    ("on", "sur", "surface"), ("under", "sous", "surface"), ("in", "dans", "container,room"),
    ("behind", "derrière", "near,furniture,surface"), ("in front of", "devant", "near,place"),
    ("near", "près de", "near,surface,place"), ("next to", "à côté de", "near,surface"),
]


def _parse_nouns() -> list[Noun]:
    out = []
    for row in _NOUNS.strip().splitlines():
        en, en_pl, fr, fr_pl, g, tags = row.split("|")
        out.append(Noun(en, en_pl or _plural_en(en), fr, fr_pl or _plural_fr(fr), g, frozenset(tags.split(","))))
    return out


def _parse_adjs() -> list[Adj]:
    out = []
    for row in _ADJS.strip().splitlines():
        parts = row.split("|")
        en, ms, fs, mp, fp, pos, tags = parts[:7]
        fs = fs or (ms if ms.endswith("e") else ms + "e")
        mp = mp or _plural_fr(ms)
        fp = fp or (fs if fs.endswith("s") else fs + "s")
        note = parts[7] if len(parts) > 7 else ""
        out.append(Adj(en, ms, fs, mp, fp, pos == "pre", frozenset(tags.split(",")), note))
    return out


def _parse_past() -> list[tuple[str, str, frozenset]]:
    return [(a, b, frozenset(c.split(","))) for a, b, c in (r.split("|") for r in _PAST_VERBS.strip().splitlines())]


def _parse_pres() -> list[tuple[str, str, list[str], frozenset, str]]:
    out = []
    for r in _PRES_VERBS.strip().splitlines():
        base, s3, fr, tags, art = r.split("|")
        out.append((base, s3, fr.split(","), frozenset(tags.split(",")), art))
    return out


NOUNS = _parse_nouns()
ADJS = _parse_adjs()
PAST_VERBS = _parse_past()
PRES_VERBS = _parse_pres()


# words starting with a vowel sound that still block elision (h aspiré, numbers)
NO_ELISION = {"huit", "onze", "hibou", "haricot", "héros", "hache"}


def starts_vowel(w: str) -> bool:
    return bool(w) and w[0].lower() in VOWELS_FR and w.lower() not in NO_ELISION


def join_fr(tokens: list[str]) -> str:
    """Join French tokens, eliding le/la/je/de before a vowel sound (l'arbre, j'ai, d'or)."""
    out = ""
    for i, t in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if t in ("le", "la", "je", "de") and nxt and starts_vowel(nxt):
            out += t[0] + "'"
        else:
            out += t + (" " if nxt else "")
    return out


def contract_de(tokens: list[str]) -> list[str]:
    """de + le -> du, de + les -> des (à + le -> au, à + les -> aux)."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        after = tokens[i + 2] if i + 2 < len(tokens) else ""
        if t in ("de", "à") and nxt == "le" and not starts_vowel(after):
            out.append("du" if t == "de" else "au")
            i += 2
            continue
        if t in ("de", "à") and nxt == "les":
            out.append("des" if t == "de" else "aux")
            i += 2
            continue
        out.append(t)
        i += 1
    return out


# English determiner -> French (m sg, f sg, pl, m sg before vowel, f sg before vowel)
DETS = {
    "the": ("le", "la", "les", "le", "la"),  # elision applied later in join_fr
    "a": ("un", "une", "des", "un", "une"),
    "my": ("mon", "ma", "mes", "mon", "mon"),
    "your": ("votre", "votre", "vos", "votre", "votre"),
    "his": ("son", "sa", "ses", "son", "son"),
    "her": ("son", "sa", "ses", "son", "son"),
    "our": ("notre", "notre", "nos", "notre", "notre"),
    "their": ("leur", "leur", "leurs", "leur", "leur"),
    "this": ("ce", "cette", "ces", "cet", "cette"),
    "some": ("des", "des", "des", "des", "des"),
}


def en_article(det: str, nxt: str) -> str:
    if det == "a" and nxt[0].lower() in "aeiou":
        return "an"
    return det


def noun_phrase(det: str, noun: Noun, plural: bool, adj: Adj | None = None, number: int | None = None):
    """Render one noun phrase in English and French token lists.

    det: a DETS key, or "" (bare plural / number). number: index into NUMBERS (1 = "one").
    Returns (english_string, french_token_list).
    """
    en_noun = noun.en_pl if plural else noun.en
    en_words = []
    if number is not None:
        en_words.append(NUMBERS[number - 1][0])
    en_words += ([adj.en] if adj else []) + [en_noun]
    if det:
        d = det
        if det == "this" and plural:
            d = "these"
        en_words.insert(0, en_article(d, en_words[0]) if d == "a" else d)
    g = noun.g
    fr_noun = noun.fr_pl if plural else noun.fr
    core: list[str] = []
    if adj is not None and adj.pre:
        core = [adj.form(g, plural, fr_noun), fr_noun]
    elif adj is not None:
        core = [fr_noun, adj.form(g, plural)]
    else:
        core = [fr_noun]
    fr = []
    if number is not None:
        num_fr = NUMBERS[number - 1][1]
        if number == 1:
            num_fr = "une" if g == "f" else "un"
        fr.append(num_fr)
    elif det:
        ms, fs, pl, msv, fsv = DETS[det]
        first = core[0]
        if plural:
            d = pl
            if det in ("a", "some") and adj is not None and adj.pre:
                d = "de"  # des + prenominal adjective -> de (de grands chiens)
        elif g == "m":
            d = msv if starts_vowel(first) else ms
        else:
            d = fsv if starts_vowel(first) else fs
        fr.append(d)
    return " ".join(en_words), fr + core
