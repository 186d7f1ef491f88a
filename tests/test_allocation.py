"""CAP-guided allocation and token weighting: pure maths on random tensors, and the guided methods
reducing exactly to their baselines when their causal signals are switched off."""

import pytest
import torch

from cap_edge.config import PruneConfig, ScoreConfig
from cap_edge.errors import ConfigError
from cap_edge.pruning import prune_model
from cap_edge.pruning.allocation import (allocate, dense_blocks, rank_normalise, saliency_allocate, shared_prefix_length,
                                         token_weights)
from cap_edge.scoring import build_calib_batch, compute_scores, score_channels
from cap_edge.tasks import load_split

from conftest import make_tiny_llama


@pytest.mark.parametrize("target,bound", [(0.5, 0.15), (0.1, 0.15), (0.3, 0.05), (0.9, 0.15), (0.5, 0.0)])
def test_allocation_sums_to_target_within_bounds_and_is_monotone(target, bound):
    torch.manual_seed(0)
    imp, sizes = torch.randn(60), torch.randint(1000, 5000, (60,)).double()
    s = allocate(imp, sizes, target, bound)
    assert abs(float((s * sizes).sum() / sizes.sum()) - target) <= 1e-4 * target  # within 0.01%
    assert float(s.min()) >= max(0.0, target - bound) - 1e-12 and float(s.max()) <= min(0.95, target + bound) + 1e-12
    order = imp.argsort()
    assert (s[order][1:] <= s[order][:-1] + 1e-12).all()  # more important -> never more sparsity
    if bound > 0:
        assert float(s.max() - s.min()) > bound  # the scores actually moved it


@pytest.mark.parametrize("target,bound", [(0.5, 0.15), (0.1, 0.05), (0.3, 0.075), (0.3, 0.0)])
def test_saliency_allocation_sums_to_target_within_bounds_and_prunes_the_cheap_blocks_more(target, bound):
    torch.manual_seed(0)
    scale = torch.rand(60) * 10 + 0.1  # block i's saliencies: scale_i x the quantiles of Exp(1)

    def quantiles(n):  # (n,) ascending, without sampling noise: the order by scale is then exact up to 1/n
        return -torch.log1p(-(torch.arange(n, dtype=torch.float64) + 0.5) / n)

    sal = [quantiles(int(n)) * float(c) for n, c in zip(torch.randint(1000, 5000, (60,)), scale)]
    sizes = torch.tensor([float(x.numel()) for x in sal], dtype=torch.float64)
    s = saliency_allocate(sal, target, bound)
    assert abs(float((s * sizes).sum() / sizes.sum()) - target) <= 1e-4 * target  # within 0.01%
    assert float(s.min()) >= max(0.0, target - bound) - 1e-12 and float(s.max()) <= target + bound + 1e-12
    order = scale.argsort()  # a block whose saliencies are all larger never gets the higher sparsity
    assert (s[order][1:] <= s[order][:-1] + 1e-3).all()
    if bound > 0:
        assert float(s.max() - s.min()) > bound  # the saliencies moved it
    same = saliency_allocate([torch.arange(100.0)] * 4, target, bound)
    assert torch.allclose(same, torch.full((4,), target, dtype=torch.float64), atol=1e-6)  # equal blocks: the target each
    with pytest.raises(ConfigError, match="one non-empty 1-D tensor per block"):
        saliency_allocate([torch.ones(3), torch.ones(0)], target, bound)


def test_allocation_errors_and_ranks():
    assert rank_normalise(torch.tensor([3.0, 1.0, 2.0])).tolist() == [1.0, -1.0, 0.0]
    assert rank_normalise(torch.tensor([5.0, 5.0])).tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        allocate(torch.ones(3), torch.ones(3), 1.0, 0.1)
    with pytest.raises(ConfigError, match="one shape"):
        allocate(torch.ones(3), torch.ones(4), 0.5, 0.1)


