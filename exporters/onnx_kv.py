"""An explicit-KV-cache decoder graph for ONNX, written once over the architecture table.

optimum's exporter builds its dummy KV cache from the config's single head count, so it cannot
export a model whose layers have different head counts (structured pruning), and its graphs have
dynamic shapes, which phone NPUs do not take. ``KVGraph`` runs the model's own modules (norms,
projections, MLP: weights shared, not copied) with attention written out, and exports in two
layouts:

* ``dynamic``: inputs ``input_ids`` (1, T), ``position_ids`` (1, T), ``attention_mask`` (1, P+T),
  ``past_key_values.{i}.key/value`` (1, kv_i, P, hd); outputs ``logits`` (1, T, V) and
  ``present.{i}.key/value`` (1, kv_i, P+T, hd), the same names optimum uses, so
  ``runtimes.onnxruntime.OnnxCausalLM`` drives it.
* ``static``: T and the cache length C fixed; ``attention_mask`` (1, C+T) marks the valid cache
  slots and the real (non-pad) new tokens; outputs ``logits`` and only the new entries
  ``new.{i}.key/value`` (1, kv_i, T, hd), which the driver writes into its cache buffer
  (``runtimes.onnx_static``). No dynamic dimension remains.

* ``padded``: the dynamic layout with every layer's cache at the largest K/V head count of any
  layer (missing heads are zeros, never attended) and present for every layer, attention-free ones
  included: runtimes that allocate one cache shape for all layers (onnxruntime-genai) then run
  structurally pruned models.

A layer left without heads has no cache inputs or outputs (except in ``padded``).
"""

from __future__ import annotations

import torch

from cap_edge.arch import arch_for, get_module, head_geometry
from cap_edge.errors import ExportError
from cap_edge.structure import layer_sizes

OPSET = 17


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's rotate-half RoPE. x (1, n, T, hd); cos/sin (1, 1, T, hd)."""
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _opt(layer, path: str | None):
    return get_module(layer, path) if path else None


class _Block(torch.nn.Module):
    """One decoder layer with the attention written out (its modules shared with the model). What
    differs by architecture comes from the table (``ArchSpec``) and from the attention module's own
    attributes, as the model's forward reads them: ``scaling``, ``sliding_window``, ``is_sliding``
    (Gemma 3: local rotary table), ``q_norm``/``k_norm`` (Gemma 3, Qwen3), ``attn_logit_softcapping``."""

    def __init__(self, layer, spec, nh: int, nkv: int, ff: int, hd: int, static: bool):
        super().__init__()
        self.nh, self.nkv, self.ff, self.hd, self.static = nh, nkv, ff, hd, static
        attn = get_module(layer, spec.attn)
        self.scaling = float(getattr(attn, "scaling", hd ** -0.5))
        self.window = getattr(attn, "sliding_window", None)  # keys within this distance (HF: kv > q - window)
        self.local = bool(spec.rotary_local and getattr(attn, "is_sliding", False))  # reads the local rotary table
        self.softcap = getattr(attn, "attn_logit_softcapping", None)
        if nh > 0:
            self.input_norm = get_module(layer, spec.input_norm)
            self.q, self.k = get_module(layer, spec.q), get_module(layer, spec.k)
            self.v, self.o = get_module(layer, spec.v), get_module(layer, spec.o)
            self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)  # over hd, per head
            self.attn_out_norm = _opt(layer, spec.attn_out_norm)
        if ff > 0:
            self.post_norm = get_module(layer, spec.post_attn_norm)
            self.mlp = get_module(layer, spec.mlp)
            self.mlp_out_norm = _opt(layer, spec.mlp_out_norm)

    def forward(self, h, cos, sin, mask, pk, pv, T):
        """mask (1, 1, T, S): 0/1 to multiply (static) or 0/-inf to add (dynamic)."""
        kv = []
        if self.nh > 0:
            nh, nkv, hd = self.nh, self.nkv, self.hd
            x = self.input_norm(h)
            q = self.q(x).view(1, T, nh, hd).transpose(1, 2)  # (1, nh, T, hd)
            k = self.k(x).view(1, T, nkv, hd).transpose(1, 2)  # (1, kv, T, hd)
            v = self.v(x).view(1, T, nkv, hd).transpose(1, 2)
            if self.q_norm is not None:  # RMSNorm over hd, before RoPE
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
            K = torch.cat([pk, k], dim=2)  # (1, kv, S, hd)
            V = torch.cat([pv, v], dim=2)
            kv = [k, v] if self.static else [K, V]
            r = nh // nkv
            if r > 1:  # grouped-query attention: query head j reads K/V head j // r
                idx = torch.arange(nh, device=h.device) // r  # constant (nh,)
                K = K.index_select(1, idx)  # (1, nh, S, hd)
                V = V.index_select(1, idx)
            att = (q.float() @ K.float().transpose(-1, -2)) * self.scaling  # (1, nh, T, S)
            if self.softcap is not None:
                att = torch.tanh(att / self.softcap) * self.softcap
            if self.static:
                # Masked softmax by multiplication: an additive -inf (or -1e4) mask would make the
                # quantizer's calibrated range of the scores useless; every tensor here stays
                # bounded (exp in [0, 1]), so a QDQ graph keeps the scores' resolution.
                e = torch.exp(att - att.amax(dim=-1, keepdim=True)) * mask  # (1, nh, T, S)
                att = (e / (e.sum(dim=-1, keepdim=True) + 1e-20)).to(V.dtype)
            else:
                att = torch.softmax(att + mask, dim=-1).to(V.dtype)
            y = (att @ V).transpose(1, 2).reshape(1, T, nh * hd)  # (1, T, nh*hd)
            a = self.o(y)  # (1, T, D)
            h = h + (self.attn_out_norm(a) if self.attn_out_norm is not None else a)
        if self.ff > 0:
            m = self.mlp(self.post_norm(h))  # (1, T, D)
            h = h + (self.mlp_out_norm(m) if self.mlp_out_norm is not None else m)
        return h, kv


