"""GGUF export for llama.cpp, written with the ``gguf`` package's ``GGUFWriter``.

Tensor names and keys follow llama.cpp's ``llama`` architecture (gguf-py ``TensorNameMap`` /
``convert_hf_to_gguf.py``): HF ``q_proj``/``k_proj`` rows are permuted into llama.cpp's rotary
layout. Types F32, F16, Q8_0, Q4_0: symmetric block formats, so a pruned (zero) weight stays zero.
Norms stay F32. Rows whose length is not a multiple of the 32-element block fall back to F16 with a
warning naming them; with tied embeddings the token embedding is also the output layer, so under
Q4_0 it is written Q8_0 (llama.cpp's own quantizer likewise keeps the output layer wider), and so
are ``Q4_0_WIDE`` (attn_v, attn_output, ffn_down), measured as the most sensitive.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from cap_edge.errors import ExportError
from cap_edge.io import atomic_path

from .bundle import Artifact
from .gguf_arch import GLOBAL_MAP, gguf_arch

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "f16", "q8_0", "q4_0")
BLOCK = 32
# Q4_0 keeps these Q8_0. Measured on the CAP 50%-pruned embedded model (mean KL vs PyTorch,
# tolerance 0.5): pure Q4_0 0.914; ffn_down Q8_0 1.125; + attn_v 0.779; + attn_output 0.239
# (111.6 MB vs 91.7 pure Q4_0 and 144.8 Q8_0).
Q4_0_WIDE = ("attn_v", "attn_output", "ffn_down")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotary layout (halves) -> llama.cpp's (interleaved pairs), per head. w (n_head*hd, in)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _qtype(precision: str):
    from gguf import GGMLQuantizationType as Q

    return {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[precision]


def _file_type(precision: str) -> int:
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[precision]


def _tokenizer_fields(model_dir: Path, tokenizer) -> dict:
    tj = model_dir / "tokenizer.json"
    if not tj.is_file():
        raise ExportError(f"{model_dir} has no tokenizer.json: a GGUF needs the model's own BPE tokenizer")
    data = json.loads(tj.read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"{tj}: expected a BPE tokenizer, got {model.get('type')!r}")
    vocab = model["vocab"]
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    n = max(max(vocab.values()), max(added) if added else -1) + 1
    tokens, types = [""] * n, [1] * n  # 1 = normal
    for tok, i in vocab.items():
        tokens[i] = tok
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = 3 if t.get("special") else 4  # control / user-defined
    for i, t in enumerate(tokens):
        if t == "":
            tokens[i], types[i] = f"[PAD{i}]", 5  # unused
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def _spm_fields(source: dict, model_dir: Path) -> dict:
    """SentencePiece tokens, scores and types, read from the source GGUF the model was converted
    from (the Hugging Face tokenizer keeps merges, not the scores llama.cpp's SPM tokenizer needs)."""
    from cap_edge.tokenizer import gguf_fields

    src = source.get("gguf_path")
    if not src or not Path(src).is_file():
        raise ExportError(f"{model_dir}: a SentencePiece GGUF needs the source GGUF's token scores; its path "
                          f"({src!r}) is not recorded or the file is gone")
    f = gguf_fields(src)
    return {"tokens": list(f["tokenizer.ggml.tokens"]), "scores": [float(x) for x in f["tokenizer.ggml.scores"]],
            "types": [int(x) for x in f["tokenizer.ggml.token_type"]]}


def _artifact_name(model_dir: Path, source: dict, metadata: dict | None) -> str:
    """general.name: the source model's name, then the pruning method and sparsity (never a cache hash)."""
    base = source.get("name") or (metadata or {}).get("name") or model_dir.name
    meta = metadata or {}
    method = meta.get("pruning_method")
    if not method or method == "none":
        return str(base)
    return f"{base} {method} {meta.get('sparsity_pattern', '')} {float(meta.get('sparsity', 0)):.2f}".replace("  ", " ")


def export_gguf(model_dir: str | Path, out_dir: str | Path, precision: str = "f16", metadata: dict | None = None,
                output_type: str | None = None, wide: tuple[str, ...] = Q4_0_WIDE) -> Artifact:
    """``wide``: GGUF tensor-name substrings written Q8_0 under Q4_0, the way llama.cpp's own mixes
    keep the most sensitive tensors wider (``wide=()`` gives pure Q4_0)."""
    import gguf
    import torch
    from gguf.quants import quantize
    from transformers import AutoTokenizer

    from cap_edge.gguf_import import source_info
    from cap_edge.models import load_config, load_weights
    from cap_edge.structure import is_structured, layer_sizes

    if precision not in PRECISIONS:
        raise ExportError(f"GGUF type: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cfg = load_config(model_dir)
    structured = is_structured(cfg)
    spec = gguf_arch(cfg, structured)  # refuses what llama.cpp cannot run, with the reason
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except Exception as e:
        raise ExportError(f"{model_dir}: could not load the tokenizer ({e}); a GGUF needs it") from e
    source = source_info(model_dir)
    keys = source.get("keys", {})
    tok = _tokenizer_fields(model_dir, tokenizer) if spec.tokenizer == "gpt2" else _spm_fields(source, model_dir)
    model = load_weights(model_dir, torch.float32)
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    # Per-layer head counts and MLP widths (structured pruning) need llama.cpp's `deci` graph,
    # which reads them as arrays; `llama` assumes equal layers.
    arch = spec.structured if structured else spec.name
    sizes = layer_sizes(cfg)
    if structured:
        check_deci_supported(sizes)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    qtype = _qtype(precision)

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"model.{precision}.gguf"
    fallbacks = []
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(_artifact_name(model_dir, source, metadata))
        for key, value in keys.items():  # license, basename, ... as the source file had them
            if key.startswith("general.") and key not in ("general.quantization_version",):
                w.add_string(key, str(value))
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_hidden_layers)
        if structured:
            w.add_feed_forward_length([int(x) for x in sizes["intermediate_size"]])
            w.add_head_count([int(x) for x in sizes["num_heads"]])
            w.add_head_count_kv([int(x) for x in sizes["num_kv_heads"]])
        else:
            w.add_feed_forward_length(cfg.intermediate_size)
            w.add_head_count(nh)
            w.add_head_count_kv(nkv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_count(hd)
        w.add_rope_freq_base(float(getattr(cfg, "rope_theta", 10000.0)))
        w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(_file_type(precision))
        spec.extra_keys(w, cfg)
        w.add_tokenizer_model(spec.tokenizer)
        w.add_tokenizer_pre(str(keys.get("tokenizer.ggml.pre", source.get("gguf_pre") or
                                         ("gpt-2" if spec.tokenizer == "gpt2" else "default"))))
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        if spec.tokenizer == "gpt2":
            w.add_token_merges(tok["merges"])
        else:
            w.add_token_scores(tok["scores"])
        for setter, tid in ((w.add_bos_token_id, tokenizer.bos_token_id), (w.add_eos_token_id, tokenizer.eos_token_id),
                            (w.add_unk_token_id, tokenizer.unk_token_id), (w.add_pad_token_id, tokenizer.pad_token_id)):
            if tid is not None:
                setter(int(tid))
        w.add_add_bos_token(bool(keys.get("tokenizer.ggml.add_bos_token", getattr(tokenizer, "add_bos_token", False))))
        if "tokenizer.ggml.add_space_prefix" in keys:
            w.add_add_space_prefix(bool(keys["tokenizer.ggml.add_space_prefix"]))
        if precision in ("q8_0", "q4_0"):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if getattr(tokenizer, "chat_template", None):
            w.add_chat_template(tokenizer.chat_template)
        for k, v in (metadata or {}).items():
            if k != "name":
                w.add_string(f"cap_edge.{k}", str(v))

        def put(name: str, data: np.ndarray, want):
            data = np.ascontiguousarray(data, dtype=np.float32)
            if data.ndim == 1 or want == gguf.GGMLQuantizationType.F32:
                w.add_tensor(name, data)
                return
            if want == gguf.GGMLQuantizationType.F16:
                w.add_tensor(name, data.astype(np.float16))
                return
            if data.shape[-1] % BLOCK:
                fallbacks.append(name)
                w.add_tensor(name, data.astype(np.float16))
                return
            w.add_tensor(name, quantize(data, want), raw_dtype=want)

        emb_type = _qtype(output_type) if output_type else (
            gguf.GGMLQuantizationType.Q8_0 if (tied and precision == "q4_0") else qtype)
        put("token_embd.weight", sd["model.embed_tokens.weight"], emb_type)
        put("output_norm.weight", sd["model.norm.weight"] + spec.norm_shift, qtype)
        if not tied and "lm_head.weight" in sd:
            put("output.weight", sd["lm_head.weight"], qtype)
        for i in range(cfg.num_hidden_layers):
            nh_i, nkv_i = sizes["num_heads"][i], sizes["num_kv_heads"][i]
            for hf, gg in spec.layers.items():
                key = f"model.layers.{i}.{hf}"
                if key not in sd:  # an attention-free (n_head 0) or MLP-free (n_ff 0) layer has no such weights
                    if not ((hf.startswith("self_attn.") and nh_i == 0)
                            or (hf.startswith("mlp.") and sizes["intermediate_size"][i] == 0)):
                        raise ExportError(f"expected tensor {key} in {model_dir}, found none")
                    continue
                if (nh_i == 0 and hf == "input_layernorm.weight") or (
                        sizes["intermediate_size"][i] == 0 and gg == "ffn_norm.weight"):
                    continue  # the norm of a removed sub-block has no use
                t = sd[key]
                if "norm" in hf:
                    t = t + spec.norm_shift
                elif spec.permute_qk and hf.startswith("self_attn.q_proj"):
                    t = permute_qk(t, nh_i)
                elif spec.permute_qk and hf.startswith("self_attn.k_proj"):
                    t = permute_qk(t, nkv_i)
                wider = precision == "q4_0" and any(k in gg for k in wide)
                put(f"blk.{i}.{gg}", t, gguf.GGMLQuantizationType.Q8_0 if wider else qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=False)
        w.close()
    if fallbacks:
        warnings.warn(f"GGUF {precision}: rows not a multiple of {BLOCK} elements, written F16 instead: "
                      f"{', '.join(fallbacks)}", RuntimeWarning, stacklevel=2)
    meta = dict(metadata or {})
    meta["f16_fallback_tensors"] = fallbacks
    meta["gguf_arch"] = arch
    if precision == "q4_0":
        meta["q8_0_tensors"] = list(wide)
    return Artifact("gguf", precision, str(path), [str(path)], metadata=meta)


def check_deci_supported(sizes: dict) -> None:
    """Refuse per-layer shapes llama.cpp's deci graph cannot run. Measured with llama-cpp-python
    0.3.36 on the tiny Llama (tests/test_structured.py): uneven head counts and MLP widths match
    PyTorch; an attention-free layer (n_head 0) matches except as layer 0, which fails to load (the
    loader derives the head size from layer 0); a layer with no MLP channels loads but its logits
    differ from PyTorch by ~6, so it is refused. A layer with query heads but no K/V heads is
    llama.cpp's "linear attention" block, not a pruned layer."""
    for i, (nh, nkv, ff) in enumerate(zip(sizes["num_heads"], sizes["num_kv_heads"], sizes["intermediate_size"])):
        if nh and (not nkv or nh % nkv):
            raise ExportError(f"GGUF deci: layer {i} has {nh} query heads over {nkv} K/V heads; llama.cpp needs "
                              "a non-zero K/V head count that divides the query head count")
        if nh == 0 and i == 0:
            raise ExportError("GGUF deci: layer 0 has no attention heads; llama.cpp derives the head size from "
                              "layer 0 and fails to load such a file (keep at least one head in layer 0)")
        if ff == 0:
            raise ExportError(f"GGUF deci: layer {i} has no MLP channels; llama.cpp's deci graph computes such a "
                              "layer wrongly (measured), so it is refused")


def read_back(path: str | Path, config) -> dict[str, np.ndarray]:
    """GGUF tensors dequantized to float32 in HF names and layout (inverse permutation applied)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from cap_edge.structure import is_structured, layer_sizes

    sizes = layer_sizes(config)
    spec = gguf_arch(config, is_structured(config))
    inv_layer = {v: k for k, v in spec.layers.items()}
    inv_global = {v: k for k, v in GLOBAL_MAP.items()}
    out = {}
    for t in GGUFReader(str(path)).tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        data = data.reshape([int(x) for x in reversed(t.shape.tolist())])
        if t.name.startswith("blk."):
            _, i, rest = t.name.split(".", 2)
            hf = inv_layer[rest]
            if "norm" in hf:
                data = data - spec.norm_shift
            elif spec.permute_qk and hf.startswith("self_attn.q_proj"):
                data = unpermute_qk(data, sizes["num_heads"][int(i)])
            elif spec.permute_qk and hf.startswith("self_attn.k_proj"):
                data = unpermute_qk(data, sizes["num_kv_heads"][int(i)])
            out[f"model.layers.{i}.{hf}"] = data
        else:
            out[inv_global[t.name]] = data - (spec.norm_shift if "norm" in t.name else 0.0)
    return out


def quantized_zeros_kept(path: str | Path, state_dict: dict, config) -> dict:
    """Every exact zero of the source stays exactly zero after GGUF quantization."""
    back = read_back(path, config)
    broken = [n for n, t in back.items() if n in state_dict and not (t[np.asarray(state_dict[n]) == 0] == 0).all()]
    checked = sum(1 for n in back if n in state_dict and (np.asarray(state_dict[n]) == 0).any())
    return {"checked_weights": checked, "zeros_broken_in": broken, "ok": checked > 0 and not broken}
