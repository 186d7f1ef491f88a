"""One frozen, validated config object per concern. The CLI builds these from flags; the Python
API takes the same objects; device profiles fill them from data files."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError
from .guidance import Guidance, default_bound, default_guidance

if TYPE_CHECKING:  # profiles import this module, so only for the annotation
    from device_profiles import DeviceProfile

SCORE_MODES = ("exact", "attribution", "hybrid", "naive")
PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt", "cap", "cap-wanda", "cap-sparsegpt")  # pruning.methods.METHODS


def _positive(name: str, value, allow_none: bool = False) -> None:
    if not (value is None and allow_none) and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{name}: expected a positive number, got {value!r}")


@dataclass(frozen=True)
class BudgetConfig:
    """How much calibration a device's build may spend."""

    problems: int = 32  # calibration problems in all
    tokens_per_problem: int = 256  # longer prompts are cut from the left
    seconds: float | None = None  # wall-clock cap for scoring; None = no cap
    score_mode: str = "exact"  # exact | attribution | hybrid (hybrid: attribution + exact refinement, cheaper)

    def __post_init__(self):
        if self.score_mode not in ("exact", "attribution", "hybrid"):
            raise ConfigError(f"budget.score_mode: expected exact, attribution or hybrid, got {self.score_mode!r}")
        _positive("budget.problems", self.problems)
        _positive("budget.tokens_per_problem", self.tokens_per_problem)
        _positive("budget.seconds", self.seconds, allow_none=True)