def test_token_weights_uniform_gradient_and_prefix():
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    g = torch.tensor([[1.0, 3.0, 0.0, 9.0], [2.0, 2.0, 2.0, 2.0]])
    assert torch.equal(token_weights(g, valid, 0.0), valid.double())  # beta 0: plain statistics
    w = token_weights(g, valid, 1.0)
    assert w[0, 3] == 0 and w[0, 2] == 0 and float(w[valid].mean()) == pytest.approx(1.0)  # padding 0, mean 1
    w = token_weights(g, valid, 0.0, shared_prefix=2)
    assert w[:, :2].sum(0).tolist() == [1.0, 1.0]  # a shared position counts once in all
    ids = torch.tensor([[5, 6, 7, 1], [5, 6, 8, 8]])
    assert shared_prefix_length(ids, torch.tensor([3, 4])) == 2


def _setup(tokenizer):
    probs = load_split("embedded", "calib", 1)[:6]
    model = make_tiny_llama()
    batch = build_calib_batch(tokenizer, probs, 3)
    heads = compute_scores(model, batch, ScoreConfig(), progress=False)
    chans = score_channels(model, tokenizer, probs, ScoreConfig(), group=32, refine_fraction=0.5, progress=False)
    return batch, heads, chans


@pytest.mark.parametrize("guided,base", [("cap-wanda", "wanda"), ("cap-sparsegpt", "sparsegpt")])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_guided_methods_reduce_exactly_to_their_baselines(tokenizer, guided, base, pattern):
    batch, heads, chans = _setup(tokenizer)
    off = dict(alloc_bound=0.0, token_beta=0.0, unit_strength=0.0, dedup_prefix=False, sparsity=0.5, pattern=pattern)
    solve = dict(sparsegpt_damp=0.01, mask_refit_iters=0) if base == "sparsegpt" else {}  # the paper's OBS solve (no refit)
    a, b = make_tiny_llama(), make_tiny_llama()
    prune_model(a, PruneConfig(method=guided, **off, **solve), batch, heads, channel_scores=chans, progress=False)
    prune_model(b, PruneConfig(method=base, **off), batch, progress=False)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n
    if base == "sparsegpt" and pattern == "2:4":  # with its own N:M solve it is SparseGPT given that solve
        a, b = make_tiny_llama(), make_tiny_llama()
        prune_model(a, PruneConfig(method=guided, **off), batch, heads, channel_scores=chans, progress=False)
        nm_solve = dict(sparsegpt_damp=0.1, mask_refit_iters=30, mask_refit_tol=1e-3, mask_refit_products="float32")
        prune_model(b, PruneConfig(method=base, **off, **nm_solve), batch, progress=False)
        for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), n


