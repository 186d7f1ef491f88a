"""One frozen, validated config object per concern. The CLI builds these from flags; the Python
API takes the same objects; device profiles fill them from data files."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .errors import ConfigError

SCORE_MODES = ("exact", "attribution", "hybrid", "naive")
PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt", "cap", "cap-wanda")


def _positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name}: expected a positive number, got {value!r}")


@dataclass(frozen=True)
class BudgetConfig:
    """How much calibration a device's build may spend."""

    problems: int = 32  # calibration problems in all
    tokens_per_problem: int = 256  # longer prompts are cut from the left
    seconds: float | None = None  # wall-clock cap for scoring; None = no cap

    def __post_init__(self):
        _positive("budget.problems", self.problems)
        _positive("budget.tokens_per_problem", self.tokens_per_problem)
        _positive("budget.seconds", self.seconds, allow_none=True)


@dataclass(frozen=True)
class ScoreConfig:
    mode: str = "exact"
    subsets: int = 3  # K disjoint calibration subsets; score = median over them
    max_batch_tokens: int = 16384  # rows x tokens per forward when batching head masks
    refine_fraction: float = 0.2  # hybrid: share of heads re-scored exactly

    def __post_init__(self):
        if self.mode not in SCORE_MODES:
            raise ConfigError(f"scoring mode: expected one of {', '.join(SCORE_MODES)}, got {self.mode!r}")
        if not isinstance(self.subsets, int) or self.subsets < 1:
            raise ConfigError(f"subsets: expected an integer >= 1, got {self.subsets!r}")
        _positive("max_batch_tokens", self.max_batch_tokens)
        if not 0 <= self.refine_fraction <= 1:
            raise ConfigError(f"refine_fraction: expected a value in [0, 1], got {self.refine_fraction!r}")

    def key(self) -> dict:
        """The fields that change the scores (batching does not)."""
        d = {"mode": self.mode, "subsets": self.subsets}
        if self.mode == "hybrid":
            d["refine_fraction"] = self.refine_fraction
        return d


_NM = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' -> None; 'N:M' -> (N, M) with 0 < N < M."""
    if pattern == "unstructured":
        return None
    m = _NM.match(pattern or "")
    if not m:
        raise ConfigError(f"pattern: expected 'unstructured' or 'N:M' (e.g. 2:4, 4:8), got {pattern!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise ConfigError(f"pattern {pattern!r}: expected 0 < N < M")
    return n, mm


@dataclass(frozen=True)
class PruneConfig:
    method: str = "cap"
    sparsity: float = 0.5  # used by unstructured; N:M fixes its own sparsity (1 - N/M)
    pattern: str = "unstructured"
    sparsegpt_blocksize: int = 128
    sparsegpt_damp: float = 0.01

    def __post_init__(self):
        if self.method not in PRUNE_METHODS:
            raise ConfigError(f"method: expected one of {', '.join(PRUNE_METHODS)}, got {self.method!r}")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity: expected a value in [0, 1), got {self.sparsity!r}")
        parse_pattern(self.pattern)

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    @property
    def target_sparsity(self) -> float:
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm else float(self.sparsity)


def replace(cfg, **changes):
    """dataclasses.replace that re-runs validation."""
    return dataclasses.replace(cfg, **changes)
