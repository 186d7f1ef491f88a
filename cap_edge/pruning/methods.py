"""The pruning-method registry: one row per method, naming the statistics it needs, how its scores
are compared and which causal signal it uses. Adding a method is one pure score function plus one
row here."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    stats: str  # calibration statistics of layer inputs: "none" | "norm" (Wanda) | "hessian" (SparseGPT)
    uses_heads: bool  # needs CAP head scores
    uses_channels: bool  # needs CAP MLP channel-group scores
    group: str  # unstructured comparison group: "matrix" | "row" | "global" | "sparsegpt"
    guided: bool  # CAP-guided: per-block allocation, per-unit factors (Wanda), answer-gradient token weights
    doc: str


METHODS: dict[str, Method] = {
    "magnitude": Method("magnitude", "none", False, False, "matrix", False, "|W|, lowest pruned per matrix"),
    "wanda": Method("wanda", "norm", False, False, "row", False,
                    "|W_ij|·‖X_j‖₂ compared within each output row (Sun et al., 2023)"),
    "sparsegpt": Method("sparsegpt", "hessian", False, False, "sparsegpt", False,
                        "OBS reconstruction with the inverse Hessian (Frantar & Alistarh, 2023)"),
    "cap": Method("cap", "none", True, False, "global", False, "|W_ij|·I(h), one global threshold (the CAP paper's rule)"),
    "cap-wanda": Method("cap-wanda", "norm", True, True, "row", True,
                        "Wanda inside each matrix; sparsity allocated over layers' attention/MLP by CAP head and "
                        "channel scores; rows/columns weighted by their unit's CAP score; answer-gradient token weights"),
    "cap-sparsegpt": Method("cap-sparsegpt", "hessian", True, True, "sparsegpt", True,
                            "SparseGPT inside each matrix; CAP-guided allocation; Hessian weighted by each token's "
                            "answer-loss gradient"),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown pruning method {name!r}; known: {', '.join(METHODS)}") from None
