"""Regenerate ``english.txt``: a license-clean English corpus written by a seeded grammar.

Every sentence comes from the templates and word lists below (written for saelab), so the
corpus has no third-party text. Documents are separated by blank lines. Run:

    python src/saelab/text/corpus/generate.py          # rewrites english.txt (deterministic)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

TOWNS = ["Aldmere", "Brookfield", "Carrow", "Dunmore", "Eastwick", "Fairhaven", "Glenrock",
         "Harrowgate", "Ivybridge", "Juniper Falls", "Kestrel Bay", "Larchmont", "Millbrook",
         "Northcliff", "Oakhurst", "Pinecrest", "Queensford", "Redwater", "Stonebridge",
         "Thornbury", "Upton Vale", "Westmoor", "Yarrow", "Zephyr Point"]
PEOPLE = ["Anna", "Ben", "Clara", "Daniel", "Elena", "Felix", "Grace", "Hugo", "Iris", "James",
          "Kate", "Leo", "Maya", "Noah", "Olivia", "Peter", "Rosa", "Samuel", "Tara", "Victor",
          "Wendy", "Yusuf", "Zoe", "the old baker", "the new teacher", "a young doctor",
          "the captain", "my grandmother", "our neighbour", "the gardener"]
ANIMALS = ["cat", "dog", "fox", "owl", "horse", "rabbit", "heron", "badger", "goat", "sparrow",
           "otter", "deer", "crow", "beaver", "hedgehog", "salmon", "bee", "tortoise"]
FOODS = ["bread", "soup", "apple pie", "rice", "lentils", "cheese", "tomatoes", "carrots",
         "pancakes", "porridge", "onions", "potatoes", "honey cake", "green beans", "mushrooms"]
TOOLS = ["hammer", "ladder", "lantern", "notebook", "compass", "kettle", "saw", "bucket",
         "telescope", "map", "rope", "wheelbarrow", "paintbrush", "violin", "bicycle"]
PLACES = ["the market", "the harbour", "the library", "the old mill", "the river bank",
          "the train station", "the hill above town", "the school", "the bakery", "the forest",
          "the bridge", "the museum", "the town square", "the orchard", "the lighthouse"]
ADJ = ["quiet", "busy", "cold", "warm", "bright", "narrow", "wide", "ancient", "modern",
       "small", "large", "green", "grey", "windy", "sunny", "crowded", "peaceful", "muddy",
       "golden", "steep", "gentle", "careful", "curious", "patient", "noisy", "clever"]
VERBS_PAST = ["walked to", "looked at", "painted", "visited", "repaired", "cleaned", "measured",
              "described", "photographed", "remembered", "counted", "followed", "carried",
              "opened", "closed", "found", "lost", "built", "sold", "bought"]
TIMES = ["in the morning", "at noon", "in the evening", "late at night", "on Sunday",
         "every Tuesday", "in early spring", "during the summer", "in the autumn",
         "in the middle of winter", "after the storm", "before breakfast", "after school"]
WEATHER = ["rain", "snow", "fog", "sunshine", "strong wind", "light drizzle", "thunder",
           "hail", "clear skies", "low cloud"]
SUBJECTS = ["mathematics", "history", "music", "chemistry", "geography", "painting",
            "astronomy", "carpentry", "gardening", "poetry", "biology", "engineering"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve",
           "twenty", "a hundred"]
FEELINGS = ["happy", "tired", "surprised", "worried", "proud", "calm", "excited", "sad",
            "hopeful", "confused"]


def pick(rng: random.Random, words: list[str]) -> str:
    return rng.choice(words)


def cap(text: str) -> str:
    return text[0].upper() + text[1:]


def town_article(rng: random.Random) -> str:
    town = pick(rng, TOWNS)
    lines = [
        f"{town} is a {pick(rng, ADJ)} town near {pick(rng, PLACES)[4:]} of the valley.",
        f"About {pick(rng, NUMBERS)} thousand people live there, and most of them work at "
        f"{pick(rng, PLACES)} or on the farms nearby.",
        f"The town is known for its {pick(rng, FOODS)} and for the {pick(rng, ADJ)} "
        f"{pick(rng, ANIMALS)}s that live along the river.",
        f"In winter the streets are {pick(rng, ADJ)}, and {pick(rng, WEATHER)} is common "
        f"{pick(rng, TIMES)}.",
        f"Visitors often go to {pick(rng, PLACES)} first, then walk to {pick(rng, PLACES)}.",
        f"The oldest building in {town} is {pick(rng, NUMBERS)} hundred years old.",
        f"Children in {town} study {pick(rng, SUBJECTS)} and {pick(rng, SUBJECTS)} at school.",
        f"Every year the town holds a festival with music, {pick(rng, FOODS)} and games.",
    ]
    rng.shuffle(lines)
    return " ".join(lines[: rng.randint(4, len(lines))])


def story(rng: random.Random) -> str:
    hero, friend = pick(rng, PEOPLE), pick(rng, PEOPLE)
    place, tool, animal = pick(rng, PLACES), pick(rng, TOOLS), pick(rng, ANIMALS)
    sentences = [
        f"{cap(hero)} woke up {pick(rng, TIMES)} and felt {pick(rng, FEELINGS)}.",
        f"Outside there was {pick(rng, WEATHER)}, so {hero} took a {tool} and went to {place}.",
        f"On the way, {hero} met {friend}, who was carrying a basket of {pick(rng, FOODS)}.",
        f"\"Have you seen the {animal}?\" asked {friend}. \"It ran toward {pick(rng, PLACES)}.\"",
        f"They {pick(rng, VERBS_PAST)} the {pick(rng, ADJ)} gate and waited for a while.",
        f"After some time the {animal} came back, looking {pick(rng, FEELINGS)} and "
        f"{pick(rng, ADJ)}.",
        f"{cap(friend)} laughed, and {hero} wrote the whole story in a {pick(rng, ADJ)} notebook.",
        f"By the evening they were home again, and the {tool} was back in its place.",
    ]
    return " ".join(sentences[: rng.randint(5, len(sentences))])


def recipe(rng: random.Random) -> str:
    main, side = pick(rng, FOODS), pick(rng, FOODS)
    steps = [
        f"To make {main} with {side}, start by washing your hands and your tools.",
        f"Cut the {side} into small pieces and put them in a {pick(rng, ADJ)} bowl.",
        f"Heat a pan for {pick(rng, NUMBERS)} minutes, then add a little oil.",
        f"Cook the {main} slowly and stir it every few minutes so that it does not burn.",
        f"Add salt, a spoon of honey and the {side}, and cook for {pick(rng, NUMBERS)} more "
        "minutes.",
        f"Serve it warm {pick(rng, TIMES)}, with bread on the side.",
        "If there is any left, keep it in a cold place and eat it the next day.",
    ]
    return " ".join(steps[: rng.randint(4, len(steps))])


def weather_report(rng: random.Random) -> str:
    town = pick(rng, TOWNS)
    w1, w2 = pick(rng, WEATHER), pick(rng, WEATHER)
    return (
        f"Weather for {town}: {w1} {pick(rng, TIMES)}, turning to {w2} later. "
        f"Temperatures will stay between {pick(rng, NUMBERS)} and {pick(rng, NUMBERS)} degrees. "
        f"The wind will be {pick(rng, ADJ)} near {pick(rng, PLACES)}. "
        f"Farmers should expect {pick(rng, WEATHER)} by the end of the week."
    )


def lesson(rng: random.Random) -> str:
    subject = pick(rng, SUBJECTS)
    teacher = pick(rng, PEOPLE)
    parts = [
        f"Today's lesson is about {subject}.",
        f"{cap(teacher)} explained that {subject} is easier when you practise a little every "
        "day.",
        f"First, the class read {pick(rng, NUMBERS)} pages and wrote down every new word.",
        f"Then they worked in pairs and compared their answers about {pick(rng, SUBJECTS)}.",
        f"One student asked why the {pick(rng, ANIMALS)} in the picture looked so "
        f"{pick(rng, ADJ)}.",
        "The teacher smiled and said that a good question is worth more than a quick answer.",
        f"For homework, everyone must describe {pick(rng, PLACES)} in {pick(rng, NUMBERS)} "
        "sentences.",
    ]
    return " ".join(parts[: rng.randint(4, len(parts))])


def nature_note(rng: random.Random) -> str:
    a, b = pick(rng, ANIMALS), pick(rng, ANIMALS)
    return (
        f"The {a} is a {pick(rng, ADJ)} animal that lives near {pick(rng, PLACES)}. "
        f"It eats {pick(rng, FOODS)} when it can find it, and it is most active "
        f"{pick(rng, TIMES)}. "
        f"Unlike the {b}, the {a} does not like {pick(rng, WEATHER)}. "
        f"A careful observer can count {pick(rng, NUMBERS)} of them on a {pick(rng, ADJ)} day."
    )


def dialogue(rng: random.Random) -> str:
    a, b = pick(rng, PEOPLE[:23]), pick(rng, PEOPLE[:23])
    return (
        f"{a}: Where did you put the {pick(rng, TOOLS)}?\n"
        f"{b}: I left it near {pick(rng, PLACES)}, next to the {pick(rng, TOOLS)}.\n"
        f"{a}: We need it {pick(rng, TIMES)}. The {pick(rng, ADJ)} door is broken again.\n"
        f"{b}: Then I will bring it, and some {pick(rng, FOODS)} for lunch."
    )


GENRES: list[Callable[[random.Random], str]] = [town_article, story, recipe, weather_report,
                                                 lesson, nature_note, dialogue]


def generate(n_chars: int = 320_000, seed: int = 0) -> str:
    """Documents from the grammar until the text is at least ``n_chars`` long."""
    rng = random.Random(seed)
    docs: list[str] = []
    total = 0
    while total < n_chars:
        doc = rng.choice(GENRES)(rng)
        docs.append(doc)
        total += len(doc) + 2
    return "\n\n".join(docs) + "\n"


if __name__ == "__main__":
    out = Path(__file__).with_name("english.txt")
    out.write_text(generate())
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
