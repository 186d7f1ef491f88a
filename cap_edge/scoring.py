"""CAP head scores: the loss of reasoning performance when one attention head is masked.

Masking head h of layer l zeroes h's slice of the attention output after aggregation, just before
the output projection (o_proj); no weight changes. Performance is the mean token-level
cross-entropy of the gold answers of the calibration problems (teacher-forced). The problems are
split into K disjoint subsets; on each, effect = masked loss - intact loss; the score is the median
over subsets (mean and spread reported too).

Exact engine (all exact up to float round-off):
  * one intact pass stores every layer's input; masking layer l recomputes layers l.. only;
  * the vocabulary projection runs only at gold-answer positions;
  * several head masks run in one forward, one mask per batch row.
Approximate modes: ``attribution`` (gradient x activation of a per-head gate, one forward and one
backward for all heads) and ``hybrid`` (attribution ranks, exact masking refines the heads whose
rank is least certain).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .arch import arch_for, get_module, head_geometry
from .config import BudgetConfig, ScoreConfig, replace
from .errors import ConfigError, ScoringIncomplete, TaskError
from .io import cache_dir, sha256_json, write_json
from .prompts import encode_pair
from .tasks.base import Problem

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ calibration batch

@dataclass
class CalibBatch:
    input_ids: torch.Tensor  # (N, T) right-padded: causal attention never sees the pads
    ans_row: torch.Tensor  # (A,) row of each answer token
    ans_pos: torch.Tensor  # (A,) position whose output predicts it
    ans_tgt: torch.Tensor  # (A,) the gold token id
    subset: torch.Tensor  # (N,) subset index of each row, in [0, K)
    tokens: torch.Tensor  # (N,) answer tokens per row
    lengths: torch.Tensor  # (N,) real (non-pad) tokens per row

    @property
    def n(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, start: int, end: int) -> "CalibBatch":
        """Rows [start, end) as a batch of their own (answer rows renumbered)."""
        end = min(end, self.n)
        keep = (self.ans_row >= start) & (self.ans_row < end)
        return CalibBatch(self.input_ids[start:end], self.ans_row[keep] - start, self.ans_pos[keep], self.ans_tgt[keep],
                          self.subset[start:end], self.tokens[start:end], self.lengths[start:end])

    def fingerprint(self) -> str:
        return sha256_json({"ids": self.input_ids.tolist(), "tgt": self.ans_tgt.tolist(),
                            "pos": self.ans_pos.tolist(), "subset": self.subset.tolist()})


def build_calib_batch(tokenizer, problems: Sequence[Problem], subsets: int, budget: BudgetConfig | None = None,
                      pad_id: int = 0) -> CalibBatch:
    budget = budget or BudgetConfig()
    problems = list(problems)[: budget.problems]
    if not problems:
        raise TaskError("the calibration set is empty: expected at least one problem, got 0")
    if len(problems) < subsets:
        raise TaskError(f"the calibration set is too small: {subsets} subsets need at least {subsets} problems, got {len(problems)}")
    seqs, rows, pos, tgt, counts = [], [], [], [], []
    for r, p in enumerate(problems):
        ctx, ans = encode_pair(tokenizer, p, p.answer)
        keep = max(1, budget.tokens_per_problem - len(ans))
        ctx = ctx[-keep:]  # cut long prompts from the left: the question end and answer stay
        full = ctx + ans
        seqs.append(full[:-1])
        for j, t in enumerate(ans):
            rows.append(r)
            pos.append(len(ctx) - 1 + j)
            tgt.append(t)
        counts.append(len(ans))
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    return CalibBatch(ids, torch.tensor(rows), torch.tensor(pos), torch.tensor(tgt),
                      torch.arange(len(seqs)) % subsets, torch.tensor(counts, dtype=torch.float64),
                      torch.tensor([len(s) for s in seqs]))


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
        self.geom = head_geometry(model.config)

    @property
    def device(self):
        return self.embed.weight.device

    def o_proj(self, layer: int) -> torch.nn.Module:
        return get_module(self.layers[layer], self.spec.o)

    def gated(self, target: str, layer: int) -> torch.nn.Module:
        """The module whose input a unit gate multiplies: o_proj for heads (input (B, T, nh*hd)),
        down_proj for MLP channel groups (input (B, T, I))."""
        return get_module(self.layers[layer], self.spec.o if target == "heads" else self.spec.down)

    def context(self, h: torch.Tensor):
        """(position embeddings, attention mask) for a right-padded batch of hidden states h (B, T, D)."""
        from transformers.masking_utils import create_causal_mask

        B, T, _ = h.shape
        cache_position = torch.arange(T, device=h.device)
        position_ids = cache_position[None]  # (1, T)
        mask = create_causal_mask(config=self.model.config, input_embeds=h, attention_mask=None,
                                  cache_position=cache_position, past_key_values=None, position_ids=position_ids)
        return self.rotary(h, position_ids), mask, position_ids

    def run(self, h: torch.Tensor, start: int, end: int | None = None, collect: list | None = None) -> torch.Tensor:
        pos_emb, mask, position_ids = self.context(h)
        for i in range(start, end if end is not None else len(self.layers)):
            if collect is not None:
                collect.append(h)
            h = self.layers[i](h, attention_mask=mask, position_ids=position_ids, position_embeddings=pos_emb)
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


# ------------------------------------------------------------------ engines

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
        self.intact_rows: torch.Tensor | None = None
        self.forwards = 0  # layer-forwards run, a machine-independent cost measure

    @torch.inference_mode()
    def intact(self) -> torch.Tensor:
        """Run once; keep every layer's input. Returns per-subset intact loss (K,)."""
        if self._inputs is None:
            h0 = self.dec.embed(self.batch.input_ids.to(self.dec.device))  # (N, T, D)
            collect: list[torch.Tensor] = []
            h = self.dec.run(h0, 0, collect=collect)
            self.forwards += len(self.dec.layers)
            self._inputs = collect
            self.intact_rows = self.dec.answer_nll(h, self.batch)[0]
        return subset_losses(self.intact_rows, self.batch, self.K)

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

    @torch.inference_mode()
    def masked_rows(self, layer: int, heads: Sequence[int], target: str = "heads") -> torch.Tensor:
        """Per-row answer NLL with each unit of ``heads`` (heads, or MLP channel groups when
        ``target="channels"``) masked in turn: (len(heads), N)."""
        self.intact()
        n_units, width = self.units(target, layer)
        N, T = self.batch.input_ids.shape
        out = []
        per_fwd = max(1, self.max_batch_tokens // (N * T))
        for i in range(0, len(heads), per_fwd):
            chunk = list(heads)[i: i + per_fwd]
            G = len(chunk)
            gate = torch.ones(G * N, n_units, device=self.dec.device)
            for gi, h in enumerate(chunk):
                gate[gi * N: (gi + 1) * N, h] = 0.0
            x = self._inputs[layer].repeat(G, 1, 1)  # (G*N, T, D): layers before `layer` are unchanged
            with head_gate(self.dec.gated(target, layer), gate, width):
                hf = self.dec.run(x, layer)
            self.forwards += (len(self.dec.layers) - layer) * G
            out.append(self.dec.answer_nll(hf, self.batch, copies=G))
        return torch.cat(out)

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


# ------------------------------------------------------------------ orchestration + cache

def scores_cache_key(model_fp: str, batch: CalibBatch, cfg: ScoreConfig, dtype) -> str:
    return sha256_json({"model": model_fp, "calib": batch.fingerprint(), "config": cfg.key(), "dtype": str(dtype), "v": 1})


def _empty_result(geom, cfg: ScoreConfig) -> dict:
    return {"complete": False, "mode": cfg.mode, "num_layers": geom.num_layers, "num_heads": geom.num_heads,
            "num_kv_heads": geom.num_kv_heads, "head_dim": geom.head_dim, "subsets": cfg.subsets,
            "layers": {}, "seconds": 0.0, "layer_forwards": 0}


def compute_scores(
    model,
    batch: CalibBatch,
    cfg: ScoreConfig,
    *,
    cache_key: str | None = None,
    use_cache: bool = True,
    time_budget_s: float | None = None,
    progress: bool = True,
    on_layer: Callable[[dict], None] | None = None,
) -> dict:
    """Score every head. Exact/naive results are saved after each layer under the cache key, so an
    interrupted or time-limited run resumes where it stopped; a finished result is reused."""
    geom = head_geometry(model.config)
    L, H, K = geom.num_layers, geom.num_heads, cfg.subsets
    path = cache_dir() / "scores" / f"{cache_key}.json" if cache_key else None
    result = _empty_result(geom, cfg)
    if path is not None and use_cache and path.is_file():
        import json

        try:
            cached = json.loads(path.read_text())
            if cached.get("complete"):
                cached["cache_hit"] = True
                return cached
            result = cached  # partial: resume
            log.info("resuming scores from %s (%d of %d layers done)", path, len(result["layers"]), L)
        except ValueError:
            log.warning("ignoring unreadable score cache %s", path)
    result["cache_hit"] = False
    engine = ScoringEngine(model, batch, K, cfg.max_batch_tokens)
    t0 = time.perf_counter()
    prior_seconds = result.get("seconds", 0.0)
    intact = engine.intact()
    result["intact_loss"] = {"subsets": [float(v) for v in intact],
                             "all": float(engine.intact_rows.sum() / batch.tokens.sum())}

    def save():
        result["seconds"] = prior_seconds + time.perf_counter() - t0
        result["layer_forwards"] = result.get("layer_forwards", 0) + engine.forwards
        engine.forwards = 0
        if path is not None:
            write_json(path, result)

    def put(l: int, effects: torch.Tensor, how: list[str] | None = None):
        heads = []
        for h in range(H):
            d = summarise_effects(effects[h])
            if how:
                d["how"] = how[h]
            heads.append(d)
        result["layers"][str(l)] = heads

    if cfg.mode in ("attribution", "hybrid"):
        attr = engine.attribution_effects()  # (L, H, K)
        for l in range(L):
            put(l, attr[l], ["attribution"] * H if cfg.mode == "hybrid" else None)
        if cfg.mode == "hybrid":
            _refine(engine, result, attr, cfg, progress, intact)
        result["complete"] = True
        save()
        return result

    todo = [l for l in range(L) if str(l) not in result["layers"]]
    bar = tqdm(total=L * H, initial=(L - len(todo)) * H, desc=f"CAP {cfg.mode} heads", unit="head", disable=not progress)
    for l in todo:
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            save()
            bar.close()
            raise ScoringIncomplete(
                f"time budget of {time_budget_s:.0f}s reached: scored {len(result['layers'])} of {L} layers "
                f"({len(result['layers']) * H} of {L * H} heads); partial result kept in the cache, rerun to resume",
                partial_path=path,
            )
        if cfg.mode == "naive":
            rows = torch.stack([engine.naive_rows(l, h) for h in range(H)])
        else:
            rows = engine.masked_rows(l, range(H))  # (H, N)
        effects = subset_losses(rows, batch, K).cpu() - intact.cpu()[None]  # (H, K)
        put(l, effects)
        save()  # Ctrl-C now loses at most the layer in progress
        bar.update(H)
        if on_layer:
            on_layer(result)
    bar.close()
    result["complete"] = True
    save()
    return result


def _refine(engine: ScoringEngine, result: dict, attr: torch.Tensor, cfg: ScoreConfig, progress: bool, intact,
            target: str = "heads") -> None:
    """Exactly re-score the heads whose attribution rank is least certain: the largest estimated
    effects (where a first-order estimate is least accurate) and those whose subsets disagree most."""
    L, H, _ = attr.shape
    med = attr.median(dim=-1).values.abs().reshape(-1)
    spread = (attr.max(-1).values - attr.min(-1).values).reshape(-1)
    # rank-normalised uncertainty: each criterion in [0, 1], take the larger
    r1 = med.argsort().argsort().double() / (L * H)
    r2 = spread.argsort().argsort().double() / (L * H)
    unc = torch.maximum(r1, r2)
    n = int(round(cfg.refine_fraction * L * H))
    chosen = unc.argsort(descending=True)[:n].tolist()
    by_layer: dict[int, list[int]] = {}
    for idx in chosen:
        by_layer.setdefault(idx // H, []).append(idx % H)
    bar = tqdm(total=n, desc=f"CAP hybrid refine ({target})", unit="unit", disable=not progress)
    for l, heads in sorted(by_layer.items()):
        rows = engine.masked_rows(l, heads, target)
        eff = subset_losses(rows, engine.batch, engine.K).cpu() - intact.cpu()[None]
        for h, e in zip(heads, eff):
            d = summarise_effects(e)
            d["how"] = "exact"
            result["layers"][str(l)][h] = d
        bar.update(len(heads))
    bar.close()
    result["refined_heads" if target == "heads" else "refined_units"] = n


def score_matrix(result: dict, stat: str = "median") -> torch.Tensor:
    """(L, H) tensor of one statistic (H heads, or channel groups for channel scores); NaN where a
    layer is not scored."""
    L, H = result["num_layers"], result.get("num_units", result.get("num_heads"))
    m = torch.full((L, H), float("nan"), dtype=torch.float64)
    for l, heads in result["layers"].items():
        m[int(l)] = torch.tensor([h[stat] for h in heads], dtype=torch.float64)
    return m


def heatmap_png(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    m = score_matrix(result).numpy()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * m.shape[1] + 2), max(4, 0.22 * m.shape[0] + 1.5)))
    lim = float(abs(m[~(m != m)]).max()) if (m == m).any() else 1.0
    im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"CAP head scores ({result['mode']}): median Δ answer CE when masked")
    fig.colorbar(im, ax=ax, label="Δ cross-entropy (nats)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _calibrate(model, tokenizer, problems: Sequence[Problem], cfg: ScoreConfig, budget: BudgetConfig,
               model_fp: str | None) -> tuple[CalibBatch, str, torch.dtype, str]:
    """Calibration batch, model fingerprint, dtype and the head-score cache key (shared by head and
    channel scoring)."""
    from .models import model_fingerprint

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = build_calib_batch(tokenizer, problems, cfg.subsets, budget, pad_id=pad)
    model_fp = model_fp or model_fingerprint(model)
    dtype = next(model.parameters()).dtype
    return batch, model_fp, dtype, scores_cache_key(model_fp, batch, cfg, dtype)


