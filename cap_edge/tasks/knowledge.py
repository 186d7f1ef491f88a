"""Knowledge-composition families: recall a fact (level 1), infer a relation from one example and
apply it (level 2, analogy), chain two facts or bind a word to one of two people (level 3). Small
fact pools, so they reserve fewer calibration problems (``CALIB_RESERVE_BY_FAMILY``)."""

from __future__ import annotations

import random

from .common import NAMES, _four

ANTONYMS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
            ("old", "young"), ("open", "closed"), ("full", "empty"), ("early", "late"), ("wet", "dry"), ("hard", "soft"),
            ("day", "night"), ("tall", "short"), ("rich", "poor"), ("loud", "quiet"), ("left", "right"), ("win", "lose")]
OPPOSITE_TEMPLATES = ["What is the opposite of {w}?", "Which word means the opposite of {w}?", "What is the antonym of {w}?",
                      "Name the opposite of {w}.", "What word is opposite in meaning to {w}?"]


def opposites(rng: random.Random, difficulty: int):
    """Antonyms: recall (1), an analogy "A is to B as C is to ?" (2), the opposite of the word one
    of two people wrote (3: bind the word to the person, then recall its antonym)."""
    pairs = ANTONYMS + [(b, a) for a, b in ANTONYMS]
    if difficulty == 1:
        w, gold = rng.choice(pairs)
        q = rng.choice(OPPOSITE_TEMPLATES).format(w=w)
        return q, gold, _four(rng, gold, [b for a, b in pairs if a != w])
    if difficulty == 2:
        (a, b), (w, gold) = rng.sample(pairs, 2)
        if {a, b} == {w, gold}:
            return opposites(rng, difficulty)
        q = f"{a.capitalize()} is to {b} as {w} is to what?"
        return q, gold, _four(rng, gold, [y for x, y in pairs if x != w and y not in (a, b)])
    p1, p2 = rng.sample(NAMES, 2)
    (w1, o1), (w2, o2) = rng.sample(ANTONYMS, 2)
    if rng.random() < 0.5:
        w1, o1 = o1, w1
    q = f'{p1} wrote the word "{w1}" on a card. {p2} wrote the word "{w2}". What is the opposite of the word on {p1}\'s card?'
    rest = [y for x, y in pairs if y not in (o1, o2, w1, w2)]
    choices = [o1, o2] + rng.sample(rest, 2)
    rng.shuffle(choices)
    return q, o1, tuple(choices)


# (animal, its young, the sound it makes)
ANIMALS = [("dog", "puppy", "woof"), ("cat", "kitten", "meow"), ("cow", "calf", "moo"), ("sheep", "lamb", "baa"),
           ("horse", "foal", "neigh"), ("duck", "duckling", "quack"), ("pig", "piglet", "oink"), ("frog", "tadpole", "croak"),
           ("lion", "cub", "roar"), ("goose", "gosling", "honk"), ("owl", "owlet", "hoot"), ("goat", "kid", "bleat"),
           ("hen", "chick", "cluck"), ("swan", "cygnet", "trumpet"), ("kangaroo", "joey", "chortle"), ("deer", "fawn", "bellow")]


def animals(rng: random.Random, difficulty: int):
    """Animal young: recall (1), analogy (2), through the animal's sound (3: sound -> animal -> young)."""
    young = [y for _, y, _ in ANIMALS]
    i, j = rng.sample(range(len(ANIMALS)), 2)
    a, gold, sound = ANIMALS[i]
    if difficulty == 1:
        q = rng.choice(["What is a baby {a} called?", "What do you call a young {a}?", "A young {a} is called what?",
                        "What is the name for a baby {a}?", "What word names a {a}'s baby?"]).format(a=a)
    elif difficulty == 2:
        b, by, _ = ANIMALS[j]
        q = rng.choice(["{B} is to {by} as {a} is to what?", "A {b} has a {by}. What does a {a} have?"]).format(
            B=b.capitalize(), b=b, by=by, a=a)
    else:
        if a in ("swan", "kangaroo", "deer"):  # sounds too unfamiliar to identify the animal
            return animals(rng, difficulty)
        q = rng.choice(['What is the young of the animal that says "{s}" called?',
                        'An animal says "{s}". What is its baby called?',
                        'Which baby grows up to make the sound "{s}"?',
                        'What is the baby of the animal that goes "{s}" called?',
                        'The animal that says "{s}" has a baby. What is it called?']).format(s=sound)
    return q, gold, _four(rng, gold, young)


# (country, capital, a landmark in the country)
COUNTRIES = [("France", "Paris", "the Eiffel Tower"), ("Italy", "Rome", "the Colosseum"), ("Japan", "Tokyo", "Mount Fuji"),
             ("England", "London", "Big Ben"), ("Egypt", "Cairo", "the Sphinx"), ("Russia", "Moscow", "the Kremlin"),
             ("Germany", "Berlin", "the Brandenburg Gate"), ("Spain", "Madrid", "the Alhambra"),
             ("China", "Beijing", "the Great Wall"), ("Greece", "Athens", "the Parthenon"), ("India", "New Delhi", "the Taj Mahal"),
             ("Australia", "Canberra", "the Sydney Opera House"), ("Canada", "Ottawa", "Niagara Falls"),
             ("Brazil", "Brasilia", "the Christ the Redeemer statue"), ("Peru", "Lima", "Machu Picchu"),
             ("Turkey", "Ankara", "the Hagia Sophia"), ("Kenya", "Nairobi", "the Maasai Mara"),
             ("Cambodia", "Phnom Penh", "Angkor Wat"), ("Mexico", "Mexico City", "Chichen Itza"),
             ("Netherlands", "Amsterdam", "the Rijksmuseum"), ("Norway", "Oslo", "the Geirangerfjord"),
             ("Argentina", "Buenos Aires", "Iguazu Falls"), ("Jordan", "Amman", "Petra"), ("Tanzania", "Dodoma", "Mount Kilimanjaro")]


def geography(rng: random.Random, difficulty: int):
    """Capitals: recall (1), analogy (2), through a landmark (3: landmark -> country -> capital)."""
    i, j = rng.sample(range(len(COUNTRIES)), 2)
    country, gold, landmark = COUNTRIES[i]
    if difficulty == 1:
        q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?", "The capital of {c} is which city?"]).format(c=country)
    elif difficulty == 2:
        c2, cap2, _ = COUNTRIES[j]
        q = rng.choice(["{c2} is to {cap2} as {c} is to what?", "{c2} has the capital {cap2}. In the same way, {c} has which capital?"]).format(
            c2=c2, cap2=cap2, c=country)
    else:
        q = rng.choice(["What is the capital of the country where {l} is?", "{L} is in a country. What is that country's capital?",
                        "Which city is the capital of the country that has {l}?"]).format(l=landmark, L=landmark[0].upper() + landmark[1:])
    return q, gold, _four(rng, gold, [c for _, c, _ in COUNTRIES])