def test_guided_allocation_and_weights_change_the_result(tokenizer):
    batch, heads, chans = _setup(tokenizer)
    model = make_tiny_llama()
    rep = prune_model(model, PruneConfig(method="cap-sparsegpt", sparsity=0.5), batch, heads, channel_scores=chans,
                      progress=False)
    alloc = rep["allocation"]["attn"] + rep["allocation"]["mlp"]
    assert max(alloc) - min(alloc) > 0.05 and rep["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rep["calibration_statistics"]["beta"] == 0.5 and rep["calibration_statistics"]["rank"][0]["down_proj"]["dim"] == 128
    with pytest.raises(ConfigError, match="needs CAP MLP channel scores"):
        prune_model(make_tiny_llama(), PruneConfig(method="cap-wanda"), batch, heads, progress=False)


def test_relative_bound_shrinks_the_allocation_with_the_target(tokenizer):
    batch, heads, chans = _setup(tokenizer)
    off = dict(guidance_ramp=None, alloc_bound=0.15)  # the relative bound alone (cap-wanda's 10% default has no allocation)
    assert PruneConfig(sparsity=0.5, alloc_bound_share=0.3, **off).effective_alloc_bound == pytest.approx(0.15)
    assert PruneConfig(sparsity=0.1, alloc_bound_share=0.3, **off).effective_alloc_bound == pytest.approx(0.03)
    assert PruneConfig(sparsity=0.1, **off).effective_alloc_bound == 0.15  # none: the absolute bound alone
    spreads = {}
    for share in (None, 0.3):
        rep = prune_model(make_tiny_llama(), PruneConfig(method="cap-wanda", sparsity=0.1, alloc_bound_share=share, **off),
                          batch, heads, channel_scores=chans, progress=False)
        alloc = rep["allocation"]["attn"] + rep["allocation"]["mlp"]
        assert rep["achieved_sparsity"] == pytest.approx(0.1, abs=0.01)
        spreads[share] = (min(alloc), max(alloc))
    assert spreads[0.3][0] >= 0.07 - 1e-9 and spreads[0.3][1] <= 0.13 + 1e-9
    assert spreads[None][1] - spreads[None][0] > 0.06  # without the share the same scores spread wider
    for bad in (-0.1, 0, 1.5, True, "0.3"):
        with pytest.raises(ConfigError, match="alloc_bound_share"):
            PruneConfig(alloc_bound_share=bad)
        with pytest.raises(ConfigError, match="guidance_ramp"):
            PruneConfig(guidance_ramp=bad)


def test_guidance_ramp_scales_every_guidance_below_its_target(tokenizer):
    batch, heads, chans = _setup(tokenizer)
    assert PruneConfig(sparsity=0.5, guidance_ramp=0.5).guidance_scale == 1.0
    assert PruneConfig(pattern="2:4", guidance_ramp=0.5).guidance_scale == 1.0
    cfg = PruneConfig(method="cap-sparsegpt", sparsity=0.1, guidance_ramp=0.5)
    assert cfg.guidance_scale == pytest.approx(0.2) and cfg.effective_alloc_bound == pytest.approx(0.03)
    rep = prune_model(make_tiny_llama(), cfg, batch, heads, channel_scores=chans, progress=False)
    g = rep["guidance"]
    assert g["unit_strength"] == pytest.approx(0.1) and g["token_beta"] == pytest.approx(0.1)
    assert rep["calibration_statistics"]["beta"] == pytest.approx(0.1)  # what the statistics were weighted with
    alloc = rep["allocation"]["attn"] + rep["allocation"]["mlp"]
    assert min(alloc) >= 0.07 - 1e-9 and max(alloc) <= 0.13 + 1e-9
    assert prune_model(make_tiny_llama(), PruneConfig(method="wanda", sparsity=0.1, guidance_ramp=0.5), batch,
                       progress=False)["guidance"] is None  # unguided methods have nothing to scale


def test_fisher_allocation_follows_the_answer_loss_saliency(tokenizer):
    """alloc_signal=fisher: the block targets come from the answer loss's OBD saliency on the calibration
    batch (reaching the target, within the bound) and differ from the CAP-rank allocation; it needs the batch."""
    batch, heads, chans = _setup(tokenizer)
    cfg = PruneConfig(method="cap-wanda", sparsity=0.3, guidance_ramp=None, alloc_bound=0.1, alloc_signal="fisher",
                      guided_blocks="all")
    model = make_tiny_llama().requires_grad_(False)  # as models are loaded for inference
    rep = prune_model(model, cfg, batch, heads, channel_scores=chans, progress=False)
    alloc = torch.tensor(rep["allocation"]["attn"] + rep["allocation"]["mlp"])
    assert rep["guidance"]["alloc_signal"] == "fisher" and abs(rep["achieved_sparsity"] - 0.3) < 0.01
    assert float(alloc.min()) >= 0.2 - 1e-9 and float(alloc.max()) <= 0.4 + 1e-9 and float(alloc.std()) > 0
    assert not any(p.requires_grad for p in model.parameters())  # the gradient pass leaves requires_grad as it found it
    cap = prune_model(make_tiny_llama(), PruneConfig(**{**cfg.__dict__, "alloc_signal": "cap"}), batch, heads,
                      channel_scores=chans, progress=False)
    assert cap["allocation"] != rep["allocation"]
    from cap_edge.pruning.apply import guided_plan

    with pytest.raises(ConfigError, match="needs the calibration batch"):
        guided_plan(make_tiny_llama(), cfg, heads, chans)
    with pytest.raises(ConfigError, match="alloc_signal: expected cap or fisher, got 'obd'"):
        PruneConfig(alloc_signal="obd")


def test_guidance_defaults_follow_the_validated_table():
    """Knobs left None resolve by method, pattern and target (cap_edge.guidance, chosen on validation): cap-wanda
    below 15% the token weights alone, at 15-40% the answer-loss saliency allocation (half the bound) with every
    knob at the squared ramp (from 25% on attention only), elsewhere CAP's block ranks at the linear ramp; explicit values are kept."""
    cases = (("cap-wanda", 0.1, "unstructured", "cap", 0.0, 0.0, 0.5 * 0.2),  # the token weights alone
             ("cap-wanda", 0.2, "unstructured", "fisher", 0.075 * 0.16, 0.5 * 0.16, 0.5 * 0.16),  # (0.2 / 0.5) ** 2
             ("cap-wanda", 0.24, "unstructured", "fisher", 0.075 * 0.48 ** 2, 0.5 * 0.48 ** 2, 0.5 * 0.48 ** 2),
             ("cap-wanda", 0.3, "unstructured", "fisher", 0.075 * 0.36, 0.5 * 0.36, 0.5 * 0.36),
             ("cap-wanda", 0.39, "unstructured", "fisher", 0.075 * 0.78 ** 2, 0.5 * 0.78 ** 2, 0.5 * 0.78 ** 2),
             ("cap-wanda", 0.4, "unstructured", "cap", 0.15 * 0.8, 0.5 * 0.8, 0.5 * 0.8),  # no validated row: ranks
             ("cap-wanda", 0.5, "unstructured", "cap", 0.15, 0.5, 0.5), ("cap-wanda", 0.5, "2:4", "cap", 0.15, 0.5, 0.5),
             ("cap-sparsegpt", 0.3, "unstructured", "cap", 0.15 * 0.6, 0.5 * 0.6, 0.5 * 0.6),
             ("cap-sparsegpt", 0.1, "unstructured", "cap", 0.15 * 0.2, 0.5 * 0.2, 0.5 * 0.2))
    for method, sp, pattern, signal, bound, unit, beta in cases:
        g = PruneConfig(method=method, sparsity=sp, pattern=pattern).guidance
        got = (g["alloc_signal"], g["alloc_bound"], g["unit_strength"], g["token_beta"])
        assert got == (signal, pytest.approx(bound), pytest.approx(unit), pytest.approx(beta)), (method, sp, pattern)
        # from 25% to 40% the guidance moves attention only (thirteenth round), everywhere else every block
        assert g["blocks"] == ("attention" if method == "cap-wanda" and pattern == "unstructured" and 0.25 <= sp < 0.4
                               else "all"), (method, sp, pattern)
    explicit = PruneConfig(method="cap-wanda", sparsity=0.3, alloc_signal="cap", alloc_bound=0.1, guidance_power=1, unit_strength=0.2)
    g = explicit.guidance
    assert (g["alloc_signal"], g["alloc_bound"], g["unit_strength"], g["token_beta"]) == (
        "cap", pytest.approx(0.1 * 0.6), pytest.approx(0.2 * 0.6), pytest.approx(0.5 * 0.6))  # token_beta unset: the default's
    assert PruneConfig(method="cap-wanda", sparsity=0.1, alloc_signal="fisher", alloc_bound=0.075).effective_alloc_bound == \
        pytest.approx(0.075 * 0.2)
    for name in ("alloc_bound", "unit_strength", "token_beta"):
        with pytest.raises(ConfigError, match=f"{name}: expected a value in"):
            PruneConfig(**{name: -0.1})


def test_guidance_power_steepens_the_ramp_below_its_target_only():
    assert PruneConfig(sparsity=0.3, guidance_ramp=0.5, guidance_power=2).guidance_scale == pytest.approx(0.36)
    assert PruneConfig(sparsity=0.3, guidance_ramp=0.5, guidance_power=1).guidance_scale == pytest.approx(0.6)
    assert PruneConfig(sparsity=0.5, guidance_ramp=0.5, guidance_power=2).guidance_scale == 1.0  # full at and above
    assert PruneConfig(pattern="2:4", guidance_ramp=0.5, guidance_power=2).guidance_scale == 1.0
    assert PruneConfig(sparsity=0.3, guidance_ramp=None, guidance_power=2).guidance_scale == 1.0  # no ramp, no power
    g = PruneConfig(method="cap-wanda", sparsity=0.3, guidance_ramp=0.5, guidance_power=2, alloc_signal="cap",
                    alloc_bound=0.15, unit_strength=0.5).guidance
    assert g["alloc_bound"] == pytest.approx(0.15 * 0.36) and g["unit_strength"] == pytest.approx(0.5 * 0.36)
    for bad in (0, -1, True, "2"):
        with pytest.raises(ConfigError, match="guidance_power"):
            PruneConfig(guidance_power=bad)


def test_dense_blocks_take_the_most_important_that_fit_the_budget():
    imp = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    sizes = torch.tensor([10.0, 30.0, 10.0, 20.0, 30.0])
    assert dense_blocks(imp, sizes, 0.0).tolist() == [False] * 5
    assert dense_blocks(imp, sizes, 0.3).tolist() == [False, True, False, False, False]  # 30 of 100
    # 0.9 (30) then 0.7 (20) fill 50; 0.5 (10) still fits in 60, 0.3 (30) does not, 0.1 (10) does not
    assert dense_blocks(imp, sizes, 0.6).tolist() == [False, True, True, True, False]
    torch.manual_seed(0)
    imp, sizes = torch.rand(40), torch.randint(1, 50, (40,)).double()
    for budget in (0.05, 0.2, 0.5):
        d = dense_blocks(imp, sizes, budget)
        assert float(sizes[d].sum()) <= budget * float(sizes.sum())
        # nothing left out is both more important and small enough to fit what was left
        room = budget * float(sizes.sum()) - float(sizes[d].sum())
        assert not ((~d) & (imp > imp[d].min()) & (sizes <= room)).any()
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        dense_blocks(imp, sizes, 1.0)


@pytest.mark.parametrize("by,method", [("cap", "cap-sparsegpt"), ("depth", "sparsegpt")])
def test_mixed_dense_and_2_4_reports_effective_sparsity(tokenizer, by, method):
    batch, heads, chans = _setup(tokenizer)
    model, ref = make_tiny_llama(), make_tiny_llama()
    rep = prune_model(model, PruneConfig(method=method, pattern="2:4", nm_dense=0.3, nm_dense_by=by), batch, heads,
                      channel_scores=chans, progress=False)
    assert rep["dense_blocks"] and 0 < rep["dense_share"] <= 0.3
    assert rep["achieved_sparsity"] == pytest.approx(0.5 * (1 - rep["dense_share"]), abs=1e-9) == rep["effective_target"]
    for name, layer in rep["layers"].items():
        l, kind = int(name.split(".")[2]), ("mlp" if ".mlp." in name else "attn")
        w, w0 = model.get_submodule(name).weight, ref.get_submodule(name).weight
        if f"{kind} {l}" in rep["dense_blocks"]:
            assert torch.equal(w, w0), name  # untouched
        else:
            assert layer["sparsity"] == pytest.approx(0.5) and (w.view(-1, 4) != 0).sum(1).max() <= 2
    if by == "depth":
        assert rep["dense_blocks"] == ["attn 0"]  # the earliest block that fits 30% (an MLP block is larger)


def test_mixed_dense_config_errors(tokenizer):
    with pytest.raises(ConfigError, match="N:M pattern"):
        PruneConfig(method="cap-sparsegpt", nm_dense=0.2)
    with pytest.raises(ConfigError, match="cap or depth"):
        PruneConfig(method="cap-sparsegpt", pattern="2:4", nm_dense=0.2, nm_dense_by="size")
    batch, heads, chans = _setup(tokenizer)
    with pytest.raises(ConfigError, match="CAP-guided method"):
        prune_model(make_tiny_llama(), PruneConfig(method="sparsegpt", pattern="2:4", nm_dense=0.2), batch, progress=False)
