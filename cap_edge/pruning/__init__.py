"""Weight-level pruning: magnitude, Wanda, SparseGPT, CAP and CAP-Wanda; unstructured and N:M."""

from .apply import prune_model
from .masks import global_threshold, matrix_mask, nm_mask, row_mask, sparsity_of
from .methods import METHODS, get_method
from .scores import cap_score, head_importance, kv_importance, magnitude_score, wanda_score
from .sparsegpt import sparsegpt_prune
from .structured import prune_structured, refit_batch

__all__ = ["prune_model", "global_threshold", "matrix_mask", "nm_mask", "row_mask", "sparsity_of", "METHODS",
           "get_method", "cap_score", "head_importance", "kv_importance", "magnitude_score", "wanda_score",
           "sparsegpt_prune", "prune_structured", "refit_batch"]
