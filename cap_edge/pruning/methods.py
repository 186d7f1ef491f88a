"""The pruning-method registry: one row per method, naming the statistics it needs and how its
scores are compared. Adding a method is one pure score function plus one row here."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    stats: str  # calibration statistics of layer inputs: "none" | "norm" (Wanda) | "hessian" (SparseGPT)
    uses_heads: bool  # needs CAP head scores
    group: str  # unstructured comparison group: "matrix" | "row" | "global" | "sparsegpt"
    doc: str


METHODS: dict[str, Method] = {
    "magnitude": Method("magnitude", "none", False, "matrix", "|W|, lowest pruned per matrix"),
    "wanda": Method("wanda", "norm", False, "row", "|W_ij|·‖X_j‖₂ compared within each output row (Sun et al., 2023)"),
    "sparsegpt": Method("sparsegpt", "hessian", False, "sparsegpt", "OBS reconstruction with the inverse Hessian (Frantar & Alistarh, 2023)"),
    "cap": Method("cap", "none", True, "global", "|W_ij|·I(h), one global threshold (CAP)"),
    "cap-wanda": Method("cap-wanda", "norm", True, "row", "|W_ij|·‖X_j‖₂·I(h) compared within each output row"),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown pruning method {name!r}; known: {', '.join(METHODS)}") from None
