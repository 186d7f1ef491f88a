"""The CAP engine: masked-head (and MLP channel group) effects on the calibration loss.

Masking unit u of layer l zeroes u's slice of the input of o_proj (heads) or down_proj (channel
groups), no weight changes. Exact: one intact pass stores every layer's input; masking layer l
recomputes layers l.. only; the vocabulary projection runs only at gold-answer positions; several
masks run in one forward, one per batch row. Attribution: gradient x activation of a per-unit gate
(one forward and one backward for all units). Pure statistics (subset losses, medians, Spearman)
are at the top; no caching or orchestration here (``run.py``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..arch import arch_for, get_module, head_geometry
from ..batching import length_batches, shared_prefix
from ..errors import ConfigError
from .batch import CalibBatch


# ------------------------------------------------------------------ pure statistics

def subset_losses(row_nll: torch.Tensor, batch: CalibBatch, K: int) -> torch.Tensor:
    """Token-level mean CE per subset. row_nll (..., N) -> (..., K)."""
    sub = batch.subset.to(row_nll.device)
    tok = batch.tokens.to(row_nll.device)
    num = torch.stack([row_nll[..., sub == k].sum(-1) for k in range(K)], dim=-1)
    den = torch.stack([tok[sub == k].sum() for k in range(K)])
    return num / den


def summarise_effects(effects: torch.Tensor) -> dict:
    """effects (K,) -> median (the score), mean, spread (max - min), per-subset values."""
    e = effects.double().cpu()
    return {"median": float(e.median()) if e.numel() % 2 else float(e.sort().values[e.numel() // 2 - 1: e.numel() // 2 + 1].mean()),
            "mean": float(e.mean()), "spread": float(e.max() - e.min()), "subsets": [float(v) for v in e]}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        t = torch.tensor(list(x), dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for v in t.unique():  # average tied ranks
            m = t == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt(float((ra * ra).sum() * (rb * rb).sum())))


# ------------------------------------------------------------------ decoder access

class Decoder:
    """Runs a decoder layer range on cached hidden states, through the architecture table."""

    def __init__(self, model):
        self.model = model
        spec = arch_for(model)
        self.spec = spec
        self.layers = get_module(model, spec.layers)
        self.embed = get_module(model, spec.embed)
        self.norm = get_module(model, spec.final_norm)
        self.head = get_module(model, spec.lm_head)
        self.rotary = get_module(model, spec.rotary)
        self.rotary_local = get_module(model, spec.rotary_local) if spec.rotary_local else None
        self.geom = head_geometry(model.config)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    @property
    def device(self):
        return self.embed.weight.device

    def o_proj(self, layer: int) -> torch.nn.Module:
        return get_module(self.layers[layer], self.spec.o)

    def gated(self, target: str, layer: int) -> torch.nn.Module:
        """The module whose input a unit gate multiplies: o_proj for heads (input (B, T, nh*hd)),
        down_proj for MLP channel groups (input (B, T, I))."""
        return get_module(self.layers[layer], self.spec.o if target == "heads" else self.spec.down)

    def _masks(self, h: torch.Tensor, cache_position, position_ids) -> dict:
        """Attention masks by layer type ("full_attention", "sliding_attention") for a right-padded batch."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        kw = dict(config=self.model.config, input_embeds=h, attention_mask=None, cache_position=cache_position,
                  past_key_values=None, position_ids=position_ids)
        masks = {"full_attention": create_causal_mask(**kw)}
        if self.spec.call == "gemma3":
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        return masks

    def _kwargs(self, h: torch.Tensor, position_ids, masks: dict) -> list[dict]:
        """Per-layer keyword arguments, by the architecture's layer-call convention (arch.ArchSpec.call)."""
        if self.spec.call == "gemma3":  # global and local rotary embeddings; a mask per layer type
            glob, loc = self.rotary(h, position_ids), self.rotary_local(h, position_ids)
            return [{"position_embeddings_global": glob, "position_embeddings_local": loc, "position_ids": position_ids,
                     "attention_mask": masks.get(getattr(layer, "attention_type", "full_attention"), masks["full_attention"])}
                    for layer in self.layers]
        pe = self.rotary(h, position_ids)
        return [{"position_embeddings": pe, "position_ids": position_ids, "attention_mask": masks["full_attention"]}] * len(self.layers)

    def context(self, h: torch.Tensor) -> list[dict]:
        """Per-layer call arguments for a right-padded batch of hidden states h (B, T, D) at positions 0.."""
        B, T, _ = h.shape
        cache_position = torch.arange(T, device=h.device)
        position_ids = cache_position[None]  # (1, T)
        return self._kwargs(h, position_ids, self._masks(h, cache_position, position_ids))

    def layer(self, i: int, h: torch.Tensor, kwargs: dict, **extra) -> torch.Tensor:
        out = self.layers[i](h, **kwargs, **extra)
        return out[0] if isinstance(out, tuple) else out  # some decoder layers return (hidden, attentions)

    def prefix_cache(self, h: torch.Tensor, start: int):
        """Run layers ``start``.. on a shared prefix h (B, P, D) at positions 0..P-1 and return
        the KV cache those layers wrote (the rows' continuations read it)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        ctx = self.context(h)
        cpos = torch.arange(h.shape[1], device=h.device)
        for i in range(start, len(self.layers)):
            h = self.layer(i, h, ctx[i], past_key_values=cache, use_cache=True, cache_position=cpos)
        return cache

    def run_after(self, h: torch.Tensor, start: int, cache, offset: int) -> torch.Tensor:
        """Run layers ``start``.. on h (B, T', D) at positions offset.. over ``cache`` (the prefix's
        K/V, already one row per row of h). Every key is visible to every later query: callers keep
        offset + T' within any sliding window (``sliding_window``)."""
        B, T, _ = h.shape
        cpos = torch.arange(offset, offset + T, device=h.device)
        position_ids = cpos[None]  # (1, T')
        keys = torch.arange(offset + T, device=h.device)[None]  # (1, P + T')
        allowed = keys <= cpos[:, None]  # (T', P + T'): causal, the prefix visible to every position
        mask = torch.zeros(allowed.shape, dtype=h.dtype, device=h.device).masked_fill(~allowed, torch.finfo(h.dtype).min)
        masks = {"full_attention": mask[None, None], "sliding_attention": mask[None, None]}
        ctx = self._kwargs(h, position_ids, masks)
        for i in range(start, len(self.layers)):
            h = self.layer(i, h, ctx[i], past_key_values=cache, use_cache=True, cache_position=cpos)
        return h

    @property
    def sliding_window(self) -> int | None:
        return getattr(self.model.config, "sliding_window", None) if self.spec.call == "gemma3" else None

    def run(self, h: torch.Tensor, start: int, end: int | None = None, collect: list | None = None) -> torch.Tensor:
        ctx = self.context(h)
        for i in range(start, end if end is not None else len(self.layers)):
            if collect is not None:
                collect.append(h)
            h = self.layer(i, h, ctx[i])
        return h

    def answer_nll(self, h_final: torch.Tensor, batch: CalibBatch, copies: int = 1) -> torch.Tensor:
        """Per-row sum of answer-token NLL from final hidden states h_final (copies*N, T, D) -> (copies, N)."""
        N = batch.n
        dev = h_final.device
        rows = (batch.ans_row.to(dev)[None] + N * torch.arange(copies, device=dev)[:, None]).reshape(-1)  # (copies*A,)
        pos = batch.ans_pos.to(dev).repeat(copies)
        tgt = batch.ans_tgt.to(dev).repeat(copies)
        hid = self.norm(h_final[rows, pos])  # (copies*A, D): only the answer positions
        logits = self.head(hid).float()  # (copies*A, V); with a device_map, on the head's device
        if self.softcap:  # Gemma-style final logit soft-capping
            logits = torch.tanh(logits / self.softcap) * self.softcap
        nll = F.cross_entropy(logits, tgt.to(logits.device), reduction="none").double().to(dev)
        out = torch.zeros(copies * N, dtype=torch.float64, device=dev)
        out.index_add_(0, rows, nll)
        return out.view(copies, N)