class KVGraph(torch.nn.Module):
    def __init__(self, model, layout: str = "dynamic", tokens: int | None = None, cache: int | None = None):
        super().__init__()
        if layout not in ("dynamic", "static", "padded"):
            raise ExportError(f"KV graph layout: expected dynamic, static or padded, got {layout!r}")
        spec = arch_for(model)
        self.layout = layout
        self.spec = spec
        self.embed = get_module(model, spec.embed)
        self.norm = get_module(model, spec.final_norm)
        self.lm_head = get_module(model, spec.lm_head)
        # tied embeddings: one (D, V) table serves both the lookup (Gather on axis 1) and the output
        # layer (MatMul), so the file holds one copy instead of the table plus its folded transpose
        self.tied = self.lm_head.weight is self.embed.weight
        if self.tied:
            self.table_t = torch.nn.Parameter(self.embed.weight.detach().t().contiguous(), requires_grad=False)  # (D, V)
        # Gemma 3 scales the looked-up embedding by sqrt(hidden) inside its embedding module
        scale = getattr(self.embed, "embed_scale", None)
        self.embed_scale = None if scale is None else float(scale)
        self.final_softcap = getattr(model.config, "final_logit_softcapping", None)
        ropes = []  # [global] or [global, local]: (inv_freq (hd/2,), attention scaling)
        for path in (spec.rotary, spec.rotary_local):
            if path is None:
                continue
            rotary = get_module(model, path)
            if getattr(rotary, "rope_type", "default") == "dynamic":
                raise ExportError("dynamic RoPE scaling changes with the sequence length; the KV graph exports fixed RoPE only")
            self.register_buffer(f"inv_freq{len(ropes)}", rotary.inv_freq.detach().float().clone(), persistent=False)
            ropes.append(float(getattr(rotary, "attention_scaling", 1.0)))
        self.rope_scales = ropes
        layers = get_module(model, spec.layers)
        self.sizes = layer_sizes(model.config)
        self.hd = head_geometry(model.config).head_dim
        self.attn_layers = [i for i, n in enumerate(self.sizes["num_heads"]) if n > 0]
        self.kv_max = max(self.sizes["num_kv_heads"])
        if layout == "padded":
            self.attn_layers = list(range(len(self.sizes["num_heads"])))  # a cache entry for every layer
        # static layout: sizes are Python constants, so no Shape op reaches a Reshape and ONNX shape
        # inference sees every dimension
        self.static = (tokens, cache) if layout == "static" else None
        # one called module per layer, so exported node names carry the layer ("/blocks.3/q/MatMul")
        self.blocks = torch.nn.ModuleList(
            _Block(layer, spec, self.sizes["num_heads"][i], self.sizes["num_kv_heads"][i],
                   self.sizes["intermediate_size"][i], self.hd, self.static is not None)
            for i, layer in enumerate(layers))

    def io_names(self) -> tuple[list[str], list[str]]:
        past = [f"past_key_values.{i}.{kv}" for i in self.attn_layers for kv in ("key", "value")]
        out = "new" if self.layout == "static" else "present"
        present = [f"{out}.{i}.{kv}" for i in self.attn_layers for kv in ("key", "value")]
        return ["input_ids", "position_ids", "attention_mask", *past], ["logits", *present]

    def forward(self, input_ids, position_ids, attention_mask, *past):
        T = self.static[0] if self.static else input_ids.shape[1]
        if self.tied:
            h = self.table_t.index_select(1, input_ids[0]).t()[None]  # (1, T, D)
            if self.embed_scale is not None:
                h = h * self.embed_scale
        else:
            h = self.embed(input_ids)  # (1, T, D), scaled by the module itself where it scales
        tables = []  # per rotary table: cos, sin (1, 1, T, hd)
        for i, scale in enumerate(self.rope_scales):
            freqs = position_ids[0].float()[:, None] * getattr(self, f"inv_freq{i}")[None, :]  # (T, hd/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
            tables.append(((emb.cos() * scale)[None, None].to(h.dtype), (emb.sin() * scale)[None, None].to(h.dtype)))
        S = sum(self.static) if self.static else attention_mask.shape[1]  # P + T keys
        P = S - T
        # positions, not slot indices: cache slot i holds position i (both drivers fill the cache in
        # order) and the new tokens sit at position_ids; the sliding window needs true distances
        key_pos = torch.cat([torch.arange(P, device=h.device), position_ids[0]])[None, :]  # (1, S)
        query_pos = position_ids[0][:, None]  # (T, 1)
        allowed = (key_pos <= query_pos) & (attention_mask[0][None, :] > 0)  # (T, S): causal and valid
        masks = {}  # per sliding window (None: full attention): (1, 1, T, S)
        for w in {b.window for b in self.blocks}:
            ok = allowed if w is None else allowed & (key_pos > query_pos - w)
            if self.static:
                masks[w] = ok.float()[None, None]  # multiplied inside the softmax
            else:
                masks[w] = torch.where(ok, 0.0, torch.finfo(torch.float32).min)[None, None]  # added
        outputs = []
        it = iter(past)
        for block in self.blocks:
            cos, sin = tables[1 if block.local else 0]
            mask = masks[block.window]
            if self.layout == "padded":
                pk, pv = next(it), next(it)  # (1, kv_max, P, hd)
                if block.nh == 0:  # no attention: the cache only grows by T empty slots
                    h, _ = block(h, cos, sin, mask, None, None, T)
                    pad = pk.new_zeros(1, self.kv_max, T, self.hd)
                    outputs += [torch.cat([pk, pad], dim=2), torch.cat([pv, pad], dim=2)]
                    continue
                h, kv = block(h, cos, sin, mask, pk[:, : block.nkv], pv[:, : block.nkv], T)
                extra = self.kv_max - block.nkv
                if extra:  # (1, kv_i, S, hd) -> (1, kv_max, S, hd): zero heads nobody reads
                    kv = [torch.cat([t, t.new_zeros(1, extra, t.shape[2], self.hd)], dim=1) for t in kv]
                outputs += kv
                continue
            pk, pv = (next(it), next(it)) if block.nh > 0 else (None, None)
            h, kv = block(h, cos, sin, mask, pk, pv, T)
            outputs += kv
        if self.tied:
            logits = self.norm(h) @ self.table_t  # (1, T, V)
        else:
            logits = self.lm_head(self.norm(h))  # (1, T, V)
        if self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return (logits, *outputs)

    def dummy_inputs(self, T: int, past_len: int) -> tuple:
        ids = torch.zeros(1, T, dtype=torch.long)
        pos = torch.arange(past_len, past_len + T)[None]
        mask = torch.ones(1, past_len + T, dtype=torch.long)
        dt = self.embed.weight.dtype
        past = []
        for i in self.attn_layers:
            kv = self.kv_max if self.layout == "padded" else self.sizes["num_kv_heads"][i]
            past += [torch.zeros(1, kv, past_len, self.hd, dtype=dt), torch.zeros(1, kv, past_len, self.hd, dtype=dt)]
        return (ids, pos, mask, *past)


