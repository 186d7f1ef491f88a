"""The ten synthetic families (arithmetic, comparison, ordering, tracking, dates, boolean, sequences,
parity, sizes, routine). Questions are multi-step: the answer is never stated in the question,
and distractors are the values a one-step shortcut would give."""

from __future__ import annotations

import random

from .common import COLORS, ITEMS, NAMES, WEEKDAYS, _four, _numeric_choices

def arithmetic(rng: random.Random, difficulty: int):
    if difficulty == 1:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if rng.random() < 0.5:
            q, gold = f"What is {a} plus {b}?", a + b
        else:
            a, b = max(a, b), min(a, b)
            q, gold = f"What is {a} minus {b}?", a - b
        pool = [rng.randint(0, 40) for _ in range(6)]
        return q + " Answer with a number.", str(gold), _numeric_choices(rng, gold, pool, far=True)
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(3, 20)
    parts = [f"{name} has {total} {item}."]
    seen = [total]
    for step in range(difficulty - 1):
        op = rng.choice(["add", "sub", "mul"] if difficulty == 3 and step == 0 else ["add", "sub"])
        if op == "add":
            v = rng.randint(2, 15)
            total += v
            parts.append(rng.choice([f"Then {name} gets {v} more.", f"A friend gives {name} {v} more."]))
        elif op == "sub" and total > 2:
            v = rng.randint(1, total - 1)
            total -= v
            parts.append(rng.choice([f"Then {name} gives away {v}.", f"Then {name} loses {v}."]))
        else:
            v = 2
            total *= v
            parts.append(f"Then the number of {item} {name} has doubles.")
        seen.append(v)
    q = " ".join(parts) + f" How many {item} does {name} have now? Answer with a number."
    near = [total + d for d in (-3, -2, -1, 1, 2, 3, 5) if total + d >= 0 and total + d not in seen]
    return q, str(total), _numeric_choices(rng, total, near, far=True)


def comparison(rng: random.Random, difficulty: int):
    item = rng.choice(ITEMS)
    while True:
        if difficulty == 1:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            if a != b:
                big = rng.random() < 0.5
                q = f"Which number is {'larger' if big else 'smaller'}, {a} or {b}?"
                gold = max(a, b) if big else min(a, b)
                return q, str(gold), (str(a), str(b))
            continue
        elif difficulty == 2:
            nums = rng.sample(range(1, 100), 3)
            big = rng.random() < 0.5
            q = f"Which is the {'largest' if big else 'smallest'} of the numbers {nums[0]}, {nums[1]} and {nums[2]}?"
            return q, str(max(nums) if big else min(nums)), tuple(str(v) for v in nums)
        else:
            a1, a2, b1, b2 = (rng.randint(2, 9) for _ in range(4))
            ea, eb = rng.randint(1, 12), rng.randint(1, 12)
            a, b = a1 * a2 + ea, b1 * b2 + eb
            qa = f"{a1} bags with {a2} {item} each plus {ea} loose {item}"
            qb = f"{b1} bags with {b2} {item} each plus {eb} loose {item}"
        if a != b:
            break
    q = f"Box A holds {qa}. Box B holds {qb}. Which box holds more {item}, Box A or Box B?"
    return q, "Box A" if a > b else "Box B", ("Box A", "Box B")


def ordering(rng: random.Random, difficulty: int):
    n = difficulty + 1
    names = rng.sample(NAMES, n)  # names[0] is the tallest
    pairs = [(names[i], names[i + 1]) for i in range(n - 1)]
    rng.shuffle(pairs)
    facts = " ".join(
        f"{a} is taller than {b}." if rng.random() < 0.5 else f"{b} is shorter than {a}." for a, b in pairs
    )
    ask_tallest = rng.random() < 0.5
    q = f"{facts} Who is the {'tallest' if ask_tallest else 'shortest'}?"
    choices = list(names)
    rng.shuffle(choices)
    return q, names[0] if ask_tallest else names[-1], tuple(choices)


def tracking(rng: random.Random, difficulty: int):
    n_people = 2 if difficulty == 1 else 3
    people = rng.sample(NAMES, n_people)
    colors = rng.sample(COLORS, n_people)
    holding = dict(zip(people, colors))
    intro = ", ".join(f"{p} has {'an' if c[0] in 'aeiou' else 'a'} {c} ball" for p, c in holding.items())
    steps = []
    for _ in range(difficulty):
        a, b = rng.sample(people, 2)
        holding[a], holding[b] = holding[b], holding[a]
        steps.append(f"{a} and {b} swap balls.")
    target = rng.choice(people)
    q = f"{intro}. " + " Then ".join(steps) + f" What color is the ball {target} has now?"
    choices = list(colors)
    rng.shuffle(choices)
    return q, holding[target], tuple(choices)


