"""Structured CAP: planning maths, surgery, save/reload, deci GGUF and explicit-cache ONNX."""

import contextlib
import json

import numpy as np
import pytest
import torch

from cap_edge.config import PruneConfig, ScoreConfig, replace
from cap_edge.errors import ConfigError, ExportError
from cap_edge.models import load_config, load_model
from cap_edge.prune_io import save_pruned
from cap_edge.pruning import prune_model
from cap_edge.scoring import (ScoringEngine, build_calib_batch, compute_scores, head_gate, score_channels,
                              subset_losses)
from cap_edge.structure import (LayerStructure, apply_structure, attention_options, attn_params, plan_structure,
                                refit_columns)
from cap_edge.tasks import load_split

from conftest import make_tiny_llama, make_tokenizer

FULL = tuple(range(128))
D, HD = 64, 16


def _masked_reference(layers):
    """The original tiny Llama with the removed heads and channel groups gated to zero."""
    ref = make_tiny_llama()
    stack = contextlib.ExitStack()
    for l, st in enumerate(layers):
        g = torch.zeros(1, 4)
        g[:, list(st.heads)] = 1
        stack.enter_context(head_gate(ref.model.layers[l].self_attn.o_proj, g, HD))
        c = torch.zeros(1, 128)
        c[:, list(st.channels)] = 1
        stack.enter_context(head_gate(ref.model.layers[l].mlp.down_proj, c, 1))
    return ref, stack


# ------------------------------------------------------------------ pure planning

