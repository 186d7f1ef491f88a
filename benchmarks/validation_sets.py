"""Validation problems of benchmarks/guided_tuning.py: what no calibration draw and no test measure reads
(pruning.json's and pruning_n300's pools), in-family or under a transfer split, optionally with the knowledge
families' problems added (--knowledge-val)."""

from __future__ import annotations

from pruning import SPLITS, TRANSFER_KNOWLEDGE
from pruning_n300 import PER_FAMILY as N300_PER_FAMILY
from cap_edge.assess import KNOWLEDGE
from cap_edge.config import PruneConfig
from cap_edge.tasks import FAMILIES, calibration_problems, interleave
from cap_edge.tasks.sources import calib_reserve, embedded, evaluation_tail

KNOWLEDGE_TAIL = 49  # --knowledge-val: evaluation problems per family past the test pools (all animals' pool has left)


def used_keys(draws) -> frozenset:
    """The problems calibration draws ``draws`` read: each draw's 32 scoring problems and its statistics set."""
    return frozenset(p.key for d in draws for p in calibration_problems("embedded", PruneConfig().stats_problems, draw=d)
                     + calibration_problems("embedded", 32, draw=d))


def knowledge_families(split: str | None) -> list[str]:
    """The knowledge families validation pairs alone: the evaluated half's under a transfer ``split``, else all three."""
    return (SPLITS[split][1] if split else KNOWLEDGE).split(":", 1)[1].split(",")


def validation_problems(exclude: frozenset = frozenset()) -> list:
    """The last stretch of each family's calibration split: never used for draw 0's scores (first 3
    per family) or statistics (first 10 per family); ``exclude``: the keys later draws use (they
    take each family's problems from the whole split)."""
    out = []
    for fam in FAMILIES:
        n = calib_reserve(fam)
        out += [p for p in embedded([fam], "calib", n)[max(20, n - 40):] if p.key not in exclude]
    return interleave(out)


def knowledge_validation_parts(split: str | None, tail: int = KNOWLEDGE_TAIL, used: frozenset = frozenset()) -> list:
    """knowledge_validation's problems as (calibration-split problems, evaluation-tail problems), one pair per family."""
    start = max(TRANSFER_KNOWLEDGE[split], N300_PER_FAMILY) if split else N300_PER_FAMILY
    out = []
    for fam in knowledge_families(split):
        tested = {p.key for p in embedded([fam], "eval", start)}
        extra = evaluation_tail(fam, start, tail)
        assert not {p.key for p in extra} & tested, "validation must stay off the test pools"
        out.append(([p for p in embedded([fam], "calib", calib_reserve(fam)) if p.key not in used], extra))
    return out


def knowledge_validation(split: str | None, tail: int = KNOWLEDGE_TAIL, used: frozenset = frozenset()) -> list:
    """--knowledge-val's problems: for each knowledge family (of the evaluated half under a transfer ``split``, which
    the other half's calibration never reads; all three in-family), its calibration split less what the draws use
    (``used``) and up to ``tail`` problems of its evaluation stream past every test pool (pruning.json's and
    pruning_n300's). validation_problems alone holds 15-20 per family, too few to see the test split's knowledge losses."""
    return [p for calib, extra in knowledge_validation_parts(split, tail, used) for p in calib + extra]


def validation_set(split: str | None, knowledge_val: bool, draws) -> tuple[list, str]:
    """The validation problems and their set's name (a row's val_keys): validation_problems less what calibration
    ``draws`` read, under a transfer ``split`` the evaluated half's alone, with --knowledge-val the knowledge families'
    problems added."""
    draws = sorted(set(draws))
    used = used_keys(draws)
    val = validation_problems(used)
    assert not {p.key for p in val} & {p.key for p in calibration_problems("embedded", 128)}
    name = f"without draws {' '.join(map(str, draws))}"
    if split:  # the calibration half's families never reach the validation problems
        val = [p for p in val if p.family in set(SPLITS[split][2].split(":", 1)[1].split(","))]
    if knowledge_val:  # transfer: the whole calibration split (the other half's calibration reads none of it)
        have = {p.key for p in val}
        val = interleave(val + [p for p in knowledge_validation(split, used=frozenset() if split else used) if p.key not in have])
        name = f"knowledge-val, {name}"
    if split:
        assert not {p.family for p in calibration_problems(SPLITS[split][0], PruneConfig().stats_problems)} & {p.family for p in val}
        name = f"transfer {split}, {name}"
    return val, f"{name}: {len(val)}"