def dates(rng: random.Random, difficulty: int):
    start = rng.randrange(7)
    if difficulty == 1:
        after = rng.random() < 0.5
        name = rng.choice(NAMES)
        q = rng.choice([
            f"{name} asks: what day of the week comes right {'after' if after else 'before'} {WEEKDAYS[start]}?",
            f"Which day of the week is just {'after' if after else 'before'} {WEEKDAYS[start]}? {name} wants to know.",
        ])
        end = start + (1 if after else -1)
    elif difficulty == 2:
        n = rng.randint(1, 2)
        name = rng.choice(NAMES)
        when = "tomorrow" if n == 1 else "the day after tomorrow"
        q = rng.choice([
            f"Today is {WEEKDAYS[start]}. {name} has a party {when}. On what day of the week is the party?",
            f"{name} says: today is {WEEKDAYS[start]}. What day of the week is it {when}?",
            f"It is {WEEKDAYS[start]} today. {name} will travel {when}. Which day of the week will {name} travel?",
        ])
        end = start + n
    elif rng.random() < 0.5:
        n = rng.randint(3, 40)
        q = f"Today is {WEEKDAYS[start]}. What day of the week will it be in {n} days?"
        end = start + n
    else:
        back, fwd = rng.randint(1, 10), rng.randint(5, 40)
        q = (f"{back} days ago it was {WEEKDAYS[start]}. What day of the week will it be "
             f"{fwd} days from today?")
        end = start + back + fwd
    gold = WEEKDAYS[end % 7]
    return q, gold, _four(rng, gold, [d for d in WEEKDAYS if d != WEEKDAYS[start]])


def _bool_expr(rng: random.Random, depth: int) -> tuple[str, bool]:
    if depth == 0:
        v = rng.random() < 0.5
        return str(v), v
    op = rng.choice(["and", "or", "not"])
    if op == "not":
        s, v = _bool_expr(rng, depth - 1)
        return f"not ({s})" if " " in s else f"not {s}", not v
    ls, lv = _bool_expr(rng, depth - 1)
    rs, rv = _bool_expr(rng, rng.randrange(depth))
    ls = f"({ls})" if " " in ls else ls
    rs = f"({rs})" if " " in rs else rs
    return f"{ls} {op} {rs}", (lv and rv) if op == "and" else (lv or rv)


def boolean(rng: random.Random, difficulty: int):
    s, v = _bool_expr(rng, difficulty + 1)
    q = f"Evaluate the Boolean expression: {s}. Is it True or False?"
    return q, str(v), ("True", "False")


def sequences(rng: random.Random, difficulty: int):
    """Continue a number pattern: constant step (1), larger or negative step (2), growing step (3)."""
    start = rng.randint(1, 90)  # wide enough for 256 calibration + 250 evaluation problems per level mix
    if difficulty == 1:
        step = rng.randint(1, 5)
        seq = [start + step * i for i in range(5)]
    elif difficulty == 2:
        step = rng.choice([-1, 1]) * rng.randint(3, 12)
        start += 60 if step < 0 else 0
        seq = [start + step * i for i in range(5)]
    else:
        inc = rng.randint(1, 4)
        seq = [start]
        for i in range(4):
            seq.append(seq[-1] + inc + i)
    gold, shown = seq[-1], seq[:-1]
    diff = shown[-1] - shown[-2]
    pool = [gold + diff, gold - 1, gold + 1, gold + 2 * diff, gold - 2]
    q = f"What number comes next in the pattern {', '.join(map(str, shown))}, ...?"
    return q, str(gold), _numeric_choices(rng, gold, [v for v in pool if v not in shown], far=True)


def parity(rng: random.Random, difficulty: int):
    """Even or odd: of a number (1), of a sum (2), of a product plus a number (3)."""
    a, b, c = rng.randint(2, 99), rng.randint(2, 30), rng.randint(1, 30)
    if difficulty == 1:
        a = rng.randint(2, 999)
        expr, v = str(a), a
    elif difficulty == 2:
        expr, v = f"{a} + {b}", a + b
    else:
        b = rng.randint(2, 12)
        expr, v = f"{b} times {c % 12 + 1} plus {a}", b * (c % 12 + 1) + a
    q = f"Is {expr} an even or an odd number?"
    return q, "even" if v % 2 == 0 else "odd", ("even", "odd")