def test_attention_options_keep_whole_groups_with_equal_heads():
    scores = torch.tensor([5.0, 1.0, 0.5, 4.0])  # K/V group 0 = heads 0,1; group 1 = heads 2,3
    opts = attention_options(scores, num_kv=2, hidden=D, head_dim=HD)
    assert len(opts) == 4  # (g, r) in {1,2} x {1,2}
    by = {(o.g, o.r): o for o in opts}
    assert by[(2, 1)].heads == (0, 3) and by[(2, 1)].kv_heads == (0, 1)  # best head of each group
    # one group of two heads: group 0 keeps 5 + 1 = 6 of the score, group 1 only 0.5 + 4 = 4.5
    assert by[(1, 2)].heads == (0, 1) and by[(1, 2)].kv_heads == (0,) and by[(1, 2)].removed_score == pytest.approx(4.5)
    assert by[(1, 1)].heads == (0,) and by[(1, 1)].removed_score == pytest.approx(5.5)
    assert by[(1, 1)].params == attn_params(1, 1, D, HD) == 4 * HD * D
    for o in opts:  # r query heads per kept K/V group, each in its own group
        assert len(o.heads) == o.g * o.r and all(h // 2 in o.kv_heads for h in o.heads)


def test_plan_meets_budget_and_takes_least_important_first():
    torch.manual_seed(0)
    hs, cs = torch.rand(3, 4) + 1, torch.rand(3, 4) + 1
    hs[1, 2] = -5.0  # masking this head helps: it goes first
    cs[2, 0] = 1e-4  # nearly useless channel group
    small = plan_structure(hs, cs, num_kv=2, hidden=D, head_dim=HD, group=32, remove_params=1)
    assert 2 not in small[1].heads  # one move suffices, and it is the negative head's group shape
    plan = plan_structure(hs, cs, num_kv=2, hidden=D, head_dim=HD, group=32, remove_params=20000)
    kept = sum(attn_params(len(s.kv_heads), len(s.heads) // len(s.kv_heads), D, HD) + 3 * len(s.channels) * D for s in plan)
    full = 3 * (attn_params(2, 2, D, HD) + 3 * 128 * D)
    assert full - kept >= 20000
    assert 0 not in {c // 32 for c in plan[2].channels}  # the nearly useless group went
    assert all(len(s.heads) >= 1 and len(s.channels) >= 32 for s in plan)


def test_plan_per_kind_budgets_and_limits():
    hs, cs = torch.rand(2, 4), torch.rand(2, 4)
    plan = plan_structure(hs, cs, num_kv=2, hidden=D, head_dim=HD, group=32, remove_params={"attn": 0, "mlp": 3 * 32 * D})
    assert all(len(s.heads) == 4 for s in plan) and sum(len(s.channels) for s in plan) == 256 - 32
    with pytest.raises(ConfigError, match="cannot remove"):  # would need to empty layers
        plan_structure(hs, cs, num_kv=2, hidden=D, head_dim=HD, group=32, remove_params=10**9)
    with pytest.raises(ConfigError, match="unknown kind"):
        plan_structure(hs, cs, num_kv=2, hidden=D, head_dim=HD, group=32, remove_params={"heads": 1})


def test_removing_every_head_of_a_layer_is_refused_unless_allowed():
    layers = [LayerStructure((), (), FULL), LayerStructure((0, 1, 2, 3), (0, 1), FULL)]
    with pytest.raises(ConfigError, match="refusing to remove every head"):
        apply_structure(make_tiny_llama(), layers)
    m = make_tiny_llama()
    apply_structure(m, layers, allow_empty=True)  # allowed: an attention-free layer
    ref, stack = _masked_reference(layers)
    ids = torch.randint(4, 200, (2, 7))
    with torch.no_grad(), stack:
        assert torch.allclose(m(ids).logits, ref(ids).logits, atol=1e-5)
    with pytest.raises(ConfigError, match="not in K/V group"):
        apply_structure(make_tiny_llama(), [LayerStructure((0, 2), (0,), FULL)] * 2)


# ------------------------------------------------------------------ surgery == masking

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_structurally_pruned_equals_masked_original(attn):
    torch.manual_seed(3)
    layers = plan_structure(torch.randn(2, 4), torch.randn(2, 4), num_kv=2, hidden=D, head_dim=HD, group=32,
                            remove_params=25000)
    assert any(len(s.heads) < 4 for s in layers) and any(len(s.channels) < 128 for s in layers)
    m = make_tiny_llama(attn=attn)
    before = sum(p.numel() for p in m.parameters())
    apply_structure(m, layers)
    assert before - sum(p.numel() for p in m.parameters()) >= 25000  # weights physically gone
    ref, stack = _masked_reference(layers)
    ids = torch.randint(4, 200, (2, 11))
    with torch.no_grad(), stack:
        assert torch.allclose(m(ids).logits, ref(ids).logits, atol=1e-5)
        # KV-cache generation runs with per-layer head counts
        out = m.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=3, eos_token_id=None)
        full = ref(out).logits[0, 10:-1].argmax(-1)
    assert torch.equal(out[0, 11:], full)


def test_prune_structured_saves_and_reloads(tmp_path):
    model, tok = make_tiny_llama(), make_tokenizer()
    rep = prune_model(model, PruneConfig(method="magnitude", pattern="structured", sparsity=0.15, refit=False),
                      progress=False)
    assert rep["achieved_sparsity"] >= 0.15 and rep["params_after"] < rep["params_before"]
    d = save_pruned(model, tok, tmp_path / "s", rep)
    assert json.loads((d / "config.json").read_text())["cap_edge_structure"] == rep["sizes"]
    lm = load_model(str(d), device="cpu")
    ids = torch.randint(4, 200, (1, 9))
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, model(ids).logits)
    with pytest.raises(ConfigError, match="already structurally pruned"):
        prune_model(lm.model, PruneConfig(method="magnitude", pattern="structured", sparsity=0.1), progress=False)


# ------------------------------------------------------------------ least-squares refit

def test_refit_columns_recovers_dependent_inputs_exactly():
    torch.manual_seed(0)
    X = torch.randn(400, 6, dtype=torch.float64)
    X = torch.cat([X, X[:, :2] @ torch.randn(2, 2, dtype=torch.float64)], 1)  # inputs 6, 7: combos of 0, 1
    W = torch.randn(5, 8, dtype=torch.float64)
    keep = torch.tensor([True] * 6 + [False] * 2)
    new = refit_columns(W, X.T @ X, keep, damp=0.0)
    assert torch.all(new[:, ~keep] == 0)
    assert torch.allclose(X @ new.T, X @ W.T, atol=1e-9)  # the removed inputs' share moved into 0, 1


def test_refit_columns_never_worse_than_zeroing_and_checks_shapes():
    torch.manual_seed(1)
    X = torch.randn(50, 32) + 0.5  # few tokens, correlated through the mean
    W = torch.randn(7, 32)
    keep = torch.rand(32) > 0.4
    H = X.T.double() @ X.double()
    err = lambda Wn: ((X @ (W - Wn).T) ** 2).sum()
    for damp in (0.0, 0.01, 1.0):
        new = refit_columns(W, H, keep, damp)
        assert torch.all(new[:, ~keep] == 0) and err(new) <= err(W * keep) + 1e-6
    assert err(refit_columns(W, H, keep, 0.01)) < 0.7 * err(W * keep)
    with pytest.raises(ConfigError, match=r"expected a \(32, 32\) Hessian, got \(31, 31\)"):
        refit_columns(W, H[:31, :31], keep)
    with pytest.raises(ConfigError, match="bool keep mask"):
        refit_columns(W, H, keep.float())


def test_structured_refit_lowers_layer_error_and_needs_a_batch(tokenizer):
    batch = build_calib_batch(tokenizer, load_split("embedded", "calib", 1)[:6], 3)
    cfg = PruneConfig(method="magnitude", pattern="structured", sparsity=0.2)
    with pytest.raises(ConfigError, match="refit .* needs the calibration batch"):
        prune_model(make_tiny_llama(), cfg, progress=False)
    plain = make_tiny_llama()
    base = prune_model(plain, replace(cfg, refit=False), batch=batch, progress=False)
    model = make_tiny_llama()
    rep = prune_model(model, cfg, batch=batch, progress=False)
    assert rep["kept"] == base["kept"] and rep["sizes"] == base["sizes"]  # same plan, other weights
    errs = [e for layer in rep["refit"]["layers"] for e in layer.values()]
    assert errs and all(e["refit"] <= e["zeroed"] + 1e-9 for e in errs)
    assert sum(e["refit"] for e in errs) < sum(e["zeroed"] for e in errs)
    # the refit changes only the kept columns of o_proj / down_proj; shapes stay those of the plan
    for a, b in zip(model.model.layers, plain.model.layers):
        assert torch.equal(a.self_attn.q_proj.weight, b.self_attn.q_proj.weight)
        assert a.mlp.down_proj.weight.shape == b.mlp.down_proj.weight.shape
    assert rep["refit"]["tokens"] == int(batch.lengths.sum())
    # and it brings the calibration loss back towards the dense model's
    dense = ScoringEngine(make_tiny_llama(), batch, 3).intact().mean()
    gap = lambda m: abs(float(ScoringEngine(m, batch, 3).intact().mean() - dense))
    assert gap(model) < gap(plain)


def test_structured_config_errors():
    with pytest.raises(ConfigError, match="structured pruning ranks"):
        PruneConfig(method="wanda", pattern="structured")
    with pytest.raises(ConfigError, match="scope"):
        PruneConfig(pattern="structured", scope="row")
    with pytest.raises(ConfigError, match="refit_damp: expected a number >= 0, got -1"):
        PruneConfig(pattern="structured", refit_damp=-1)
    with pytest.raises(ConfigError, match="refit_problems"):
        PruneConfig(pattern="structured", refit_problems=0)
    with pytest.raises(ConfigError, match="refit: expected true or false"):
        PruneConfig(pattern="structured", refit="yes")
    with pytest.raises(ConfigError, match="needs CAP head scores"):
        prune_model(make_tiny_llama(), PruneConfig(method="cap", pattern="structured", sparsity=0.1), progress=False)


# ------------------------------------------------------------------ channel scores

def test_channel_mask_equals_zeroed_down_proj_columns(tokenizer, tiny_model):
    batch = build_calib_batch(tokenizer, load_split("embedded", "calib", 1)[:6], 3)
    eng = ScoringEngine(tiny_model, batch, 3, max_batch_tokens=1, channel_group=32)
    masked = subset_losses(eng.masked_rows(1, [2], "channels"), batch, 3)[0]
    ref = make_tiny_llama()
    with torch.no_grad():
        ref.model.layers[1].mlp.down_proj.weight[:, 64:96] = 0
    assert torch.allclose(masked, ScoringEngine(ref, batch, 3).intact(), rtol=0, atol=1e-6)  # up to float32 round-off
    attr = eng.attribution_effects("channels")
    assert attr.shape == (2, 4, 3)


def test_score_channels_refines_and_caches(tokenizer, tiny_model):
    probs = load_split("embedded", "calib", 1)[:6]
    r = score_channels(tiny_model, tokenizer, probs, ScoreConfig(), refine_fraction=0.5, progress=False)
    assert r["complete"] and not r["cache_hit"] and r["num_units"] == 4
    hows = [u["how"] for l in r["layers"].values() for u in l]
    assert hows.count("exact") == r["refined_units"] >= 2 and len(hows) == 8
    assert 0 < r["refined_cost_share"] <= 0.5  # the budget is a share of the cost of scoring every group exactly
    assert score_channels(tiny_model, tokenizer, probs, ScoreConfig(), refine_fraction=0.5, progress=False)["cache_hit"]


# ------------------------------------------------------------------ exports

def _structured_dir(tmp_path, layers):
    m, tok = make_tiny_llama(), make_tokenizer()
    apply_structure(m, layers, allow_empty=True)
    return save_pruned(m, tok, tmp_path / "st", {"method": "test", "pattern": "structured", "achieved_sparsity": 0.3})


UNEVEN = [LayerStructure((2, 3), (1,), FULL[:64]), LayerStructure((), (), FULL[32:96])]  # layer 1 attention-free


def test_deci_gguf_loads_in_llama_cpp_and_matches_pytorch(tmp_path):
    from gguf import GGUFReader

    from cap_edge.deploy.export import export_artifact
    from exporters.gguf import read_back

    d = _structured_dir(tmp_path, UNEVEN)
    art = export_artifact(d, "gguf", "f32", tmp_path / "out")
    assert art.valid and art.validation["greedy_equal"] and art.validation["max_abs_logit_diff"] < 0.05
    fields = GGUFReader(art.path).fields
    assert fields["general.architecture"].contents() == "deci"
    assert fields["deci.attention.head_count"].contents() == [2, 0]
    assert fields["deci.attention.head_count_kv"].contents() == [1, 0]
    assert fields["deci.feed_forward_length"].contents() == [64, 64]
    lm = load_model(str(d), device="cpu")
    sd = {k: v.numpy() for k, v in lm.model.state_dict().items()}
    back = read_back(art.path, load_config(d))
    assert back and all(np.array_equal(back[k], sd[k]) for k in back)


@pytest.mark.parametrize("layers,msg", [
    ([LayerStructure((), (), FULL), LayerStructure((0, 1), (0,), FULL)], "layer 0 has no attention heads"),
    ([LayerStructure((0, 1), (0,), ()), LayerStructure((0, 1), (0,), FULL)], "no MLP channels"),
])
def test_deci_corner_cases_llama_cpp_cannot_run_are_refused(tmp_path, layers, msg):
    from exporters.gguf import export_gguf

    d = _structured_dir(tmp_path, layers)
    with pytest.raises(ExportError, match=msg):
        export_gguf(d, tmp_path / "out", "f32")
    assert not list((tmp_path / "out").glob("*.gguf"))


def test_structured_onnx_export_validates_against_pytorch(tmp_path):
    from cap_edge.deploy.export import export_artifact

    d = _structured_dir(tmp_path, UNEVEN)
    art = export_artifact(d, "onnx", "fp32", tmp_path / "out")
    assert art.valid and art.validation["greedy_equal"] and art.validation["max_abs_logit_diff"] < 1e-3
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(art.path).get_inputs()]
    assert "past_key_values.0.key" in names and "past_key_values.1.key" not in names  # no cache for layer 1
    assert "optimum" in art.metadata["runs_on"]["not"][0]  # the manifest says optimum cannot run it


def test_iterative_structured_reestimates_on_the_pruned_model_and_never_restores(tokenizer, monkeypatch):
    from cap_edge.scoring import engine as eng_mod

    model = make_tiny_llama()
    batch = build_calib_batch(tokenizer, load_split("embedded", "calib", 1)[:6], 3)
    heads = compute_scores(model, batch, ScoreConfig(), progress=False)
    channels = score_channels(model, tokenizer, load_split("embedded", "calib", 1)[:6], ScoreConfig(), group=32,
                              refine_fraction=0.5, progress=False)
    seen = []
    real = eng_mod.ScoringEngine.attribution_effects

    def spy(self, target="heads", fixed=None):
        seen.append((target, {k: v.clone() for k, v in (fixed or {}).items()}))
        return real(self, target, fixed)

    monkeypatch.setattr(eng_mod.ScoringEngine, "attribution_effects", spy)
    cfg = PruneConfig(method="cap", pattern="structured", sparsity=0.3, steps=3, refit=False, channel_group=32)
    rep = prune_model(model, cfg, batch, heads, channel_scores=channels, progress=False)
    assert rep["steps"] == 3 and len(rep["step_heads"]) == 3
    assert [t for t, _ in seen] == ["heads", "channels"] * 2  # re-estimated before steps 2 and 3
    for (_, fixed), plan in zip(seen[::2], rep["step_heads"]):  # masks given = the plan of the step before
        for l, kept in enumerate(plan):
            assert fixed["heads"][l].nonzero().flatten().tolist() == sorted(kept)
    for before, after in zip(rep["step_heads"], rep["step_heads"][1:]):  # gone stays gone
        assert all(set(a) <= set(b) for a, b in zip(after, before))
    assert rep["achieved_sparsity"] >= 0.3


def test_attribution_with_fixed_masks_equals_the_physically_masked_model(tokenizer):
    batch = build_calib_batch(tokenizer, load_split("embedded", "calib", 1)[:6], 3)
    hmask = torch.ones(2, 4)
    hmask[1, 2] = 0  # head 2 of layer 1 already removed
    cmask = torch.ones(2, 4)
    cmask[0, 1] = 0  # MLP channel group 1 (of 4 x 32) of layer 0 already removed
    fixed = {"heads": hmask, "channels": cmask}
    got = ScoringEngine(make_tiny_llama(), batch, 3, channel_group=32).attribution_effects("heads", fixed)
    ref_model = make_tiny_llama()
    with torch.no_grad():
        ref_model.model.layers[1].self_attn.o_proj.weight[:, 2 * 16:3 * 16] = 0
        ref_model.model.layers[0].mlp.down_proj.weight[:, 32:64] = 0
    ref = ScoringEngine(ref_model, batch, 3, channel_group=32).attribution_effects("heads")
    keep = hmask.bool()  # the removed head's own gradient is taken at gate 0, the zeroed model's at 1
    assert ref[keep].abs().max() > 1e-4
    assert torch.allclose(got[keep], ref[keep], atol=1e-6, rtol=1e-5)


def test_structured_dir_loads_through_documented_paths_and_plain_transformers_refuses(tmp_path):
    """cap_edge.load_pretrained and AutoModelForCausalLM(trust_remote_code=True) give the pruned
    model; plain from_pretrained (even with ignore_mismatched_sizes) refuses instead of building
    random weights of the wrong shape."""
    import cap_edge
    from transformers import AutoModelForCausalLM

    model, tok = make_tiny_llama(num_hidden_layers=3), make_tokenizer()
    apply_structure(model, [LayerStructure((0, 2), (0, 1), tuple(range(128))), LayerStructure((2, 3), (1,), tuple(range(64))),
                            LayerStructure((), (), tuple(range(96)))], allow_empty=True)
    d = save_pruned(model, tok, tmp_path / "st", {"method": "test", "pattern": "structured", "achieved_sparsity": 0.2})
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "cap_edge_structured" and cfg["cap_edge_base_model_type"] == "llama" and (d / "modeling_cap_edge.py").is_file()
    ids = torch.tensor([[5, 6, 7, 8]])
    ref = model(ids).logits
    ours = cap_edge.load_pretrained(d)
    assert torch.allclose(ours(ids).logits, ref, atol=1e-5)
    remote = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True)
    assert torch.allclose(remote(ids).logits, ref, atol=1e-5)
    for kw in ({}, {"ignore_mismatched_sizes": True}):
        with pytest.raises(ValueError, match="trust_remote_code|cap_edge_structured"):
            AutoModelForCausalLM.from_pretrained(d, **kw)
