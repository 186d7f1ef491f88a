"""Names, items and choice helpers shared by the generated families."""

from __future__ import annotations

import random

NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Ivy", "Jack",
         "Kate", "Liam", "Mia", "Noah", "Olivia", "Peter", "Rosa", "Sam", "Tina", "Victor"]
ITEMS = ["apples", "marbles", "stickers", "coins", "books", "pencils", "cards", "stamps", "shells", "cookies"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _numeric_choices(rng: random.Random, gold: int, pool: list[int], k: int = 4, far: bool = False) -> tuple[str, ...]:
    cands = [v for v in pool if v != gold and v >= 0]
    if not far:
        cands += [gold + d for d in (-2, -1, 1, 2, 10, -10) if gold + d >= 0]
    rng.shuffle(cands)
    out = [gold]
    for c in cands:
        if c not in out:
            out.append(c)
        if len(out) == k:
            break
    rng.shuffle(out)
    return tuple(str(v) for v in out)


def _four(rng: random.Random, gold: str, pool: list[str]) -> tuple[str, ...]:
    """The gold answer and three distinct distractors from ``pool``, shuffled."""
    others = list(dict.fromkeys(x for x in pool if x != gold))
    choices = [gold] + rng.sample(others, 3)
    rng.shuffle(choices)
    return tuple(choices)