def score_heads(model, tokenizer, problems: Sequence[Problem], cfg: ScoreConfig, budget: BudgetConfig | None = None,
                *, force: bool = False, progress: bool = True, model_fp: str | None = None,
                distributed: bool = False, head_group: int | None = None) -> dict | None:
    """Calibration batch -> cache key -> scores (reused when cached unless ``force``)."""
    budget = budget or BudgetConfig()
    batch, model_fp, dtype, key = _calibrate(model, tokenizer, problems, cfg, budget, model_fp)
    if distributed:
        if cfg.mode != "exact":
            raise ConfigError(f"distributed scoring runs the exact mode; got {cfg.mode!r}")
        from .distributed import distributed_scores

        done = cache_dir() / "scores" / f"{key}.json"
        if not force and done.is_file() and json.loads(done.read_text()).get("complete"):
            from .distributed import world

            if world()[0] != 0:
                return None
            result = json.loads(done.read_text())
            result["cache_hit"] = True
            result["hashes"] = {"model": model_fp, "calibration": batch.fingerprint(), "cache_key": key}
            return result
        if force:
            from .distributed import barrier, world

            if world()[0] == 0:  # one rank clears; the others wait, or they could delete fresh jobs
                import shutil

                shutil.rmtree(done.with_suffix(".jobs"), ignore_errors=True)
                done.unlink(missing_ok=True)
            barrier()
        result = distributed_scores(model, batch, cfg, key, progress=progress, head_group=head_group)
        if result is None:  # not rank 0
            return None
        result["cache_hit"] = False
    else:
        result = compute_scores(model, batch, cfg, cache_key=key, use_cache=not force,
                                time_budget_s=budget.seconds, progress=progress)
    result["hashes"] = {"model": model_fp, "calibration": batch.fingerprint(), "cache_key": key}
    result["config"] = {**cfg.key(), "problems": batch.n, "tokens_per_problem": budget.tokens_per_problem,
                        "answer_tokens": int(batch.tokens.sum()), "dtype": str(dtype),
                        "device": str(next(model.parameters()).device)}
    return result