@contextlib.contextmanager
def head_gate(o_proj: torch.nn.Module, gate: torch.Tensor, head_dim: int):
    """Multiply o_proj's input (B, T, nh*hd) by a per-row, per-head gate (B, nh) while active."""

    def pre(_mod, args):
        x = args[0]
        B, T, C = x.shape
        g = gate.to(device=x.device, dtype=x.dtype).repeat_interleave(head_dim, dim=1)  # (B, nh*hd), on the layer's device
        return (x * g[:, None, :],) + tuple(args[1:])

    handle = o_proj.register_forward_pre_hook(pre)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------ engine

class ScoringEngine:
    """Exact, naive and attribution head effects for one model and one calibration batch."""

    def __init__(self, model, batch: CalibBatch, K: int, max_batch_tokens: int = 16384, channel_group: int = 32):
        self.dec = Decoder(model)
        self.batch = batch
        self.K = K
        self.max_batch_tokens = max_batch_tokens
        self.g = self.dec.geom
        self.channel_group = channel_group
        self._inputs: list[torch.Tensor] | None = None
        self._row_buckets, self._prefix = None, 0  # list | None, int: set by the exact path's first call
        self.intact_rows: torch.Tensor | None = None
        self.forwards = 0  # layer-forwards run, a machine-independent cost measure

    @torch.inference_mode()
    def intact(self) -> torch.Tensor:
        """Run once; keep every layer's input (``layer_input``). Returns per-subset intact loss (K,)."""
        if self._inputs is None:
            collect: list[torch.Tensor] = []  # assigned only once complete
            h = self.dec.run(self.dec.embed(self.batch.input_ids.to(self.dec.device)), 0, collect=collect)  # (N, T, D)
            self.forwards += len(self.dec.layers)
            self._inputs, self.intact_rows = collect, self.dec.answer_nll(h, self.batch)[0]
        return subset_losses(self.intact_rows, self.batch, self.K)

    def layer_input(self, layer: int) -> torch.Tensor:
        self.intact()
        return self._inputs[layer]  # (N, T, D): the intact forward's input to ``layer``

    def units(self, target: str, layer: int = 0) -> tuple[int, int]:
        """(units per layer, width of a unit) for ``heads`` or MLP ``channels`` (groups)."""
        if target == "heads":
            return self.g.num_heads, self.g.head_dim
        if target != "channels":
            raise ConfigError(f"scoring target: expected heads or channels, got {target!r}")
        width = self.dec.gated("channels", layer).in_features
        if width % self.channel_group:
            raise ConfigError(f"MLP width {width} is not a multiple of the channel group {self.channel_group}")
        return width // self.channel_group, self.channel_group

    def _buckets(self) -> list[tuple[torch.Tensor, int]]:
        """Rows grouped by length (under 10% padding), each with its longest length: a masked pass
        never computes the padding of another row's length."""
        if self._row_buckets is None:
            lengths = self.batch.lengths.tolist()
            order = sorted(range(len(lengths)), key=lambda r: lengths[r])
            self._row_buckets = [(torch.tensor(b), max(lengths[r] for r in b))
                                 for b in length_batches(order, lengths, 10**9, max_rows=10**9, max_pad=0.10)]
            self._prefix = shared_prefix([tuple(r) for r in self.batch.input_ids[:, : int(self.batch.lengths.min())].tolist()])
            self._prefix = min(self._prefix, int(self.batch.ans_pos.min()))  # every answer read after the prefix
            window = self.dec.sliding_window
            if window and int(self.batch.lengths.max()) > window:  # run_after assumes every key is in the window
                self._prefix = 0
        return self._row_buckets

    @torch.inference_mode()
    def masked_rows(self, layer: int, heads: Sequence[int], target: str = "heads") -> torch.Tensor:
        """Per-row answer NLL with each unit of ``heads`` (heads, or MLP channel groups when
        ``target="channels"``) masked in turn: (len(heads), N).

        Exact, and cheaper than one padded forward of the whole batch per mask: rows run in length
        buckets, and the prefix every row shares (the chat template's system turn) runs once per
        mask; each row's continuation reads its K/V."""
        self.intact()
        n_units, width = self.units(target, layer)
        N = self.batch.n
        P = self._prefix if self._buckets() else 0
        out = torch.zeros(len(heads), N, dtype=torch.float64, device=self.dec.device)
        mod = self.dec.gated(target, layer)
        for idx, T in self._row_buckets:
            n = len(idx)
            sub = self.batch.select(idx, T, P)
            per_fwd = max(1, self.max_batch_tokens // (n * (T - P)))
            for i in range(0, len(heads), per_fwd):
                chunk = list(heads)[i: i + per_fwd]
                G = len(chunk)
                gate = torch.ones(G, n_units, device=self.dec.device)
                gate[torch.arange(G), torch.tensor(chunk)] = 0.0  # copy g masks unit chunk[g]
                x = self._inputs[layer][idx.to(self.dec.device), P:T].repeat(G, 1, 1)  # (G*n, T-P, D), g-major
                if P:
                    with head_gate(mod, gate, width):  # the prefix once per mask: (G, P, D)
                        cache = self.dec.prefix_cache(self._inputs[layer][:1, :P].repeat(G, 1, 1), layer)
                    cache.batch_repeat_interleave(n)  # (G*n, ...): copy g's prefix for each of its rows
                    with head_gate(mod, gate.repeat_interleave(n, dim=0), width):
                        hf = self.dec.run_after(x, layer, cache, P)
                else:
                    with head_gate(mod, gate.repeat_interleave(n, dim=0), width):
                        hf = self.dec.run(x, layer)
                out[i: i + G][:, idx] = self.dec.answer_nll(hf, sub, copies=G)  # (G, n)
        self.forwards += (len(self.dec.layers) - layer) * len(heads)
        return out

    @torch.inference_mode()
    def naive_rows(self, layer: int, head: int) -> torch.Tensor:
        """The reference: a full model forward with full-vocabulary logits, one head hooked."""
        model = self.dec.model
        ids = self.batch.input_ids.to(self.dec.device)
        gate = torch.ones(ids.shape[0], self.g.num_heads, device=self.dec.device)
        gate[:, head] = 0.0
        with head_gate(self.dec.o_proj(layer), gate, self.g.head_dim):
            logits = model(input_ids=ids).logits  # (N, T, V)
        self.forwards += len(self.dec.layers)
        b = self.batch
        nll = F.cross_entropy(logits[b.ans_row, b.ans_pos].float(), b.ans_tgt.to(ids.device), reduction="none").double()
        out = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
        return out.index_add_(0, b.ans_row.to(ids.device), nll)

    def attribution_effects(self, target: str = "heads", fixed: dict | None = None) -> torch.Tensor:
        """First-order estimate of masked - intact loss per (layer, unit, subset): (L, H, K).

        A gate g (N, H) of ones multiplies each unit's output (a head's slice of o_proj's input, or
        a group of MLP channels at down_proj's input); zeroing g[:, h] changes the loss by about
        -dL/dg[:, h]. Summing the gradient over a subset's rows gives that subset's effect, because
        rows of a batch do not interact.
        """
        L = len(self.dec.layers)
        H, width = self.units(target)
        b = self.batch
        N, T = b.input_ids.shape
        dev = self.dec.device
        fixed = fixed or {}
        # ``fixed`` = {target: (L, units) 0/1 mask}: units already removed stay masked, so the
        # estimates are for the model as it is now (iterative structured pruning)
        base = fixed.get(target)
        start = [(base[l].to(dev).float() if base is not None else torch.ones(H, device=dev)) for l in range(L)]
        # the loss is a sum over rows (each row weighted by 1 / its subset's answer tokens), so the
        # gradient of every row can be taken in row chunks: a backward keeps every layer's
        # activations, about 4x a forward's memory, hence a quarter of the forward token budget
        sub = b.subset.to(dev)
        den = torch.stack([b.tokens.to(dev)[sub == k].sum() for k in range(self.K)])  # (K,)
        weight = 1.0 / den[sub]  # (N,)
        rows_per = max(1, self.max_batch_tokens // 4 // T)
        grads = [torch.zeros(N, H, dtype=torch.float64, device=dev) for _ in range(L)]
        for i in range(0, N, rows_per):
            part = b.rows(i, i + rows_per)
            n = part.n
            gates = [start[l].expand(n, H).clone().requires_grad_(True) for l in range(L)]
            with contextlib.ExitStack() as stack:
                for l in range(L):
                    stack.enter_context(head_gate(self.dec.gated(target, l), gates[l], width))
                    for other, mask in fixed.items():
                        if other != target:
                            _, w = self.units(other, l)
                            stack.enter_context(head_gate(self.dec.gated(other, l), mask[l].float().expand(n, -1), w))
                with torch.enable_grad():
                    hf = self.dec.run(self.dec.embed(part.input_ids.to(dev)), 0)  # (n, T, D)
                    loss = (self.dec.answer_nll(hf, part)[0] * weight[i:i + n]).sum()
                    for l, g in enumerate(torch.autograd.grad(loss, gates)):
                        grads[l][i:i + n] = g.double()
        self.forwards += 3 * L  # forward + backward (about twice a forward)
        eff = torch.stack([torch.stack([-g[sub == k].sum(0) for k in range(self.K)], dim=-1) for g in grads])  # (L, H, K)
        return eff.double().cpu()
