"""Architectures as data: tiny random Qwen2, Qwen3 (q/k norm), Mistral and Gemma 3 (q/k norm, four
norms per layer, scaled embedding, GELU MLP, sliding-window layers) through scoring (exact =
naive), masking, every pruning method, structured surgery and reload, and ONNX export; Phi-3's
fused projections refused by name."""

import json

import pytest
import torch

from cap_edge.arch import head_geometry
from cap_edge.config import PruneConfig, ScoreConfig
from cap_edge.errors import UnsupportedArchitectureError
from cap_edge.prune_io import save_pruned
from cap_edge.pruning import prune_model
from cap_edge.scoring import ScoringEngine, build_calib_batch, compute_scores, score_channels, score_matrix, subset_losses
from cap_edge.tasks import load_split

from conftest import VOCAB_SIZE


def tiny(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    common = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False)
    if arch == "qwen2":
        from transformers import Qwen2Config as C
    elif arch == "qwen3":
        from transformers import Qwen3Config as C
    elif arch == "mistral":
        from transformers import MistralConfig as C
        common["sliding_window"] = None
    elif arch == "gemma3_text":
        from transformers import Gemma3TextConfig as C
        common.update(sliding_window=16, layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
                      tie_word_embeddings=True)
    elif arch == "phi3":
        from transformers import Phi3Config as C
        common.pop("head_dim")
    torch.manual_seed(seed)
    cfg = C(**common)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random init is tiny (std 0.02); scale up so heads have distinguishable effects
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    return model


ARCHS = ["qwen2", "qwen3", "mistral", "gemma3_text"]


def _batch(tok, n=6):
    return build_calib_batch(tok, load_split("embedded", "calib", 1)[:n], 3)


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_scores_equal_naive_and_masks_equal_zeroed_columns(arch, tokenizer):
    model = tiny(arch)
    batch = _batch(tokenizer)
    exact = score_matrix(compute_scores(model, batch, ScoreConfig(mode="exact"), progress=False))
    naive = score_matrix(compute_scores(model, batch, ScoreConfig(mode="naive"), progress=False))
    assert (exact - naive).abs().max() <= 1e-5 and exact.abs().max() > 1e-3
    masked = subset_losses(ScoringEngine(model, batch, 3).masked_rows(1, [2]), batch, 3)[0]
    ref = tiny(arch)
    with torch.no_grad():
        ref.model.layers[1].self_attn.o_proj.weight[:, 2 * 16:3 * 16] = 0
    assert torch.allclose(masked, ScoringEngine(ref, batch, 3).intact(), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "cap", "cap-wanda", "cap-sparsegpt"])
def test_every_method_keeps_shapes(arch, method, tokenizer):
    model = tiny(arch)
    batch = _batch(tokenizer)
    heads = compute_scores(model, batch, ScoreConfig(), progress=False)
    chans = score_channels(model, tokenizer, load_split("embedded", "calib", 1)[:6], ScoreConfig(), refine_fraction=0.5,
                           progress=False)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    rep = prune_model(model, PruneConfig(method=method, sparsity=0.5), batch, heads, channel_scores=chans, progress=False)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert abs(rep["achieved_sparsity"] - 0.5) <= 0.01


@pytest.mark.parametrize("arch", ARCHS)
def test_structured_surgery_saves_reloads_and_exports(arch, tokenizer, tmp_path):
    import cap_edge
    from transformers import AutoModelForCausalLM

    from cap_edge.deploy.export import export_artifact

    model = tiny(arch)
    batch = _batch(tokenizer)
    rep = prune_model(model, PruneConfig(method="magnitude", pattern="structured", sparsity=0.2), batch, progress=False)
    assert sum(rep["sizes"]["num_heads"]) < 8 or sum(rep["sizes"]["intermediate_size"]) < 256
    d = save_pruned(model, tokenizer, tmp_path / "st", rep)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    ref = model(ids).logits
    assert torch.allclose(cap_edge.load_pretrained(d)(ids).logits, ref, atol=1e-5)
    assert torch.allclose(AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True)(ids).logits, ref, atol=1e-5)
    assert json.loads((d / "config.json").read_text())["cap_edge_base_model_type"] == arch
    dense = save_pruned(tiny(arch), tokenizer, tmp_path / "dense", {"method": "none", "pattern": "dense", "achieved_sparsity": 0})
    art = export_artifact(dense, "onnx", "fp32", tmp_path / "onnx")
    assert art.valid and art.validation["greedy_equal"]
    # per-layer head counts and widths: the explicit-cache graph, validated against PyTorch like every export
    art = export_artifact(d, "onnx", "fp32", tmp_path / "st-onnx")
    assert art.valid and art.validation["greedy_equal"]
    art = export_artifact(d, "onnx-static", "fp32", tmp_path / "st-static")  # fixed shapes (NPUs), same graph
    assert art.valid


@pytest.mark.parametrize("arch", ["llama"] + ARCHS)
def test_kv_graph_equals_the_model_through_a_cache_past_the_sliding_window(arch):
    """The explicit-cache graph (structured and fixed-shape ONNX) computes the model's own logits:
    q/k norms, four norms per layer, scaled embedding, local and global rotary tables, and a
    sliding window (16 for the tiny Gemma 3) shorter than the 24 tokens, 20 of them from the cache."""
    from exporters.onnx_kv import KVGraph

    model = tiny(arch) if arch != "llama" else _tiny_llama()
    torch.manual_seed(1)
    ids = torch.randint(4, VOCAB_SIZE, (1, 24))
    with torch.no_grad():
        ref = model(ids).logits  # (1, 24, V)
        g = KVGraph(model, "dynamic").eval()
        empty = [t[:, :, :0] for t in g.dummy_inputs(1, 1)[3:]]  # (1, kv, 0, hd) per cache input
        first = g(ids[:, :20], torch.arange(20)[None], torch.ones(1, 20, dtype=torch.long), *empty)
        second = g(ids[:, 20:], torch.arange(20, 24)[None], torch.ones(1, 24, dtype=torch.long), *first[1:])
    got = torch.cat([first[0], second[0]], dim=1)
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()


def _tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_phi3_fused_projections_are_refused_by_name(tokenizer):
    model = tiny("phi3")
    with pytest.raises(UnsupportedArchitectureError, match="fused qkv_proj"):
        head_geometry(model.config) and compute_scores(model, _batch(tokenizer), ScoreConfig(), progress=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_tree_packed_loglik_equals_the_sequential_path(arch, tokenizer):
    """Tree attention (``TorchBackend.loglik``) through each architecture's own mask handling: q/k
    norms and Gemma's scaled embedding change nothing; a sliding window shorter than the requests
    (the tiny Gemma 3's 16) cannot be folded into the tree mask, so that model takes the sequential path."""
    from cap_edge.backend import TorchBackend
    from cap_edge.prompts import encode_pair

    model = tiny(arch)
    reqs = [encode_pair(tokenizer, p, c) for p in load_split("embedded", "eval", 1) for c in p.choices]
    be = TorchBackend(model, tokenizer, progress=False, tree_nodes=64)
    assert be._tree_ok(max(len(c) + len(x) for c, x in reqs)) == (arch != "gemma3_text")
    fast, ref = be.loglik(reqs), be.loglik_sequential(reqs)
    assert max(abs(a - b) for a, b in zip(fast, ref)) <= 1e-4
    assert len(set(fast)) > len(fast) // 2
