"""Structured pruning: physically remove attention heads and MLP channels.

Pure parts (unit-tested on random tensors): ``attention_options`` enumerates what one layer's
attention may shrink to, ``plan_structure`` allocates a parameter budget across layers greedily by
score lost per parameter removed. Model surgery (``apply_structure``) slices the weights through the
architecture table; ``shape_model`` rebuilds the per-layer shapes of a saved structured model.

Grouped-query rule. In both PyTorch (``repeat_kv``) and llama.cpp, query head j of a layer reads
K/V head j // r where r = n_head / n_head_kv is the same for every group of the layer. So a layer
keeps g whole K/V groups and the same number r of query heads in each (1 <= r <= original group
size). A K/V head therefore stays exactly while some of its query heads stay, and removing all of a
group's query heads removes its K/V head too. Giving groups unequal query counts would need
duplicated K/V heads (more parameters and KV cache, not fewer), so it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .arch import arch_for, get_module, head_geometry
from .errors import ConfigError

CONFIG_KEY = "cap_edge_structure"  # in config.json: per-layer sizes, enough to rebuild the shapes


@dataclass(frozen=True)
class LayerStructure:
    heads: tuple[int, ...]  # kept query heads (original indices), grouped by K/V head in order
    kv_heads: tuple[int, ...]  # kept K/V heads (original indices)
    channels: tuple[int, ...]  # kept MLP intermediate channels (original indices)

    def channel_groups(self, group: int) -> list[int]:
        """Indices of the kept groups of ``group`` consecutive MLP channels."""
        return sorted({c // group for c in self.channels})


@dataclass(frozen=True)
class AttnOption:
    g: int  # K/V groups kept
    r: int  # query heads kept per group
    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    removed_score: float  # sum of the scores of the removed query heads
    params: int  # attention parameters kept


def attn_params(g: int, r: int, hidden: int, head_dim: int) -> int:
    """q and o: r*g heads x hd x D each; k and v: g heads x hd x D each (biases ignored)."""
    return 2 * g * r * head_dim * hidden + 2 * g * head_dim * hidden


def attention_options(scores: torch.Tensor, num_kv: int, hidden: int, head_dim: int,
                      allow_empty: bool = False) -> list[AttnOption]:
    """Every (g, r) shape one layer's attention may take, each with its best heads: within a group
    the r highest-scoring query heads, then the g groups whose kept heads score highest.
    scores (H,) -> options, largest first."""
    H = scores.numel()
    gs = H // num_kv
    s = scores.double().view(num_kv, gs)  # (n_kv, group size)
    total = float(s.sum())
    order = s.argsort(dim=1, descending=True)  # (n_kv, gs): best query heads first, per group
    opts = []
    for r in range(1, gs + 1):
        kept_in_group = s.gather(1, order[:, :r]).sum(1)  # (n_kv,)
        gorder = kept_in_group.argsort(descending=True).tolist()
        for g in range(1, num_kv + 1):
            groups = sorted(gorder[:g])
            heads = tuple(kv * gs + int(h) for kv in groups for h in sorted(order[kv, :r].tolist()))
            opts.append(AttnOption(g, r, heads, tuple(groups), total - float(kept_in_group[groups].sum()),
                                   attn_params(g, r, hidden, head_dim)))
    if allow_empty:
        opts.append(AttnOption(0, 0, (), (), total, 0))
    return sorted(opts, key=lambda o: -o.params)


def plan_structure(head_scores: torch.Tensor, channel_scores: torch.Tensor, *, num_kv: int, hidden: int,
                   head_dim: int, group: int, remove_params: int | dict, min_heads: int = 1,
                   min_channels: int | None = None, scope: str = "global") -> list[LayerStructure]:
    """Choose what to remove. head_scores (L, H) and channel_scores (L, G) are the loss increases
    when a unit is masked (any scale where larger = more important; CAP uses Δ answer CE, so heads
    and channel groups compete on one scale). ``remove_params`` is a parameter count, or
    {"attn": n, "mlp": n} to budget the two kinds separately. Greedy: repeatedly take the move
    (a layer's attention to a smaller shape, or one more channel group out) with the least score
    lost per parameter removed. ``scope="layer"`` removes the same share from every layer.
    """
    L, H = head_scores.shape
    Lc, G = channel_scores.shape
    if Lc != L:
        raise ConfigError(f"head scores cover {L} layers, channel scores {Lc}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"structured scope: expected global or layer, got {scope!r}")
    min_channels = group if min_channels is None else min_channels
    if min_heads < 0 or min_channels < 0:
        raise ConfigError("min_heads and min_channels must be >= 0")
    opts = [attention_options(head_scores[l], num_kv, hidden, head_dim, allow_empty=min_heads == 0) for l in range(L)]
    for l in range(L):
        opts[l] = [o for o in opts[l] if len(o.heads) >= min_heads]
    ch_order = [channel_scores[l].double().argsort().tolist() for l in range(L)]  # least important first
    per_group = 3 * group * hidden  # gate + up rows, down columns
    max_groups_out = G - -(-min_channels // group)  # ceil: keep at least min_channels
    attn_at = [0] * L  # index into opts[l]
    ch_out = [0] * L

    def attn_move(l):
        cur = opts[l][attn_at[l]]
        best = None
        for j in range(attn_at[l] + 1, len(opts[l])):
            o = opts[l][j]
            dp = cur.params - o.params
            if dp <= 0:
                continue
            ratio = (o.removed_score - cur.removed_score) / dp
            if best is None or ratio < best[0]:
                best = (ratio, j, dp)
        return best

    def mlp_move(l):
        if ch_out[l] >= max_groups_out:
            return None
        return (float(channel_scores[l, ch_order[l][ch_out[l]]]) / per_group, None, per_group)

    def run(layers, kinds, budget):
        removed = 0
        while removed < budget:
            best = None
            for l in layers:
                for kind in kinds:
                    m = attn_move(l) if kind == "attn" else mlp_move(l)
                    if m is not None and (best is None or m[0] < best[0]):
                        best = (m[0], kind, l, m[1], m[2])
            if best is None:
                raise ConfigError(f"cannot remove {budget} parameters within the limits (at least {min_heads} "
                                  f"head(s) and {min_channels} MLP channels per layer); removed {removed}")
            _, kind, l, j, dp = best
            if kind == "attn":
                attn_at[l] = j
            else:
                ch_out[l] += 1
            removed += dp
        return removed

    if isinstance(remove_params, dict):
        unknown = set(remove_params) - {"attn", "mlp"}
        if unknown:
            raise ConfigError(f"remove_params: unknown kind(s) {sorted(unknown)}; expected attn, mlp")
        for kind, n in remove_params.items():
            run(range(L), [kind], n)
    elif scope == "global":
        run(range(L), ["attn", "mlp"], remove_params)
    else:
        for l in range(L):
            run([l], ["attn", "mlp"], remove_params / L)
    out = []
    for l in range(L):
        o = opts[l][attn_at[l]]
        kept = sorted(ch_order[l][ch_out[l]:])
        channels = tuple(c * group + i for c in kept for i in range(group))
        out.append(LayerStructure(o.heads, o.kv_heads, channels))
    return out


def structure_sizes(layers: list[LayerStructure]) -> dict:
    return {"num_heads": [len(s.heads) for s in layers], "num_kv_heads": [len(s.kv_heads) for s in layers],
            "intermediate_size": [len(s.channels) for s in layers]}


# ------------------------------------------------------------------ model surgery

class NoAttention(torch.nn.Module):
    """A layer whose heads were all removed: contributes nothing to the residual stream. It still
    records a zero-head K/V entry so the cache's sequence length stays right for later layers."""

    def __init__(self, layer_idx: int, head_dim: int):
        super().__init__()
        self.layer_idx, self.head_dim = layer_idx, head_dim

    def forward(self, hidden_states, past_key_values=None, cache_position=None, **kwargs):
        B, T, _ = hidden_states.shape
        if past_key_values is not None:
            empty = hidden_states.new_zeros(B, 0, T, self.head_dim)  # (B, 0 heads, T, hd)
            past_key_values.update(empty, empty, self.layer_idx, {"cache_position": cache_position})
        return torch.zeros_like(hidden_states), None


class NoMLP(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def _sliced(lin: torch.nn.Linear, rows=None, cols=None) -> torch.nn.Linear:
    W = lin.weight
    if rows is not None:
        W = W[rows]
    if cols is not None:
        W = W[:, cols]
    b = lin.bias
    if b is not None and rows is not None:
        b = b[rows]
    new = torch.nn.Linear(W.shape[1], W.shape[0], bias=b is not None, device=W.device, dtype=W.dtype)
    with torch.no_grad():
        new.weight.copy_(W)
        if b is not None:
            new.bias.copy_(b)
    return new


def _set(root, path: str, module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, name, module)


def _rows(units, width: int) -> torch.Tensor:
    return torch.tensor([u * width + i for u in units for i in range(width)], dtype=torch.long)


@torch.no_grad()
def apply_structure(model, layers: list[LayerStructure], allow_empty: bool = False) -> dict:
    """Remove heads and channels from ``model`` in place. Returns the sizes written to its config.
    A layer left with no heads or no MLP channels is refused unless ``allow_empty``."""
    spec = arch_for(model)
    geom = head_geometry(model.config)
    decoder = get_module(model, spec.layers)
    if len(layers) != len(decoder):
        raise ConfigError(f"structure has {len(layers)} layers, the model {len(decoder)}")
    if is_structured(model.config):
        raise ConfigError("the model is already structurally pruned; prune the original model instead")
    hd = geom.head_dim
    if not allow_empty:
        empty = [f"layer {l} ({'no heads' if not st.heads else 'no MLP channels'})"
                 for l, st in enumerate(layers) if not st.heads or not st.channels]
        if empty:
            raise ConfigError(f"refusing to remove every head or MLP channel of {', '.join(empty)}; "
                              "pass allow_empty (min_heads=0) to make attention-free layers")
    for l, (layer, st) in enumerate(zip(decoder, layers)):
        if st.heads:
            if len(st.heads) % len(st.kv_heads):
                raise ConfigError(f"layer {l}: {len(st.heads)} query heads do not split evenly over {len(st.kv_heads)} K/V heads")
            r = len(st.heads) // len(st.kv_heads)
            for j, h in enumerate(st.heads):  # query head j must belong to K/V head st.kv_heads[j // r]
                if h // geom.group_size != st.kv_heads[j // r]:
                    raise ConfigError(f"layer {l}: query head {h} is not in K/V group {st.kv_heads[j // r]}")
            q_rows, kv_rows = _rows(st.heads, hd), _rows(st.kv_heads, hd)
            _set(layer, spec.q, _sliced(get_module(layer, spec.q), rows=q_rows))
            _set(layer, spec.k, _sliced(get_module(layer, spec.k), rows=kv_rows))
            _set(layer, spec.v, _sliced(get_module(layer, spec.v), rows=kv_rows))
            _set(layer, spec.o, _sliced(get_module(layer, spec.o), cols=q_rows))
            get_module(layer, spec.attn).num_key_value_groups = r
        else:
            _set(layer, spec.attn, NoAttention(l, hd))
        if st.channels:
            ch = torch.tensor(st.channels, dtype=torch.long)
            _set(layer, spec.gate, _sliced(get_module(layer, spec.gate), rows=ch))
            _set(layer, spec.up, _sliced(get_module(layer, spec.up), rows=ch))
            _set(layer, spec.down, _sliced(get_module(layer, spec.down), cols=ch))
        else:
            _set(layer, spec.mlp, NoMLP())
    sizes = structure_sizes(layers)
    setattr(model.config, CONFIG_KEY, sizes)
    return sizes


def shape_model(model, sizes: dict) -> None:
    """Give a freshly built model the per-layer shapes in ``sizes`` (weights are loaded after).
    Heads and channels kept are the first ones: the saved weights are already compacted."""
    geom = head_geometry(model.config)
    layers = []
    for nh, nkv, ff in zip(sizes["num_heads"], sizes["num_kv_heads"], sizes["intermediate_size"]):
        r = nh // nkv if nkv else 0
        layers.append(LayerStructure(tuple(kv * geom.group_size + i for kv in range(nkv) for i in range(r)),
                                     tuple(range(nkv)), tuple(range(ff))))
    if len(layers) != geom.num_layers:
        raise ConfigError(f"{CONFIG_KEY} lists {len(layers)} layers; the config has {geom.num_layers}")
    setattr(model.config, CONFIG_KEY, None)
    apply_structure(model, layers, allow_empty=True)


def layer_sizes(config) -> dict:
    """Per-layer head counts and MLP widths of any model config (structured or uniform)."""
    sizes = getattr(config, CONFIG_KEY, None)
    if sizes:
        return sizes
    geom = head_geometry(config)
    return {"num_heads": [geom.num_heads] * geom.num_layers, "num_kv_heads": [geom.num_kv_heads] * geom.num_layers,
            "intermediate_size": [config.intermediate_size] * geom.num_layers}


def is_structured(config) -> bool:
    return bool(getattr(config, CONFIG_KEY, None))


def magnitude_unit_scores(model, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The magnitude baseline: a head's ‖W_q rows‖·‖W_o columns‖ and a channel group's
    ‖W_gate rows‖·‖W_up rows‖·‖W_down columns‖ (Frobenius). (L, H), (L, I/group)."""
    spec = arch_for(model)
    geom = head_geometry(model.config)
    hd = geom.head_dim
    hs, cs = [], []
    for layer in get_module(model, spec.layers):
        q = get_module(layer, spec.q).weight.float()  # (H*hd, D)
        o = get_module(layer, spec.o).weight.float()  # (D, H*hd)
        hs.append(q.view(geom.num_heads, hd, -1).norm(dim=(1, 2)) * o.view(o.shape[0], geom.num_heads, hd).norm(dim=(0, 2)))
        g = get_module(layer, spec.gate).weight.float()  # (I, D)
        u = get_module(layer, spec.up).weight.float()
        d = get_module(layer, spec.down).weight.float()  # (D, I)
        n = g.shape[0] // group
        cs.append(g.view(n, group, -1).norm(dim=(1, 2)) * u.view(n, group, -1).norm(dim=(1, 2))
                  * d.view(d.shape[0], n, group).norm(dim=(0, 2)))
    return torch.stack(hs), torch.stack(cs)


def refit_columns(weight: torch.Tensor, hessian: torch.Tensor, keep: torch.Tensor, damp: float = 1.0) -> torch.Tensor:
    """Least-squares repair of a linear layer whose input units ``~keep`` are removed.

    weight (out, in), hessian (in, in) = sum over calibration tokens of x x^T, keep (in,) bool.
    Returns (out, in): removed columns exactly zero, kept columns W_K + W_R H_RK (H_KK + λI)^-1,
    the minimiser of ||W x - W' x||^2 summed over the tokens plus λ||W'_K - W_K||^2. The removed
    units' mean contribution and whatever of it the kept units can express goes into the kept
    columns, so the layer's output moves less than by zeroing alone. λ = damp * mean(diag H_KK):
    with few tokens H_KK is near singular and a bare solve would overfit the calibration set.
    """
    out_f, in_f = weight.shape
    if hessian.shape != (in_f, in_f):
        raise ConfigError(f"refit: expected a ({in_f}, {in_f}) Hessian, got {tuple(hessian.shape)}")
    if keep.shape != (in_f,) or keep.dtype != torch.bool:
        raise ConfigError(f"refit: expected a bool keep mask of shape ({in_f},), got {keep.dtype} {tuple(keep.shape)}")
    if damp < 0:
        raise ConfigError(f"refit: expected damp >= 0, got {damp}")
    K = keep.nonzero().squeeze(1)  # (k,)
    R = (~keep).nonzero().squeeze(1)  # (r,)
    W = weight.detach().double()
    H = hessian.detach().double()
    new = torch.zeros_like(W)  # (out, in)
    if K.numel() == 0:
        return new.to(weight.dtype)
    Hkk = H[K][:, K]  # (k, k)
    lam = damp * Hkk.diagonal().mean().clamp_min(1e-12)
    Hkk = Hkk + lam * torch.eye(K.numel(), dtype=H.dtype, device=H.device)
    rhs = H[K][:, R] @ W[:, R].T  # (k, out) = H_KR W_R^T
    new[:, K] = W[:, K] + torch.linalg.solve(Hkk, rhs).T  # (out, k)
    return new.to(weight.dtype)
