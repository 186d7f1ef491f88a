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

A layer left without heads has no cache inputs or outputs.
"""

from __future__ import annotations

import math

import torch

from cap_edge.arch import arch_for, get_module, head_geometry
from cap_edge.errors import ExportError
from cap_edge.structure import layer_sizes

OPSET = 17


class KVGraph(torch.nn.Module):
    def __init__(self, model, layout: str = "dynamic"):
        super().__init__()
        if layout not in ("dynamic", "static"):
            raise ExportError(f"KV graph layout: expected dynamic or static, got {layout!r}")
        spec = arch_for(model)
        self.layout = layout
        self.spec = spec
        self.embed = get_module(model, spec.embed)
        self.norm = get_module(model, spec.final_norm)
        self.head = get_module(model, spec.lm_head)
        rotary = get_module(model, spec.rotary)
        if getattr(rotary, "rope_type", "default") == "dynamic":
            raise ExportError("dynamic RoPE scaling changes with the sequence length; the KV graph exports fixed RoPE only")
        self.register_buffer("inv_freq", rotary.inv_freq.detach().float().clone(), persistent=False)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.layers = get_module(model, spec.layers)
        self.sizes = layer_sizes(model.config)
        self.hd = head_geometry(model.config).head_dim
        self.attn_layers = [i for i, n in enumerate(self.sizes["num_heads"]) if n > 0]

    def io_names(self) -> tuple[list[str], list[str]]:
        past = [f"past_key_values.{i}.{kv}" for i in self.attn_layers for kv in ("key", "value")]
        out = "present" if self.layout == "dynamic" else "new"
        present = [f"{out}.{i}.{kv}" for i in self.attn_layers for kv in ("key", "value")]
        return ["input_ids", "position_ids", "attention_mask", *past], ["logits", *present]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """HF's rotate-half RoPE. x (1, n, T, hd); cos/sin (1, 1, T, hd)."""
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    def forward(self, input_ids, position_ids, attention_mask, *past):
        T = input_ids.shape[1]
        h = self.embed(input_ids)  # (1, T, D)
        freqs = position_ids[0].float()[:, None] * self.inv_freq[None, :]  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        cos = (emb.cos() * self.rope_scale)[None, None].to(h.dtype)  # (1, 1, T, hd)
        sin = (emb.sin() * self.rope_scale)[None, None].to(h.dtype)
        S = attention_mask.shape[1]  # P + T keys
        P = S - T
        key_pos = torch.arange(S, device=h.device)[None, :]  # (1, S)
        query_pos = P + torch.arange(T, device=h.device)[:, None]  # (T, 1)
        allowed = (key_pos <= query_pos) & (attention_mask[0][None, :] > 0)  # (T, S): causal and valid
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]  # (1, 1, T, S)
        outputs = []
        it = iter(past)
        for i, layer in enumerate(self.layers):
            nh, nkv = self.sizes["num_heads"][i], self.sizes["num_kv_heads"][i]
            if nh > 0:
                x = get_module(layer, self.spec.input_norm)(h)
                q = get_module(layer, self.spec.q)(x).view(1, T, nh, self.hd).transpose(1, 2)  # (1, nh, T, hd)
                k = get_module(layer, self.spec.k)(x).view(1, T, nkv, self.hd).transpose(1, 2)  # (1, kv, T, hd)
                v = get_module(layer, self.spec.v)(x).view(1, T, nkv, self.hd).transpose(1, 2)
                q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
                pk, pv = next(it), next(it)  # (1, kv, P, hd)
                K = torch.cat([pk, k], dim=2)  # (1, kv, S, hd)
                V = torch.cat([pv, v], dim=2)
                outputs += [K, V] if self.layout == "dynamic" else [k, v]
                r = nh // nkv
                if r > 1:  # grouped-query attention: query head j reads K/V head j // r
                    K = K.repeat_interleave(r, dim=1)  # (1, nh, S, hd)
                    V = V.repeat_interleave(r, dim=1)
                att = (q.float() @ K.float().transpose(-1, -2)) / math.sqrt(self.hd) + bias  # (1, nh, T, S)
                att = torch.softmax(att, dim=-1).to(V.dtype)
                y = (att @ V).transpose(1, 2).reshape(1, T, nh * self.hd)  # (1, T, nh*hd)
                h = h + get_module(layer, self.spec.o)(y)
            if self.sizes["intermediate_size"][i] > 0:
                h = h + get_module(layer, self.spec.mlp)(get_module(layer, self.spec.post_attn_norm)(h))
        logits = self.head(self.norm(h))  # (1, T, V)
        return (logits, *outputs)

    def dummy_inputs(self, T: int, past_len: int) -> tuple:
        ids = torch.zeros(1, T, dtype=torch.long)
        pos = torch.arange(past_len, past_len + T)[None]
        mask = torch.ones(1, past_len + T, dtype=torch.long)
        dt = self.embed.weight.dtype
        past = []
        for i in self.attn_layers:
            kv = self.sizes["num_kv_heads"][i]
            past += [torch.zeros(1, kv, past_len, self.hd, dtype=dt), torch.zeros(1, kv, past_len, self.hd, dtype=dt)]
        return (ids, pos, mask, *past)


@torch.no_grad()
def export_kv_graph(model, path, layout: str = "dynamic", tokens: int = 1, cache: int = 0) -> None:
    """Trace ``KVGraph(model, layout)`` to ONNX at ``path``. Static: ``tokens`` new tokens over a
    cache of ``cache`` slots, every dimension fixed. Dynamic: batch 1, T and past length free."""
    import warnings

    graph = KVGraph(model.float().eval(), layout).eval()
    # the ONNX scaled-attention check (scaling) is HF's default: 1/sqrt(head_dim)
    attn = get_module(graph.layers[graph.attn_layers[0]], graph.spec.attn) if graph.attn_layers else None
    if attn is not None and abs(getattr(attn, "scaling", 1 / math.sqrt(graph.hd)) - 1 / math.sqrt(graph.hd)) > 1e-9:
        raise ExportError(f"attention scaling {attn.scaling} is not 1/sqrt(head_dim); the KV graph does not support it")
    ins, outs = graph.io_names()
    args = graph.dummy_inputs(tokens if layout == "static" else 3, cache if layout == "static" else 2)
    dyn = None
    if layout == "dynamic":
        dyn = {"input_ids": {1: "T"}, "position_ids": {1: "T"}, "attention_mask": {1: "S"}, "logits": {1: "T"}}
        for n in ins[3:]:
            dyn[n] = {2: "P"}
        for n in outs[1:]:
            dyn[n] = {2: "S"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes: shapes are fixed per export
        torch.onnx.export(graph, args, str(path), input_names=ins, output_names=outs, dynamic_axes=dyn,
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
