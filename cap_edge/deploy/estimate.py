"""Estimates from a model config alone (no weights read): parameters, memory at a precision, and
roofline bounds on the target. All labelled "estimated"; never mixed with host measurements."""

from __future__ import annotations

from pathlib import Path

from ..errors import MemoryBudgetError


def param_count(model_dir_or_config) -> int:
    """Parameters of a model from its config alone (meta device: no weights are read)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import load_config
    from ..structure import is_structured, layer_sizes, shape_model

    cfg = model_dir_or_config if not isinstance(model_dir_or_config, (str, Path)) else load_config(model_dir_or_config)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
        if is_structured(cfg):
            shape_model(m, layer_sizes(cfg))
    return sum(p.numel() for p in m.parameters())


def memory_estimate_mb(config, precision_spec, context: int, params: int) -> dict:
    """Weights at the format's bytes per parameter + fp16 KV cache for ``context`` tokens + 10%."""
    from ..arch import head_geometry
    from ..structure import layer_sizes

    g = head_geometry(config)
    weights = params * precision_spec.bytes_per_param
    kv = 2 * sum(layer_sizes(config)["num_kv_heads"]) * g.head_dim * context * 2  # K and V, fp16, per layer
    total = (weights + kv) * 1.10
    return {"output": precision_spec.name, "precision": precision_spec.precision, "weights_mb": weights / 2**20,
            "kv_cache_mb": kv / 2**20, "total_mb": total / 2**20, "label": "estimated"}


def memory_estimates(config, outputs, context: int) -> list[dict]:
    """One estimate per output spec (parameters counted once)."""
    params = param_count(config)
    return [memory_estimate_mb(config, s, context, params) for s in outputs]


def check_memory(estimates: list[dict], budget_mb: float, device: str) -> None:
    for e in estimates:
        if e["total_mb"] > budget_mb:
            raise MemoryBudgetError(
                f"the model needs about {e['total_mb']:.0f} MB at {e['output']} (weights {e['weights_mb']:.0f} MB + "
                f"KV cache {e['kv_cache_mb']:.0f} MB + 10%), over the {device} memory budget of {budget_mb:.0f} MB")


def roofline(hw, params: int, weight_bytes: int, prompt_tokens: int, pattern: str) -> dict:
    """Lower bounds on the target: decode s/token >= bytes read / bandwidth; prefill >= FLOPs / TOPS,
    with sparse TOPS credited only when the device's runtime exploits this sparsity pattern."""
    sparse_ok = hw.sparse_pattern != "none" and pattern == hw.sparse_pattern
    tops = hw.sparse_tops if sparse_ok else hw.dense_tops
    decode_s = weight_bytes / (hw.memory_bandwidth_gbs * 1e9)
    prefill_s = 2 * params * prompt_tokens / (tops * 1e12)
    return {"label": "estimated", "decode_tok_s_max": 1 / decode_s, "ttft_s_min": prefill_s,
            "prefill_tok_s_max": prompt_tokens / prefill_s, "sparsity_credited": sparse_ok,
            "tops_used": tops, "bandwidth_gbs": hw.memory_bandwidth_gbs}