def score_channels(model, tokenizer, problems: Sequence[Problem], cfg: ScoreConfig, budget: BudgetConfig | None = None,
                   *, group: int = 32, refine_fraction: float = 0.1, force: bool = False, progress: bool = True,
                   model_fp: str | None = None) -> dict:
    """CAP scores of MLP channel groups (``group`` consecutive intermediate channels, masked at
    down_proj's input): a first-order ranking for every group (one forward + backward), then the
    ``refine_fraction`` least certain groups re-scored by exact masking. Cached like head scores."""
    budget = budget or BudgetConfig()
    batch, model_fp, dtype, head_key = _calibrate(model, tokenizer, problems, cfg, budget, model_fp)
    key = sha256_json({"scores": head_key, "target": "channels", "group": group, "refine": refine_fraction})
    path = cache_dir() / "scores" / f"{key}.json"
    if path.is_file() and not force:
        try:
            cached = json.loads(path.read_text())
            if cached.get("complete"):
                cached["cache_hit"] = True
                return cached
        except ValueError:
            log.warning("ignoring unreadable channel-score cache %s", path)
    t0 = time.perf_counter()
    engine = ScoringEngine(model, batch, cfg.subsets, cfg.max_batch_tokens, channel_group=group)
    G, _ = engine.units("channels")
    intact = engine.intact()
    attr = engine.attribution_effects("channels")  # (L, G, K)
    L = attr.shape[0]
    result = {"complete": False, "target": "channels", "mode": "attribution+exact", "num_layers": L, "num_units": G,
              "group": group, "subsets": cfg.subsets, "layers": {},
              "intact_loss": {"subsets": [float(v) for v in intact], "all": float(engine.intact_rows.sum() / batch.tokens.sum())}}
    for l in range(L):
        result["layers"][str(l)] = [{**summarise_effects(attr[l, g]), "how": "attribution"} for g in range(G)]
    _refine(engine, result, attr, replace(cfg, refine_fraction=refine_fraction), progress, intact, target="channels")
    result["complete"] = True
    result["seconds"] = time.perf_counter() - t0
    result["layer_forwards"] = engine.forwards
    result["hashes"] = {"model": model_fp, "calibration": batch.fingerprint(), "cache_key": key}
    write_json(path, result)
    result["cache_hit"] = False
    return result


def ranked_heads(result: dict) -> list[tuple[int, int, float]]:
    """(layer, head, median) from most to least important."""
    m = score_matrix(result)
    items = [(l, h, float(m[l, h])) for l in range(m.shape[0]) for h in range(m.shape[1]) if m[l, h] == m[l, h]]
    return sorted(items, key=lambda t: -t[2])
