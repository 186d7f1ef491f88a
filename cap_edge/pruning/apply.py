"""Orchestration: walk the model through the architecture table, gather layer-input statistics
sequentially (each layer sees the outputs of the already-pruned layers before it), score, mask,
write zeros. The maths lives in ``scores``, ``masks`` and ``sparsegpt``."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..arch import arch_for, get_module, head_geometry, prunable_linears
from ..config import PruneConfig
from ..errors import ConfigError
from ..scoring import CalibBatch, Decoder, check_scores, score_matrix
from .masks import check_achieved, global_threshold, matrix_mask, nm_mask, row_mask
from .methods import get_method
from .scores import cap_score, head_importance, kv_importance, magnitude_score, wanda_score
from .sparsegpt import sparsegpt_prune


def _linears(layer, spec) -> dict[str, torch.nn.Linear]:
    return {path: get_module(layer, path) for path in prunable_linears(spec)}


def _cap_factor(path: str, spec, geom, I_layer: torch.Tensor):
    """(importance, axis) of one linear for CAP: q rows / o columns by query head, k/v rows by KV
    head (mean of the query heads sharing it), MLP by the layer's mean head importance."""
    if path == spec.q:
        return I_layer, 0
    if path in (spec.k, spec.v):
        return kv_importance(I_layer, geom.num_kv_heads), 0
    if path == spec.o:
        return I_layer, 1
    return I_layer.mean(), None


class _InputStats:
    """Forward hooks accumulating per-linear input statistics over valid (non-pad) tokens."""

    def __init__(self, linears: dict[str, torch.nn.Linear], kind: str, valid: torch.Tensor):
        self.kind, self.valid = kind, valid  # valid (B, T) bool
        self.sq: dict[str, torch.Tensor] = {}
        self.H: dict[str, torch.Tensor] = {}
        self.count = 0
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in linears.items()]

    def _hook(self, path):
        def fn(_mod, args, _out):
            x = args[0][self.valid].double()  # (tokens, in)
            if self.kind == "norm":
                self.sq[path] = self.sq.get(path, 0) + (x * x).sum(0)
            else:
                self.H[path] = self.H.get(path, 0) + x.T @ x
        return fn

    def close(self):
        for h in self._handles:
            h.remove()


@torch.no_grad()
def prune_model(model, cfg: PruneConfig, batch: CalibBatch | None = None, head_scores: dict | None = None,
                progress: bool = True, channel_scores: dict | None = None) -> dict:
    """Prune ``model`` in place. Returns a report: per-linear and overall achieved sparsity.
    ``pattern="structured"`` removes whole heads and MLP channel groups instead (``structured``)."""
    if cfg.structured:
        from .structured import prune_structured

        return prune_structured(model, cfg, head_scores, channel_scores, batch=batch, progress=progress)
    method = get_method(cfg.method)
    spec = arch_for(model)
    geom = head_geometry(model.config)
    layers = get_module(model, spec.layers)
    nm = cfg.nm
    target = cfg.target_sparsity
    if method.stats != "none" and batch is None:
        raise ConfigError(f"method {cfg.method!r} needs calibration data")
    I = None
    if method.uses_heads:
        if head_scores is None:
            raise ConfigError(f"method {cfg.method!r} needs CAP head scores")
        check_scores(head_scores, "head scores", num_layers=geom.num_layers, num_units=geom.num_heads, target="heads",
                     require_complete=True)
        I = head_importance(score_matrix(head_scores))  # (L, H) in [1, 10]
    t0 = time.perf_counter()

    def score_of(path, W, l, stats):
        if cfg.method == "magnitude":
            return magnitude_score(W)
        if cfg.method == "cap":
            imp, axis = _cap_factor(path, spec, geom, I[l])
            return cap_score(W, imp, axis, geom.head_dim)
        s = wanda_score(W, stats.sq[path].sqrt())
        if cfg.method == "cap-wanda":
            imp, axis = _cap_factor(path, spec, geom, I[l])
            s = cap_score(s, imp, axis, geom.head_dim)
        return s

    def keep_mask(S):
        if nm is not None:
            return nm_mask(S, *nm)
        return matrix_mask(S, target) if method.group == "matrix" else row_mask(S, target)

    if method.stats == "none":
        all_lin = [(l, p, lin) for l in range(len(layers)) for p, lin in _linears(layers[l], spec).items()]
        scores = [score_of(p, lin.weight.float(), l, None) for l, p, lin in all_lin]
        thr = global_threshold(scores, target) if (method.group == "global" and nm is None) else None
        for (l, p, lin), S in tqdm(list(zip(all_lin, scores)), desc=f"prune {cfg.method}", disable=not progress):
            keep = (S >= thr) if thr is not None else keep_mask(S)
            lin.weight.mul_(keep.to(lin.weight.dtype))
    else:
        dec = Decoder(model)
        ids = batch.input_ids.to(dec.device)
        valid = (torch.arange(ids.shape[1])[None] < batch.lengths[:, None]).to(dec.device)  # (N, T)
        h = dec.embed(ids)  # (N, T, D): the "catcher" step, inputs to layer 0
        for l in tqdm(range(len(layers)), desc=f"prune {cfg.method} (sequential)", disable=not progress):
            lins = _linears(layers[l], spec)
            stats = _InputStats(lins, method.stats, valid)
            try:
                dec.run(h, l, l + 1)  # statistics of this layer's inputs, given pruned earlier layers
            finally:
                stats.close()
            for p, lin in lins.items():
                W = lin.weight.float()
                if method.stats == "hessian":
                    Wn, _ = sparsegpt_prune(W, stats.H[p], target, nm, cfg.sparsegpt_blocksize, cfg.sparsegpt_damp)
                    lin.weight.copy_(Wn.to(lin.weight.dtype))
                else:
                    lin.weight.mul_(keep_mask(score_of(p, W, l, stats)).to(lin.weight.dtype))
            h = dec.run(h, l, l + 1)  # outputs of the pruned layer feed the next
    per = {}
    zeros = total = 0
    for l in range(len(layers)):
        for p, lin in _linears(layers[l], spec).items():
            z = int((lin.weight == 0).sum())
            per[f"{spec.layers}.{l}.{p}"] = {"shape": list(lin.weight.shape), "sparsity": z / lin.weight.numel()}
            zeros += z
            total += lin.weight.numel()
    check_achieved(cfg, target, zeros / total)
    return {"method": cfg.method, "pattern": cfg.pattern, "target_sparsity": target,
            "achieved_sparsity": zeros / total, "prunable_params": total, "seconds": time.perf_counter() - t0,
            "layers": per,
            "never_pruned": "embeddings, norms and the LM head (tied to the embeddings in SmolLM2)"}

