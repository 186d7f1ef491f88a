"""GGUF per architecture: llama.cpp's architecture name, tensor names, the q/k layout, norm storage,
tokenizer kind and extra keys. Sources: llama.cpp ``convert_hf_to_gguf.py`` (LlamaModel,
Gemma3Model) and gguf-py ``tensor_mapping.py``; the graph assumptions each entry must satisfy are
checked by ``check`` and refused with the reason (never a file that computes wrong logits)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from cap_edge.errors import ExportError

# HF name (per layer) -> GGUF name, the Llama layout (gguf-py MODEL_TENSOR.ATTN_Q ...)
LLAMA_LAYERS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
# Gemma 3: q/k norms, a norm after attention and after the MLP; the MLP's input norm is
# pre_feedforward_layernorm (HF) = ffn_norm (GGUF)
GEMMA3_LAYERS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
GLOBAL_MAP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight"}


def _gemma3_checks(cfg) -> None:
    """llama.cpp's gemma3 graph fixes what the config may vary: a global layer every 6th
    (swa pattern 6), local rope base 10000, attention scale 1/sqrt(head_dim), no soft-capping."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(cfg.num_hidden_layers)]
    if list(getattr(cfg, "layer_types", pattern)) != pattern:
        raise ExportError("GGUF gemma3: llama.cpp fixes one global-attention layer every 6 (layer_types); this model differs")
    if float(getattr(cfg, "rope_local_base_freq", 10000.0)) != 10000.0:
        raise ExportError(f"GGUF gemma3: llama.cpp fixes the local rope base at 10000, got {cfg.rope_local_base_freq}")
    if float(getattr(cfg, "query_pre_attn_scalar", hd)) != float(hd):
        raise ExportError(f"GGUF gemma3: llama.cpp scales attention by 1/sqrt(head_dim={hd}); "
                          f"query_pre_attn_scalar is {cfg.query_pre_attn_scalar}")
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(cfg, name, None):
            raise ExportError(f"GGUF gemma3: {name} is not supported by llama.cpp's gemma3 graph")


def _gemma3_keys(w, cfg) -> None:
    w.add_sliding_window(int(cfg.sliding_window))


@dataclass(frozen=True)
class GGUFArch:
    name: str  # llama.cpp architecture
    layers: dict[str, str]
    permute_qk: bool  # HF rotate-half -> llama.cpp's interleaved rope layout (Llama); NEOX-style archs keep it
    norm_shift: float = 0.0  # added to every norm weight on write (Gemma stores w - 1, llama.cpp multiplies by w)
    structured: str | None = None  # llama.cpp architecture for per-layer shapes, or None (refused)
    tokenizer: str = "gpt2"  # "gpt2" (byte-level BPE merges) or "llama" (SentencePiece scores)
    check: Callable = field(default=lambda cfg: None)
    extra_keys: Callable = field(default=lambda w, cfg: None)


LLAMA = GGUFArch("llama", LLAMA_LAYERS, permute_qk=True, structured="deci")
GEMMA3 = GGUFArch("gemma3", GEMMA3_LAYERS, permute_qk=False, norm_shift=1.0, tokenizer="llama",
                  check=_gemma3_checks, extra_keys=_gemma3_keys)
# model_type -> entry. Qwen2 (q/k/v biases) and Qwen3 are separate graphs in llama.cpp: not written here.
GGUF_ARCHS = {"llama": LLAMA, "mistral": LLAMA, "gemma3_text": GEMMA3}


def gguf_arch(cfg, structured: bool) -> GGUFArch:
    try:
        a = GGUF_ARCHS[cfg.model_type]
    except KeyError:
        raise ExportError(f"GGUF export supports {', '.join(sorted(GGUF_ARCHS))}; got {cfg.model_type!r}") from None
    if structured and a.structured is None:
        raise ExportError(f"GGUF {a.name}: per-layer head counts and MLP widths (structured pruning) are not supported by "
                          f"llama.cpp's {a.name} graph; export ONNX instead")
    a.check(cfg)
    return a