@dataclass(frozen=True)
class ScoreConfig:
    mode: str = "exact"
    subsets: int = 3  # K disjoint calibration subsets; score = median over them
    max_batch_tokens: int = 16384  # rows x tokens per forward when batching head masks
    refine_fraction: float = 0.25  # hybrid: share of the exact-scoring cost spent re-scoring heads exactly

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
    """'unstructured' or 'structured' -> None; 'N:M' -> (N, M) with 0 < N < M."""
    if pattern in ("unstructured", "structured"):
        return None
    m = _NM.match(pattern or "")
    if not m:
        raise ConfigError(f"pattern: expected 'unstructured', 'structured' or 'N:M' (e.g. 2:4, 4:8), got {pattern!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if not 0 < n < mm:
        raise ConfigError(f"pattern {pattern!r}: expected 0 < N < M")
    return n, mm


STRUCTURED_METHODS = ("cap", "magnitude")


@dataclass(frozen=True)
class PruneConfig:
    method: str = "cap"
    # unstructured: share of prunable weights zeroed; N:M fixes its own (1 - N/M); structured: share of all the model's
    # parameters removed (embeddings included in the total, never removed)
    sparsity: float = 0.5
    pattern: str = "unstructured"
    sparsegpt_blocksize: int = 128
    # OBS solve precision: float64 keeps round-off out of masks of near-singular Hessians; float32 agrees on full-rank ones
    sparsegpt_dtype: str = "float64"
    # Hessian methods: damping (share of the mean input energy); CG re-solve of each row's kept weights on its final mask
    # (sparsegpt.refit_on_mask): <= iters steps, stopped once a step gains <= tol x the gain so far, products in ``products``
    # precision. None: the method's default (methods.obs_settings: SparseGPT's 0.01, no refit, but cap-sparsegpt >= 50%)
    sparsegpt_damp: float | None = None
    mask_refit_iters: int | None = None
    mask_refit_tol: float | None = None
    mask_refit_products: str | None = None
    # calibration statistics (Wanda, SparseGPT and their CAP-guided forms): forward passes only, so more problems than
    # scoring needs; 128 give every layer's input full rank on the embedded model (down_proj has 1536 inputs; 32 give ~960)
    stats_problems: int = 128
    dedup_prefix: bool = True  # the chat template's shared prefix counts once in the statistics
    # CAP-guided knobs; None: guidance.default_guidance's value for the method, pattern and target (chosen on validation)
    alloc_bound: float | None = None  # each block's sparsity within target +/- bound
    alloc_bound_share: float | None = None  # ... and within target +/- share x target (None: no such limit)
    alloc_signal: str | None = None  # "cap": blocks ranked by CAP head/channel effect per parameter; "fisher": OBD saliency
    # below this target every CAP guidance (allocation bound, unit strength, token beta) is scaled by (target / ramp) **
    # power (ramp None: full strength): KL grows with every weight the guidance moves (guided_tuning.json, third round)
    guidance_ramp: float | None = 0.5
    guidance_power: float | None = None
    token_beta: float | None = None  # token weights: (1 - beta) + beta * normalised answer-gradient norm
    unit_strength: float | None = None  # cap-wanda: rows/columns scaled by 1 +/- strength by their unit's CAP rank
    guided_blocks: str | None = None  # "all", or "attention" (MLPs pruned as the unguided method; guidance.Guidance)
    # N:M only: share of the prunable parameters kept dense, as whole blocks (a layer's attention or MLP), chosen by
    # ``nm_dense_by``: "cap" (largest CAP head/channel effect per parameter; CAP-guided methods) or "depth" (the earliest
    # blocks; any method, a non-causal control). Effective sparsity (1 - share) x (1 - N/M) is what report and check use.
    nm_dense: float = 0.0
    nm_dense_by: str = "cap"
    # structured only
    scope: str = "global"  # budget across all layers, or the same share from each layer
    min_heads: int = 1  # query heads every layer keeps (0 allows attention-free layers)
    channel_group: int = 32  # MLP channels removed together (quantization blocks stay whole)
    channel_refine: float = 0.1  # share of channel groups re-scored by exact masking
    steps: int = 1  # structured cap: remove the budget in this many steps, re-estimating scores between
    refit: bool = True  # structured: least-squares refit of o_proj/down_proj on calibration activations
    refit_problems: int = 256  # calibration problems the refit sees (forward passes only, so more than scoring)
    refit_damp: float = 1.0  # ridge term of the refit, as a share of the mean input energy (benchmarks/structured.py)

    @property
    def default_guidance(self) -> Guidance:  # what the None knobs resolve to (guidance.default_guidance)
        return default_guidance(self.method, self.nm, self.target_sparsity)

    def knob(self, name: str):  # the field, else its default_guidance value
        return getattr(self.default_guidance, name) if getattr(self, name) is None else getattr(self, name)

    @property
    def guidance_scale(self) -> float:  # the factor on every CAP guidance: min(1, target / ramp) ** power, 1 without a ramp
        power = self.knob("guidance_power")
        return 1.0 if self.guidance_ramp is None else min(1.0, self.target_sparsity / self.guidance_ramp) ** power

    allocation_signal = property(lambda self: self.knob("alloc_signal"))  # resolved: "cap" or "fisher"
    base_alloc_bound = property(lambda self: default_bound(self.default_guidance, self.allocation_signal)  # before the ramp
                                if self.alloc_bound is None else self.alloc_bound)

    @property
    def effective_alloc_bound(self) -> float:  # base_alloc_bound x guidance_scale, capped by alloc_bound_share x target
        b = self.base_alloc_bound * self.guidance_scale
        return b if self.alloc_bound_share is None else min(b, self.alloc_bound_share * self.target_sparsity)

    @property
    def guidance(self) -> dict:  # what the CAP-guided methods apply, resolved (the report and build plan show it)
        s = self.guidance_scale
        return {"scale": s, "alloc_bound": self.effective_alloc_bound, "unit_strength": self.knob("unit_strength") * s,
                "token_beta": self.knob("token_beta") * s, "alloc_signal": self.allocation_signal, "blocks": self.knob("guided_blocks")}

    def __post_init__(self):
        if self.method not in PRUNE_METHODS:
            raise ConfigError(f"method: expected one of {', '.join(PRUNE_METHODS)}, got {self.method!r}")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity: expected a value in [0, 1), got {self.sparsity!r}")
        parse_pattern(self.pattern)
        if self.structured and self.method not in STRUCTURED_METHODS:
            raise ConfigError(f"structured pruning ranks heads and channels by {' or '.join(STRUCTURED_METHODS)}; "
                              f"got method {self.method!r}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope: expected global or layer, got {self.scope!r}")
        for name, least in (("min_heads", 0), ("channel_group", 1), ("steps", 1)):
            _count(name, getattr(self, name), least)
        if not isinstance(self.refit, bool):
            raise ConfigError(f"refit: expected true or false, got {self.refit!r}")
        _positive("refit_problems", self.refit_problems)
        if isinstance(self.refit_damp, bool) or not isinstance(self.refit_damp, (int, float)) or self.refit_damp < 0:
            raise ConfigError(f"refit_damp: expected a number >= 0, got {self.refit_damp!r}")
        _positive("stats_problems", self.stats_problems)
        for name, ok, what in (("mask_refit_iters", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
                               ("sparsegpt_damp", lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"),
                               ("mask_refit_tol", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
                               ("mask_refit_products", lambda v: v in ("float32", "float64"), "float32 or float64")):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not ok(v)):
                raise ConfigError(f"{name}: expected {what} or none, got {v!r}")
        if self.sparsegpt_dtype not in ("float32", "float64"):
            raise ConfigError(f"sparsegpt_dtype: expected float32 or float64, got {self.sparsegpt_dtype!r}")
        for name in ("alloc_bound_share", "guidance_ramp"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1):
                raise ConfigError(f"{name}: expected a value in (0, 1] or none, got {v!r}")
        _positive("guidance_power", self.guidance_power, allow_none=True)
        for name in ("alloc_bound", "token_beta", "unit_strength"):
            v, top = getattr(self, name), 1.0 if name == "token_beta" else 0.99
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= top):
                raise ConfigError(f"{name}: expected a value in [0, {top}], got {v!r}")
        if isinstance(self.nm_dense, bool) or not isinstance(self.nm_dense, (int, float)) or not 0 <= self.nm_dense < 1:
            raise ConfigError(f"nm_dense: expected a share in [0, 1), got {self.nm_dense!r}")
        if self.nm_dense and self.nm is None:
            raise ConfigError(f"nm_dense keeps blocks dense beside an N:M pattern; got pattern {self.pattern!r}")
        for name, allowed in (("nm_dense_by", ("cap", "depth")), ("alloc_signal", ("cap", "fisher")),
                              ("guided_blocks", ("all", "attention"))):  # the guidance knobs may be None (the default's)
            if getattr(self, name) not in allowed and not (name != "nm_dense_by" and getattr(self, name) is None):
                raise ConfigError(f"{name}: expected {' or '.join(allowed)}, got {getattr(self, name)!r}")
        if not isinstance(self.dedup_prefix, bool):
            raise ConfigError(f"dedup_prefix: expected true or false, got {self.dedup_prefix!r}")
        if not 0 <= self.channel_refine <= 1:
            raise ConfigError(f"channel_refine: expected a value in [0, 1], got {self.channel_refine!r}")

    @property
    def structured(self) -> bool:
        return self.pattern == "structured"

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


BUILD_SCORE_MODES = ("exact", "attribution", "hybrid")


def _count(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class BuildConfig:
    """Everything a build needs; the CLI's flags and the Python API both produce one."""

    profile: "DeviceProfile"
    out: str
    model: str | None = None
    calib: str = "embedded"
    calib_draw: int = 0  # which subset of the calibration split (benchmarks repeat builds over draws)
    eval_tasks: str = "embedded"
    eval_per_family: int | None = None  # None: the profile's [search] evaluation sizes; a number overrides all three
    prune: PruneConfig | None = None  # None -> the profile's
    budget: BudgetConfig | None = None  # None -> the profile's
    score_mode: str | None = None  # None: the profile's budget.score_mode
    prompt_tokens: int = 64
    gen_tokens: int = 32
    runs: int = 3
    overwrite: bool = False
    search: bool | None = None  # None: the profile's [search] enabled; False: its fixed [prune] configuration

    def __post_init__(self):
        if not hasattr(self.profile, "export") or not hasattr(self.profile, "hardware"):
            raise ConfigError(f"build: expected a device profile, got {type(self.profile).__name__}")
        if not isinstance(self.out, str) or not self.out.strip():
            raise ConfigError(f"build output directory: expected a path, got {self.out!r}")
        if self.score_mode is not None and self.score_mode not in BUILD_SCORE_MODES:
            raise ConfigError(f"score mode: expected one of {', '.join(BUILD_SCORE_MODES)}, got {self.score_mode!r}")
        if self.prune is not None and not isinstance(self.prune, PruneConfig):
            raise ConfigError(f"build prune: expected a PruneConfig, got {type(self.prune).__name__}")
        if self.budget is not None and not isinstance(self.budget, BudgetConfig):
            raise ConfigError(f"build budget: expected a BudgetConfig, got {type(self.budget).__name__}")
        for name in ("eval_per_family", "prompt_tokens", "gen_tokens", "runs"):
            if getattr(self, name) is not None:
                _count(f"--{name.replace('_', '-')}", getattr(self, name))
        if self.search is not None and not isinstance(self.search, bool):
            raise ConfigError(f"search: expected true, false or None, got {self.search!r}")
        _count("--calib-draw", self.calib_draw, 0)

    @property
    def searching(self) -> bool:
        return self.profile.search.enabled if self.search is None else self.search

    @property
    def search_cfg(self) -> "SearchConfig":
        """The profile's search settings, evaluation sizes overridden by ``eval_per_family``."""
        s = self.profile.search
        if self.eval_per_family is None:
            return s
        n = self.eval_per_family
        return replace(s, knowledge_per_family=n, suite_per_family=n, gen_per_family=n)

    @property
    def prune_cfg(self) -> PruneConfig:
        return self.prune or self.profile.prune

    @property
    def budget_cfg(self) -> BudgetConfig:
        return self.budget or self.profile.budget

    @property
    def scoring_mode(self) -> str:
        return self.score_mode or self.budget_cfg.score_mode

    def outputs(self) -> list[tuple[str, str]]:
        return self.profile.export.pairs()


@dataclass(frozen=True)
class TargetConfig:
    """What a shipped artifact must meet on its device (0 = no target). Speed targets are
    host-measured when the profile's device is the host, roofline-estimated otherwise (labelled)."""

    decode_tok_s_floor: float = 0.0
    ttft_ceiling_s: float = 0.0
    accuracy_floor: float = 0.0  # share of the dense model's accuracy (same output precision) to keep, e.g. 0.9

    def __post_init__(self):
        for name in ("decode_tok_s_floor", "ttft_ceiling_s", "accuracy_floor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"targets.{name}: expected a number >= 0, got {v!r}")
        if self.accuracy_floor > 1:
            raise ConfigError(f"targets.accuracy_floor: expected a share of dense accuracy in [0, 1], got {self.accuracy_floor!r}")


@dataclass(frozen=True)
class SearchConfig:
    """The candidate grid a build evaluates on the host (``cap-edge build --search``)."""

    enabled: bool = True
    levels: tuple[float, ...] = (0.1, 0.2)  # structured removal shares (the dense model is always a candidate)
    # structured unit ranking: cap and/or magnitude. cap by default: over 3 calibration draws it keeps more knowledge
    # accuracy than magnitude at 10% and 30% beyond the draw spread, at 20% within it (benchmarks/results/structured.json)
    selection: tuple[str, ...] = ("cap",)
    nm_methods: tuple[str, ...] = ()  # N:M candidates (the profile's hardware sparse_pattern) by these methods
    refit_problems: int = 128  # structured refit batch per candidate
    knowledge_per_family: int = 50  # held-out problems of each family where the dense model is above chance
    suite_per_family: int = 5  # held-out problems of every family (answer CE)
    gen_per_family: int = 20  # free-answer questions per generation family (retention)

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"search.enabled: expected true or false, got {self.enabled!r}")
        for lv in self.levels:
            if isinstance(lv, bool) or not isinstance(lv, (int, float)) or not 0 < lv < 1:
                raise ConfigError(f"search.levels: expected shares in (0, 1), got {lv!r}")
        for s in self.selection:
            if s not in STRUCTURED_METHODS:
                raise ConfigError(f"search.selection: expected {' or '.join(STRUCTURED_METHODS)}, got {s!r}")
        for m in self.nm_methods:
            if m not in PRUNE_METHODS:
                raise ConfigError(f"search.nm_methods: expected one of {', '.join(PRUNE_METHODS)}, got {m!r}")
        for name in ("refit_problems", "knowledge_per_family", "suite_per_family", "gen_per_family"):
            _count(f"search.{name}", getattr(self, name))