@torch.no_grad()
def export_kv_graph(model, path, layout: str = "dynamic", tokens: int = 1, cache: int = 0) -> None:
    """Trace ``KVGraph(model, layout)`` to ONNX at ``path``. Static: ``tokens`` new tokens over a
    cache of ``cache`` slots, every dimension fixed. Dynamic: batch 1, T and past length free."""
    import warnings

    graph = KVGraph(model.float().eval(), layout, tokens, cache).eval()
    ins, outs = graph.io_names()
    args = graph.dummy_inputs(tokens if layout == "static" else 3, cache if layout == "static" else 2)
    dyn = None
    if layout != "static":
        dyn = {"input_ids": {1: "T"}, "position_ids": {1: "T"}, "attention_mask": {1: "S"}, "logits": {1: "T"}}
        for n in ins[3:]:
            dyn[n] = {2: "P"}
        for n in outs[1:]:
            dyn[n] = {2: "S"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: shapes are fixed per export
        torch.onnx.export(graph, args, str(path), input_names=ins, output_names=outs, dynamic_axes=dyn,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    _constants_to_initializers(path)


def _constants_to_initializers(path) -> None:
    """Turn Constant nodes into initializers: they are data, not ops an execution provider runs, and
    quantizers and op-coverage checks see initializers as such."""
    import onnx

    m = onnx.load(str(path))
    keep = []
    for n in m.graph.node:
        value = next((a for a in n.attribute if a.name == "value"), None) if n.op_type == "Constant" else None
        if value is None:
            keep.append(n)
            continue
        t = onnx.TensorProto()
        t.CopyFrom(value.t)
        t.name = n.output[0]
        m.graph.initializer.append(t)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.save_model(m, str(path))
