"""CAP scores: the loss of reasoning performance when one attention head (or MLP channel group) is
masked. ``batch`` builds the calibration batch, ``engine`` computes effects, ``cache`` is the
validated score file, ``run`` orchestrates (cache, resume, hybrid refinement)."""

from .batch import CalibBatch, build_calib_batch
from .cache import check_scores, load_scores_file, ranked_units, score_matrix
from .engine import Decoder, ScoringEngine, head_gate, spearman, subset_losses, summarise_effects
from .run import calibrate, compute_scores, score_channels, score_heads, scores_cache_key

__all__ = ["CalibBatch", "build_calib_batch", "check_scores", "load_scores_file", "ranked_units", "score_matrix",
           "Decoder", "ScoringEngine", "head_gate", "spearman", "subset_losses", "summarise_effects", "calibrate",
           "compute_scores", "score_channels", "score_heads", "scores_cache_key"]