# (name, typical size rank): the ranks are coarse orders of magnitude, so every pair compared
# differs by at least two ranks and has one defensible answer.
SIZED = [("an ant", 0), ("a bee", 0), ("a coin", 1), ("a mouse", 2), ("an apple", 2), ("a shoe", 3),
         ("a cat", 4), ("a chair", 5), ("a dog", 5), ("a bicycle", 6), ("a horse", 7), ("a car", 8),
         ("an elephant", 9), ("a bus", 9), ("a house", 10), ("a whale", 11), ("a mountain", 13)]
PEOPLE_VERBS = ["owns", "found", "drew", "saw", "photographed", "wants"]


def sizes(rng: random.Random, difficulty: int):
    """Compare sizes of everyday things: direct (1), the biggest of three (2), through who-has-what (3)."""
    while True:
        if difficulty == 1:
            (a, ra), (b, rb) = rng.sample(SIZED, 2)
            if abs(ra - rb) < 2:
                continue
            big = rng.random() < 0.5
            q = f"Which is {'bigger' if big else 'smaller'}, {a} or {b}?"
            ans = (a if ra > rb else b) if big else (a if ra < rb else b)
            return q, ans.split(" ", 1)[1], (a.split(" ", 1)[1], b.split(" ", 1)[1])
        if difficulty == 2:
            items = rng.sample(SIZED, 3)
            ranks = sorted(r for _, r in items)
            if ranks[1] - ranks[0] < 2 or ranks[2] - ranks[1] < 2:
                continue
            big = rng.random() < 0.5
            pick = max(items, key=lambda t: t[1]) if big else min(items, key=lambda t: t[1])
            q = f"Which is the {'biggest' if big else 'smallest'}: {items[0][0]}, {items[1][0]} or {items[2][0]}?"
            return q, pick[0].split(" ", 1)[1], tuple(i[0].split(" ", 1)[1] for i in items)
        (a, ra), (b, rb) = rng.sample(SIZED, 2)
        if abs(ra - rb) < 2:
            continue
        p1, p2 = rng.sample(NAMES, 2)
        v1, v2 = rng.choice(PEOPLE_VERBS), rng.choice(PEOPLE_VERBS)
        big = rng.random() < 0.5
        q = f"{p1} {v1} {a}. {p2} {v2} {b}. Whose thing is {'bigger' if big else 'smaller'}, {p1}'s or {p2}'s?"
        ans = (p1 if ra > rb else p2) if big else (p1 if ra < rb else p2)
        return q, ans, (p1, p2)


# Everyday events in their usual order within a day.
DAY_EVENTS = ["wakes up", "eats breakfast", "goes to work", "eats lunch", "comes home", "eats dinner", "goes to bed"]


def routine(rng: random.Random, difficulty: int):
    """Temporal order of a daily routine: which comes first (1), which comes last of three (2),
    what comes right after or right before an event in a named person's day (3)."""
    name = rng.choice(NAMES)
    if difficulty == 1:
        i, j = sorted(rng.sample(range(len(DAY_EVENTS)), 2))
        first = rng.random() < 0.5
        a, b = (DAY_EVENTS[i], DAY_EVENTS[j]) if rng.random() < 0.5 else (DAY_EVENTS[j], DAY_EVENTS[i])
        q = f"On a normal day, what does {name} do {'first' if first else 'later'}: {name} {a} or {name} {b}?"
        ans = DAY_EVENTS[i] if first else DAY_EVENTS[j]
        return q, ans, (a, b)
    if difficulty == 2:
        idx = sorted(rng.sample(range(len(DAY_EVENTS)), 3))
        shown = [DAY_EVENTS[k] for k in idx]
        rng.shuffle(shown)
        q = f"On a normal day, {name} {shown[0]}, {shown[1]} and {shown[2]}. Which of these does {name} do last?"
        return q, DAY_EVENTS[idx[-1]], tuple(shown)
    k = rng.randrange(len(DAY_EVENTS) - 1)
    if rng.random() < 0.5:
        q, asked, ans = f"On a normal day, what does {name} do right after {name} {DAY_EVENTS[k]}?", k, k + 1
    else:
        q, asked, ans = f"On a normal day, what does {name} do right before {name} {DAY_EVENTS[k + 1]}?", k + 1, k
    others = [e for e in DAY_EVENTS if e not in (DAY_EVENTS[asked], DAY_EVENTS[ans])]
    choices = [DAY_EVENTS[ans]] + rng.sample(others, 2)
    rng.shuffle(choices)
    return q, DAY_EVENTS[ans], tuple(choices)


# --- Knowledge composition: a fact the model must recall, then a relation to apply to it ------
# Level 1 recalls one fact, level 2 infers a relation from an example and applies it (analogy),
# level 3 chains two facts or binds a fact to a person first. The pools are small (what a small
# model can know), so these families reserve fewer calibration problems (CALIB_RESERVE_BY_FAMILY below).
