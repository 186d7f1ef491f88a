"""The score file: one schema for head and channel scores, on disk (``head_scores.json``) and in
the cache, sealed by a content hash and checked against the model on every read.

A result carries its schema version, its target (heads or MLP channel groups), the geometry it was
computed for, the model fingerprint and calibration hash, and ``content_sha256`` over everything
that decides a pruning. ``check_scores`` refuses (``ScoresError``) scores that do not fit: another
schema, edited content, missing or extra layers or units, non-finite values, another model.
``read_cache`` is the one read/resume helper: a valid entry is returned (complete: reuse;
partial: resume), a damaged one is discarded with a warning and recomputed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from ..errors import ScoresError
from ..io import cache_dir, sha256_json, write_json

log = logging.getLogger(__name__)

SCHEMA = "cap-edge/scores"
SCHEMA_VERSION = 2
TARGETS = ("heads", "channels")
# the fields a pruning decision depends on: sealed by content_sha256
_SEALED = ("schema", "schema_version", "target", "complete", "mode", "num_layers", "num_units", "subsets", "layers")


def cache_path(key: str) -> Path:
    return cache_dir() / "scores" / f"{key}.json"


def new_result(target: str, mode: str, num_layers: int, num_units: int, subsets: int, **geometry) -> dict:
    """An empty (incomplete) result. ``geometry``: num_heads, num_kv_heads, head_dim, group, ..."""
    if target not in TARGETS:
        raise ScoresError(f"score target: expected one of {', '.join(TARGETS)}, got {target!r}")
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "target": target, "complete": False, "mode": mode,
            "num_layers": num_layers, "num_units": num_units, "subsets": subsets, **geometry, "layers": {},
            "seconds": 0.0, "layer_forwards": 0}


def head_result(geom, mode: str, subsets: int) -> dict:
    """An empty head-score result for a model of geometry ``geom`` (arch.HeadGeometry)."""
    return new_result("heads", mode, geom.num_layers, geom.num_heads, subsets, num_heads=geom.num_heads,
                      num_kv_heads=geom.num_kv_heads, head_dim=geom.head_dim)


def seal(result: dict) -> dict:
    result["content_sha256"] = sha256_json({k: result.get(k) for k in _SEALED})
    return result


def write_scores(path: str | Path, result: dict) -> Path:
    """Seal and write atomically."""
    return write_json(path, seal(result))


def check_scores(result, where: str, *, num_layers: int | None = None, num_units: int | None = None,
                 target: str | None = None, model_fp: str | None = None, require_complete: bool = False) -> dict:
    """``result`` as read from ``where``, or ScoresError saying what does not fit."""
    if not isinstance(result, dict):
        raise ScoresError(f"{where}: expected a score object, got {type(result).__name__}")
    if result.get("schema") != SCHEMA or result.get("schema_version") != SCHEMA_VERSION:
        raise ScoresError(f"{where}: expected a {SCHEMA} file of schema version {SCHEMA_VERSION}, got "
                          f"{result.get('schema')!r} version {result.get('schema_version')!r} (re-run `cap-edge score`)")
    for key in ("target", "layers", "num_layers", "num_units", "complete", "content_sha256"):
        if key not in result:
            raise ScoresError(f"{where}: required key {key!r} is missing")
    if result["content_sha256"] != sha256_json({k: result.get(k) for k in _SEALED}):
        raise ScoresError(f"{where}: content hash does not match its scores (edited or damaged); re-run `cap-edge score`")
    if target is not None and result["target"] != target:
        raise ScoresError(f"{where}: expected {target} scores, got {result['target']} scores")
    L, U = result["num_layers"], result["num_units"]
    if num_layers is not None and (L, U) != (num_layers, num_units):
        raise ScoresError(f"{where}: scores are for {L} layers x {U} {result['target']}; "
                          f"the model has {num_layers} layers x {num_units}")
    layers = result["layers"]
    if not isinstance(layers, dict):
        raise ScoresError(f"{where}: 'layers' must be an object of layer -> scores")
    extra = sorted(k for k in layers if not (k.isdigit() and int(k) < L))
    if extra:
        raise ScoresError(f"{where}: layer(s) {', '.join(extra[:5])} outside the model's {L} layers")
    for l, units in layers.items():
        if not isinstance(units, list) or len(units) != U:
            raise ScoresError(f"{where}: layer {l}: expected {U} {result['target']}, got "
                              f"{len(units) if isinstance(units, list) else type(units).__name__}")
        for u, d in enumerate(units):
            v = d.get("median") if isinstance(d, dict) else None
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ScoresError(f"{where}: layer {l} unit {u}: score is {v!r}, expected a finite number")
    if result["complete"] and len(layers) != L:
        missing = sorted(set(range(L)) - {int(k) for k in layers})
        raise ScoresError(f"{where}: marked complete but layer(s) {missing[:10]} have no scores")
    if require_complete and not result["complete"]:
        raise ScoresError(f"{where}: scores are incomplete ({len(layers)} of {L} layers; scoring stopped at its "
                          "budget); finish scoring first")
    fp = (result.get("hashes") or {}).get("model")
    if model_fp is not None and fp is not None and fp != model_fp:
        raise ScoresError(f"{where}: scores were computed for model {fp[:12]}…, not this model ({model_fp[:12]}…)")
    return result


def load_scores_file(path: str | Path, **expect) -> dict:
    """A ``head_scores.json`` (or channel scores) given by a user: read and checked, clear errors."""
    path = Path(path)
    if not path.is_file():
        raise ScoresError(f"scores file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ScoresError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected head_scores.json") from e
    except ValueError as e:
        raise ScoresError(f"{path}: not valid JSON ({e}); expected head_scores.json from `cap-edge score`") from e
    return check_scores(data, str(path), **expect)


def read_cache(path: Path, **expect) -> dict | None:
    """A cached result that passes ``check_scores`` (complete or partial), else None. A damaged or
    mismatching entry is removed with a warning, so the caller recomputes it."""
    if not path.is_file():
        return None
    try:
        return check_scores(json.loads(path.read_text(encoding="utf-8")), f"score cache {path}", **expect)
    except (ValueError, UnicodeDecodeError, ScoresError) as e:
        log.warning("discarding invalid score cache entry (%s); recomputing", e)
        path.unlink(missing_ok=True)
        return None


def score_matrix(result: dict, stat: str = "median") -> torch.Tensor:
    """(L, U) tensor of one statistic; NaN where a layer is not scored."""
    L, U = result["num_layers"], result["num_units"]
    m = torch.full((L, U), float("nan"), dtype=torch.float64)
    for l, units in result["layers"].items():
        m[int(l)] = torch.tensor([u[stat] for u in units], dtype=torch.float64)
    return m


def ranked_units(result: dict) -> list[tuple[int, int, float]]:
    """(layer, unit, median) from most to least important."""
    m = score_matrix(result)
    items = [(l, h, float(m[l, h])) for l in range(m.shape[0]) for h in range(m.shape[1]) if m[l, h] == m[l, h]]
    return sorted(items, key=lambda t: -t[2])
