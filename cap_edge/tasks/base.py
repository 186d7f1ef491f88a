"""The problem type shared by every task source."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..errors import TaskError


@dataclass(frozen=True)
class Problem:
    id: str
    family: str
    question: str  # the user-facing text; formatting (chat template or plain) happens later
    answer: str  # gold answer text; for multiple choice it is one of `choices`
    choices: tuple[str, ...] | None = None
    difficulty: int = 1

    def __post_init__(self):
        if not self.question.strip():
            raise TaskError(f"problem {self.id!r}: empty question")
        if not self.answer.strip():
            raise TaskError(f"problem {self.id!r}: empty answer")
        if self.choices is not None:
            if len(self.choices) < 2:
                raise TaskError(f"problem {self.id!r}: expected at least 2 choices, got {len(self.choices)}")
            dup = sorted({c for c in self.choices if self.choices.count(c) > 1})
            if dup:
                raise TaskError(f"problem {self.id!r}: duplicate choice(s) {dup}: accuracy would count a repeated "
                                "answer twice; expected distinct choices")
            if self.answer not in self.choices:
                raise TaskError(f"problem {self.id!r}: answer {self.answer!r} is not among its choices {list(self.choices)}")

    @property
    def gold(self) -> int:
        if self.choices is None:
            raise TaskError(f"problem {self.id!r} has no choices")
        return self.choices.index(self.answer)

    @property
    def key(self) -> str:
        """Identity for overlap checks: the normalised question text."""
        return hashlib.sha1(" ".join(self.question.lower().split()).encode()).hexdigest()


def check_disjoint(calib: list[Problem], evaluation: list[Problem]) -> None:
    """Raise if any evaluation problem also appears in the calibration set (by question text)."""
    shared = {p.key for p in calib} & {p.key for p in evaluation}
    if shared:
        example = next(p.question for p in evaluation if p.key in shared)
        raise TaskError(
            f"calibration and evaluation problems overlap: {len(shared)} shared question(s), e.g. {example[:80]!r}"
        )


def require_nonempty(problems: list[Problem], what: str) -> list[Problem]:
    if not problems:
        raise TaskError(f"the {what} set is empty: expected at least one problem, got 0")
    return problems
