"""Layer-input statistics for the calibration-based methods, gathered with hooks: Wanda's weighted
squared norms and SparseGPT's weighted Hessian, per-token weights from the answer-loss gradient,
and the rank and condition of each statistic (a rank-deficient Hessian leaves the OBS update to
round-off)."""

from __future__ import annotations

import torch

from ..scoring import CalibBatch, Decoder
from .allocation import shared_prefix_length, token_weights


class InputStats:
    """Forward hooks accumulating per-linear input statistics over weighted tokens.

    ``weights``: per linear's path, each token's weight (N, T) (0 on padding); ``kind``: "norm" (sum w x^2
    per input, Wanda) or "hessian" (sum w x x^T, SparseGPT)."""

    def __init__(self, linears: dict[str, torch.nn.Linear], kind: str, weights: dict[str, torch.Tensor]):
        self.kind = kind
        self.tokens = {p: (w > 0, w[w > 0].double()) for p, w in weights.items()}  # path -> (valid (N, T), weights (tokens,))
        self.sq: dict[str, torch.Tensor] = {}
        self.H: dict[str, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in linears.items()]

    def _hook(self, path):
        valid, w = self.tokens[path]

        def fn(_mod, args, _out):
            x = args[0][valid].double()  # (tokens, in)
            if self.kind == "norm":
                self.sq[path] = self.sq.get(path, 0) + (w[:, None] * x * x).sum(0)
            else:
                self.H[path] = self.H.get(path, 0) + (x * w[:, None]).T @ x
        return fn

    def close(self):
        for h in self._handles:
            h.remove()


def rank_report(H: torch.Tensor, rtol: float = 1e-10) -> dict:
    """Numerical rank and condition number of a symmetric PSD statistic (eigenvalues, float64)."""
    ev = torch.linalg.eigvalsh(H.double()).clamp_min(0)
    top = float(ev.max())
    rank = int((ev > rtol * top).sum()) if top > 0 else 0
    pos = ev[ev > rtol * top]
    return {"dim": H.shape[0], "rank": rank, "full_rank": rank == H.shape[0],
            "condition": float(top / pos.min()) if rank else float("inf")}


def answer_grad_norms(model, batch: CalibBatch, rows_per_chunk: int = 16) -> list[torch.Tensor]:
    """||d(answer CE) / d h_t|| at every layer's input, per row and position: L tensors (N, T).

    The causal signal for the statistics: a position whose state does not reach the answers
    (padding, anything after the last answer token) gets 0."""
    dec = Decoder(model)
    dev = dec.device
    L = len(dec.layers)
    N, T = batch.input_ids.shape
    out = [torch.zeros(N, T, dtype=torch.float64) for _ in range(L)]
    for i in range(0, N, rows_per_chunk):
        part = batch.rows(i, i + rows_per_chunk)
        with torch.enable_grad():
            collect: list[torch.Tensor] = []
            h0 = dec.embed(part.input_ids.to(dev)).detach().requires_grad_(True)
            hf = dec.run(h0, 0, collect=collect)
            loss = dec.answer_nll(hf, part)[0].sum()
            grads = torch.autograd.grad(loss, collect)
        for l, g in enumerate(grads):
            out[l][i:i + part.n] = g.double().norm(dim=-1).cpu()
    return out


def statistic_weights(model, batch: CalibBatch, beta: float, dedup_prefix: bool) -> tuple[list[torch.Tensor], dict]:
    """Per-layer token weights (N, T) and what went into them. beta = 0 and no de-duplication give
    uniform weights (plain Wanda / SparseGPT); the gradient pass runs only when beta > 0."""
    N, T = batch.input_ids.shape
    valid = torch.arange(T)[None] < batch.lengths[:, None]  # (N, T)
    prefix = shared_prefix_length(batch.input_ids, batch.lengths) if dedup_prefix else 0
    L = len(Decoder(model).layers)
    grads = answer_grad_norms(model, batch) if beta > 0 else [torch.ones(N, T, dtype=torch.float64)] * L
    ws = [token_weights(g, valid, beta, prefix) for g in grads]
    info = {"beta": beta, "shared_prefix_tokens": prefix, "tokens": int(valid.sum()),
            "distinct_tokens": int(valid.sum()) - prefix * (N - 1)}
    return ws, info


def answer_saliency(model, batch: CalibBatch, blocks: list[list[torch.nn.Linear]]) -> list[torch.Tensor]:
    """OBD saliency 0.5 F w^2 of every weight of each block, F the diagonal empirical Fisher of the answer
    loss (the sum over calibration rows of each row's squared gradient): one ascending 1-D tensor per block.
    The causal estimate of what pruning a weight costs the answers, to second order at a minimum."""
    dec = Decoder(model)
    weights = [lin.weight for blk in blocks for lin in blk]
    fisher = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    before = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        for i in range(batch.n):  # one row at a time: the Fisher needs per-row gradients, not their sum
            part = batch.rows(i, i + 1)
            if not int(part.tokens.sum()):  # a row without answer tokens has no answer loss to differentiate
                continue
            with torch.enable_grad():
                hf = dec.run(dec.embed(part.input_ids.to(dec.device)), 0)  # (1, T, D)
                grads = torch.autograd.grad(dec.answer_nll(hf, part)[0].sum(), weights)
            for f, g in zip(fisher, grads):
                f += g.float() ** 2
    finally:  # as the model was loaded (for inference: no gradients)
        for w, r in zip(weights, before):
            w.requires_grad_(r)
    out, k = [], 0
    for blk in blocks:
        pairs = zip(fisher[k:k + len(blk)], weights[k:k + len(blk)])
        out.append(torch.cat([(0.5 * f * w.detach().float() ** 2).flatten().cpu() for f, w in pairs]).sort().values)
        k += len(blk)
    return out
