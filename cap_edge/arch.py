"""The one table of per-architecture module paths.

Every loop in cap-edge (scoring, calibration, pruning, export) reaches into a decoder through this
table, so a new Llama-like architecture is one new row here, not new code paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """Attribute paths inside a ``*ForCausalLM`` module (dotted, from the top model)."""

    layers: str = "model.layers"  # ModuleList of decoder layers
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary: str = "model.rotary_emb"  # computes (cos, sin) once per forward
    rotary_local: str | None = None  # a second rotary table for sliding-window layers (Gemma 3)
    call: str = "llama"  # layer-call convention: "llama" (position_embeddings=...) or "gemma3" (global + local, mask per layer type)
    # inside one decoder layer
    attn: str = "self_attn"
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"  # its input is the per-head attention output, (B, T, nh*hd)
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"  # the MLP's input norm
    attn_out_norm: str | None = None  # a norm on the attention output before the residual add (Gemma 3)
    mlp_out_norm: str | None = None  # a norm on the MLP output before the residual add (Gemma 3)
    mlp: str = "mlp"
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"


_LLAMA = ArchSpec()
# Gemma 3 (transformers' modeling_gemma3.py, 4.57): the same projection names; q/k RMSNorms
# (q_norm, k_norm: one head_dim vector shared by every head, so head removal leaves them whole),
# pre/post-attention and pre/post-feed-forward norms (post_attention_layernorm normalises the
# attention output; pre_feedforward_layernorm is the MLP's input norm), a scaled embedding,
# GELU-tanh gated MLP, sliding-window layers with their own rotary table.
_GEMMA3 = ArchSpec(rotary_local="model.rotary_emb_local", call="gemma3", post_attn_norm="pre_feedforward_layernorm",
                   attn_out_norm="post_attention_layernorm", mlp_out_norm="post_feedforward_layernorm")

# model_type (from config.json) -> spec. Sources: transformers' modeling_llama.py,
# modeling_mistral.py, modeling_qwen2.py and modeling_qwen3.py (4.57) name their modules
# identically; Qwen2 adds biases on q/k/v, which the loops treat as part of the rows they belong to;
# Qwen3 adds q/k norms like Gemma 3's. SmolLM ships as model_type "llama". Phi-3 fuses q/k/v
# (qkv_proj) and gate/up (gate_up_proj): refused by name (FUSED) rather than mis-pruned.
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma3_text": _GEMMA3,
}
FUSED = {"phi3": "fused qkv_proj and gate_up_proj (one matrix for q, k and v; one for gate and up)"}


def arch_for(model_or_type) -> ArchSpec:
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        if model_type in FUSED:
            raise UnsupportedArchitectureError(
                f"architecture {model_type!r} is not supported: {FUSED[model_type]}; CAP masks heads and prunes "
                f"rows by the per-projection table (supported: {', '.join(sorted(ARCHITECTURES))})") from None
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    mod = root
    for part in path.split("."):
        mod = getattr(mod, part)
    return mod


@dataclass(frozen=True)
class HeadGeometry:
    num_layers: int
    num_heads: int  # query heads per layer
    num_kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        """Query heads that share one K/V head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads


def head_geometry(config) -> HeadGeometry:
    nh = config.num_attention_heads
    nkv = getattr(config, "num_key_value_heads", None) or nh
    hd = getattr(config, "head_dim", None) or config.hidden_size // nh
    return HeadGeometry(config.num_hidden_layers, nh, nkv, hd)


# Linear sub-modules that pruning touches, in layer order. Embeddings, norms and the LM head are
# never pruned: they are small (norms), shared with the input (tied embeddings), or dominate the
# output distribution (LM head) so that pruning them costs accuracy out of proportion to size.
def prunable_linears(spec: ArchSpec) -> tuple[str, ...]:
    return (spec.q, spec.k, spec.v, spec.o, spec.gate, spec.up, spec.down)
