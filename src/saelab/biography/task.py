"""The synthetic biography task: seeded people with six attributes, biographies from templates,
questions with training and held-out phrasings, and a word-level vocabulary.

Every word is one token, so an attribute value's first token is a word (the month of a birth
date, the first word of a multi-word city). A question ends with ``A :``; the model's
prediction at that ``:`` is the answer's first token, and that position is where AlignSAE reads
the residual stream.

Question phrasings are frames × attribute phrases ("what is the {attr} of {name} ?"); for
relation ``r`` the frame ``r mod n_frames`` is held out of training, so every held-out
phrasing is a new combination of a frame and an attribute phrase the model has each seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RELATIONS: tuple[str, ...] = ("birth_date", "birth_city", "university", "major", "employer",
                              "company_city")
ATTRIBUTE_PHRASES: dict[str, str] = {
    "birth_date": "birth date", "birth_city": "birth city", "university": "university",
    "major": "major", "employer": "employer", "company_city": "company city",
}

FIRST_NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Henry", "Iris", "Jack", "Kate", "Liam", "Mia", "Noah", "Olivia", "Paul", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Victor", "Wendy", "Xavier", "Yara", "Zane", "Alice", "Bruno", "Chloe", "Dylan", "Elena", "Frank", "Gina", "Hugo", "Ivy", "Jonas"]
LAST_NAMES = ["Smith", "Jones", "Brown", "Taylor", "Wilson", "Davies", "Evans", "Thomas", "Roberts", "Walker", "Wright", "Robinson", "Thompson", "White", "Hughes", "Edwards", "Green", "Hall", "Wood", "Harris", "Lewis", "Martin", "Jackson", "Clarke", "Clark", "Turner", "Hill", "Scott", "Cooper", "Morris", "Ward", "Moore", "King", "Watson", "Baker", "Harper"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
CITIES = ["Boston", "Denver", "Austin", "Seattle", "Chicago", "Phoenix", "Portland", "Atlanta", "Dallas", "Miami", "Houston", "Detroit", "Oakland", "Tampa", "Omaha", "Tucson", "Fresno", "Reno", "Boise", "Raleigh", "Memphis", "Louisville", "Richmond", "Spokane"]
UNIVERSITIES = ["Harvard", "Stanford", "Yale", "Princeton", "Cornell", "Columbia", "Duke", "Brown", "Rice", "Emory", "Purdue", "Tufts", "Vanderbilt", "Dartmouth", "Caltech", "Georgetown"]
MAJORS = ["physics", "chemistry", "biology", "history", "economics", "philosophy", "mathematics", "music", "linguistics", "geology", "astronomy", "sociology", "psychology", "architecture", "literature", "statistics"]
EMPLOYERS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Cyberdyne", "Tyrell", "Aperture", "Soylent", "Wonka", "Oscorp", "Gringotts", "Monarch"]

BIO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": ("{n} was born on {v} .", "{n} came into the world on {v} .",
                   "the birthday of {n} is {v} ."),
    "birth_city": ("{n} was born in {v} .", "{n} grew up in {v} after being born there .",
                   "the birth city of {n} is {v} ."),
    "university": ("{n} studied at {v} .", "{n} graduated from {v} .",
                   "{n} attended {v} for college ."),
    "major": ("{n} majored in {v} .", "{n} studied {v} as a major .",
              "the major of {n} was {v} ."),
    "employer": ("{n} works for {v} .", "{n} is employed by {v} .", "{n} joined {v} ."),
    "company_city": ("{n} works in {v} .", "the company of {n} is in {v} .",
                     "{n} has an office in {v} ."),
}
QUESTION_FRAMES: tuple[str, ...] = (
    "what is the {a} of {n} ?",
    "what is {n} 's {a} ?",
    "tell me the {a} of {n} .",
    "do you know {n} 's {a} ?",
    "which {a} does {n} have ?",
)
PAD, EOS = "<pad>", "<eos>"


def _words() -> list[str]:
    fixed = [PAD, EOS, "Q", "A", ":", ",", "?", ".", "'s"]
    words: set[str] = set()
    for group in (FIRST_NAMES, LAST_NAMES, MONTHS, CITIES, UNIVERSITIES, MAJORS, EMPLOYERS):
        words.update(group)
    words.update(str(d) for d in range(1, 29))
    words.update(str(y) for y in range(1950, 2000))
    for templates in BIO_TEMPLATES.values():
        for t in templates:
            words.update(t.replace("{n}", "").replace("{v}", "").split())
    for frame in QUESTION_FRAMES:
        words.update(frame.replace("{n}", "").replace("{a}", "").split())
    for phrase in ATTRIBUTE_PHRASES.values():
        words.update(phrase.split())
    return fixed + sorted(words - set(fixed))


class Vocabulary:
    """Word-level tokens: id 0 is the pad, 1 the end of an answer."""

    def __init__(self) -> None:
        self.words = _words()
        self.ids = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.ids[w] for w in text.split()]
        except KeyError as err:
            raise ValueError(f"word {err.args[0]!r} is not in the biography vocabulary") from err

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.words[i] for i in ids)


VOCAB = Vocabulary()


@dataclass(frozen=True)
class Person:
    name: str
    values: dict[str, str] = field(hash=False)


def make_people(n_people: int, seed: int) -> list[Person]:
    """``n_people`` distinct people, attributes drawn uniformly from the lists (seeded)."""
    if n_people > len(FIRST_NAMES) * len(LAST_NAMES):
        raise ValueError(f"at most {len(FIRST_NAMES) * len(LAST_NAMES)} distinct names")
    rng = np.random.default_rng(seed)
    pairs = rng.permutation(len(FIRST_NAMES) * len(LAST_NAMES))[:n_people]
    people = []
    for p in pairs:
        name = f"{FIRST_NAMES[p // len(LAST_NAMES)]} {LAST_NAMES[p % len(LAST_NAMES)]}"
        values = {
            "birth_date": f"{MONTHS[rng.integers(12)]} {rng.integers(1, 29)} , "
                          f"{rng.integers(1950, 2000)}",
            "birth_city": str(rng.choice(CITIES)),
            "university": str(rng.choice(UNIVERSITIES)),
            "major": str(rng.choice(MAJORS)),
            "employer": str(rng.choice(EMPLOYERS)),
            "company_city": str(rng.choice(CITIES)),
        }
        people.append(Person(name, values))
    return people


def held_out_frame(relation: int) -> int:
    """The question frame never used in training for ``relation``."""
    return relation % len(QUESTION_FRAMES)


def frames_for(relation: int, held_out: bool) -> list[int]:
    held = held_out_frame(relation)
    return [held] if held_out else [f for f in range(len(QUESTION_FRAMES)) if f != held]


def question_text(person: Person, relation: int, frame: int) -> str:
    """``Q : <question> A :`` (the prompt; the answer follows)."""
    q = QUESTION_FRAMES[frame].format(a=ATTRIBUTE_PHRASES[RELATIONS[relation]], n=person.name)
    return f"Q : {q} A :"


def biography(person: Person, rng: np.random.Generator) -> str:
    """One biography: one sentence per attribute, random template and order."""
    order = rng.permutation(len(RELATIONS))
    sentences = []
    for r in order:
        rel = RELATIONS[r]
        template = BIO_TEMPLATES[rel][rng.integers(len(BIO_TEMPLATES[rel]))]
        sentences.append(template.format(n=person.name, v=person.values[rel]))
    return " ".join(sentences) + f" {EOS}"


@dataclass
class Question:
    """One question about one person: prompt ids, the relation asked, the answer's ids."""

    person: int
    relation: int
    frame: int
    prompt: list[int]
    answer: list[int]  # ends with the end-of-answer token

    @property
    def answer_first_token(self) -> int:
        return self.answer[0]


def questions(people: list[Person], held_out: bool) -> list[Question]:
    """Every (person, relation, frame) question with the training or the held-out frames."""
    out = []
    for p, person in enumerate(people):
        for r, rel in enumerate(RELATIONS):
            answer = [*VOCAB.encode(person.values[rel]), VOCAB.ids[EOS]]
            for f in frames_for(r, held_out):
                out.append(Question(p, r, f, VOCAB.encode(question_text(person, r, f)), answer))
    return out
