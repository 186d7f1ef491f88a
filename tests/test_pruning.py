import pytest
import torch

from cap_edge.config import PruneConfig
from cap_edge.errors import ConfigError
from cap_edge.pruning import (cap_score, global_threshold, head_importance, kv_importance, matrix_mask, nm_mask,
                              prune_model, row_mask, sparsegpt_prune, sparsity_of, wanda_score)
from cap_edge.scoring import build_calib_batch, compute_scores
from cap_edge.config import ScoreConfig
from cap_edge.tasks import load_split

from conftest import make_tiny_llama


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_exactly_n_of_every_m(n, m):
    s = torch.randn(16, 64)
    mask = nm_mask(s, n, m)
    assert (mask.view(16, -1, m).sum(-1) == n).all()
    # the kept ones are the largest of each group
    g = s.view(16, -1, m)
    kept_min = torch.where(mask.view(16, -1, m), g, torch.inf).min(-1).values
    dropped_max = torch.where(~mask.view(16, -1, m), g, -torch.inf).max(-1).values
    assert (kept_min >= dropped_max).all()


def test_nm_mask_rejects_bad_shapes():
    with pytest.raises(ConfigError, match="divisible by 4"):
        nm_mask(torch.randn(3, 10), 2, 4)
    with pytest.raises(ConfigError):
        nm_mask(torch.randn(3, 8), 4, 4)


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.777])
def test_global_threshold_hits_target(sparsity):
    torch.manual_seed(0)
    scores = [torch.rand(64, 128) * 3, torch.rand(300, 17), torch.randn(50, 50).abs()]
    t = global_threshold(scores, sparsity)
    frac = sum(int((s < t).sum()) for s in scores) / sum(s.numel() for s in scores)
    assert abs(frac - sparsity) <= 1e-4


def test_row_and_matrix_masks():
    s = torch.rand(8, 100)
    assert (row_mask(s, 0.3).sum(1) == 70).all()
    assert matrix_mask(s, 0.25).sum() == 600
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        row_mask(s, 1.0)


def test_cap_score_hand_worked():
    # 2 heads x head_dim 1 -> q rows; importances from scores [0, 1] -> [1, 10]
    I = head_importance(torch.tensor([[0.0, 1.0]]))
    assert I.tolist() == [[1.0, 10.0]]
    W = torch.tensor([[-2.0, 1.0], [0.5, -3.0]])
    assert cap_score(W, I[0], axis=0, head_dim=1).tolist() == [[2.0, 1.0], [5.0, 30.0]]
    assert cap_score(W, I[0], axis=1, head_dim=1).tolist() == [[2.0, 10.0], [0.5, 30.0]]
    assert cap_score(W, I[0].mean(), axis=None).tolist() == [[11.0, 5.5], [2.75, 16.5]]
    assert head_importance(torch.full((2, 3), 0.7)).eq(1).all()


def test_gqa_kv_rows_take_mean_of_query_heads():
    I = torch.tensor([1.0, 3.0, 10.0, 4.0])  # 4 query heads, 2 KV heads: groups (0,1) and (2,3)
    kv = kv_importance(I, 2)
    assert kv.tolist() == [2.0, 7.0]
    W = torch.ones(2 * 3, 5)  # 2 KV heads x head_dim 3 rows
    S = cap_score(W, kv, axis=0, head_dim=3)
    assert S[:3].eq(2.0).all() and S[3:].eq(7.0).all()


def test_wanda_score():
    W = torch.tensor([[1.0, -2.0]])
    assert wanda_score(W, torch.tensor([3.0, 0.5])).tolist() == [[3.0, 1.0]]


def test_sparsegpt_beats_magnitude_on_correlated_inputs():
    torch.manual_seed(0)
    n_in, n_out, tokens = 64, 32, 2048
    base = torch.randn(tokens, 8)
    X = base @ torch.randn(8, n_in) + 0.1 * torch.randn(tokens, n_in)  # strongly correlated columns
    W = torch.randn(n_out, n_in)
    H = X.T.double() @ X.double()
    for nm in (None, (2, 4)):
        Ws, keep = sparsegpt_prune(W, H, 0.5, nm, blocksize=16)
        assert sparsity_of(Ws) == pytest.approx(0.5, abs=0.01)
        assert (Ws[~keep] == 0).all()
        Wm = W * (nm_mask(W.abs(), *nm) if nm else matrix_mask(W.abs(), 0.5))
        err_s = ((X @ (W - Ws).T) ** 2).sum()
        err_m = ((X @ (W - Wm).T) ** 2).sum()
        assert err_s < 0.5 * err_m


def _scores(model, tok):
    batch = build_calib_batch(tok, load_split("embedded", "calib", 1)[:6], 3)
    return batch, compute_scores(model, batch, ScoreConfig(), progress=False)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "cap", "cap-wanda", "cap-sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "4:8"])
def test_every_method_and_pattern(tokenizer, method, pattern):
    from cap_edge.scoring import score_channels

    model = make_tiny_llama()
    batch, scores = _scores(model, tokenizer)
    chans = score_channels(model, tokenizer, load_split("embedded", "calib", 1)[:6], ScoreConfig(), refine_fraction=0.5,
                           progress=False)
    cfg = PruneConfig(method=method, sparsity=0.5, pattern=pattern)
    rep = prune_model(model, cfg, batch, scores, progress=False, channel_scores=chans)
    # cap: one global threshold; guided: per-block shares rounded per row of a 64-wide toy matrix
    assert rep["achieved_sparsity"] == pytest.approx(0.5, abs=0.01 if method == "cap" else 0.005 if "-" in method else 0.002)
    if pattern != "unstructured":
        n, m = cfg.nm
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.mlp.down_proj):
                nz = (lin.weight != 0).view(lin.weight.shape[0], -1, m).sum(-1)
                assert (nz <= n).all()
    ref = make_tiny_llama()  # embeddings, norms and LM head untouched
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(model.state_dict()[name], ref.state_dict()[name])


def test_needs_cap_scores_follows_what_the_resolved_guidance_reads():
    from cap_edge.pruning.methods import needs_cap_scores

    assert not needs_cap_scores(PruneConfig(method="wanda", sparsity=0.3))
    assert needs_cap_scores(PruneConfig(method="cap", sparsity=0.3))  # the CAP rule: |W| x head importance
    assert needs_cap_scores(PruneConfig(method="cap", sparsity=0.3, pattern="structured"))
    assert not needs_cap_scores(PruneConfig(method="cap-wanda", sparsity=0.1))  # the default there: token weights alone
    assert needs_cap_scores(PruneConfig(method="cap-wanda", sparsity=0.1, unit_strength=0.5))  # Wanda's unit factors
    assert needs_cap_scores(PruneConfig(method="cap-wanda", sparsity=0.3))  # the Fisher band's unit factors
    assert needs_cap_scores(PruneConfig(method="cap-wanda", sparsity=0.1, alloc_bound=0.1, alloc_signal="cap"))
    assert not needs_cap_scores(PruneConfig(method="cap-wanda", sparsity=0.3, unit_strength=0.0))  # Fisher needs none
    # a Hessian method takes no unit factors; N:M fixes each group's share, but CAP may choose its dense blocks
    assert not needs_cap_scores(PruneConfig(method="cap-sparsegpt", sparsity=0.3, unit_strength=0.5, alloc_bound=0.0))
    assert not needs_cap_scores(PruneConfig(method="cap-sparsegpt", sparsity=0.5, pattern="2:4", alloc_signal="cap"))
    assert needs_cap_scores(PruneConfig(method="cap-sparsegpt", sparsity=0.5, pattern="2:4", nm_dense=0.1))


def test_token_weights_alone_prune_the_same_weights_without_cap_scores(tokenizer):
    """cap-wanda's default at 10% reads no CAP scores: pruning without them gives the same model
    as with them (a uniform allocation, unit factors of 1), and a guidance that reads them refuses."""
    from cap_edge.scoring import score_channels

    calib = load_split("embedded", "calib", 1)[:6]
    with_scores, without = make_tiny_llama(), make_tiny_llama()
    batch, scores = _scores(with_scores, tokenizer)
    chans = score_channels(with_scores, tokenizer, calib, ScoreConfig(), refine_fraction=0.5, progress=False)
    cfg = PruneConfig(method="cap-wanda", sparsity=0.1)
    assert cfg.guidance["token_beta"] > 0 and cfg.guidance["unit_strength"] == 0 == cfg.guidance["alloc_bound"]
    a = prune_model(with_scores, cfg, batch, scores, progress=False, channel_scores=chans)
    b = prune_model(without, cfg, batch, None, progress=False, channel_scores=None)
    assert a["allocation"] == b["allocation"] and a["achieved_sparsity"] == b["achieved_sparsity"]
    for (name, x), (_, y) in zip(with_scores.state_dict().items(), without.state_dict().items()):
        assert torch.equal(x, y), name
    untouched = make_tiny_llama()
    wanda = prune_model(untouched, PruneConfig(method="wanda", sparsity=0.1), batch, progress=False)
    assert wanda["achieved_sparsity"] == pytest.approx(b["achieved_sparsity"])
    assert not all(torch.equal(x, y) for x, y in zip(untouched.state_dict().values(), without.state_dict().values()))
    for unit in (dict(unit_strength=0.5), dict(alloc_bound=0.1, alloc_signal="cap")):
        with pytest.raises(ConfigError, match="needs CAP head scores"):
            prune_model(make_tiny_llama(), PruneConfig(method="cap-wanda", sparsity=0.3, **unit), batch, None, progress=False)


def test_cap_global_threshold_within_tolerance(tokenizer):
    model = make_tiny_llama()
    batch, scores = _scores(model, tokenizer)
    rep = prune_model(model, PruneConfig(method="cap", sparsity=0.3), batch, scores, progress=False)
    assert abs(rep["achieved_sparsity"] - 0.3) <= 1e-4


def test_bad_prune_config_is_clear():
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            PruneConfig(sparsity=bad)
    with pytest.raises(ConfigError, match="pattern"):
        PruneConfig(pattern="3-4")
    with pytest.raises(ConfigError, match="method"):
        PruneConfig(method="random")


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_float32_equals_float64_on_a_full_rank_hessian(nm):
    torch.manual_seed(0)
    n_in, n_out, tokens = 128, 64, 4096  # tokens >> inputs: full rank
    X = torch.randn(tokens, n_in) @ torch.randn(n_in, n_in) * 0.3 + torch.randn(tokens, n_in)
    W = torch.randn(n_out, n_in)
    H = X.T.double() @ X.double()
    assert torch.linalg.matrix_rank(H) == n_in
    W64, k64 = sparsegpt_prune(W, H, 0.5, nm, blocksize=32)
    W32, k32 = sparsegpt_prune(W, H.float(), 0.5, nm, blocksize=32, dtype=torch.float32)
    assert (k64 == k32).float().mean() >= 0.99
    err = lambda Wn: float(((X.double() @ (W.double() - Wn.double()).T) ** 2).sum())  # noqa: E731
    assert err(W32) == pytest.approx(err(W64), rel=1e-3)


def test_sparsegpt_dtype_is_a_validated_config_field_that_reaches_the_solve(tokenizer):
    with pytest.raises(ConfigError, match="sparsegpt_dtype: expected float32 or float64, got 'float16'"):
        PruneConfig(method="sparsegpt", sparsegpt_dtype="float16")
    masks = {}
    for dt in ("float64", "float32"):
        model = make_tiny_llama()
        batch, scores = _scores(model, tokenizer)
        prune_model(model, PruneConfig(method="sparsegpt", sparsity=0.5, sparsegpt_dtype=dt), batch, scores, progress=False)
        masks[dt] = [lin.weight == 0 for layer in model.model.layers for lin in (layer.self_attn.q_proj, layer.mlp.down_proj)]
        weights = [lin.weight.clone() for layer in model.model.layers for lin in (layer.self_attn.q_proj, layer.mlp.down_proj)]
        masks[dt + "_w"] = weights
    agree = sum(int((a == b).sum()) for a, b in zip(masks["float64"], masks["float32"])) / sum(a.numel() for a in masks["float64"])
    assert agree >= 0.9  # tiny calibration: some near-ties flip; the real-model figure is in pruning.json
    # the dtype reaches the solve: the float32 weights are not bit-identical to the float64 ones
    assert any(not torch.equal(a, b) for a, b in zip(masks["float64_w"], masks["float32_w"]))


@pytest.mark.parametrize("nm", [(2, 4), None])
def test_refit_on_mask_reaches_each_rows_least_squares_optimum(nm):
    from cap_edge.pruning.sparsegpt import refit_on_mask, sparsegpt_prune

    torch.manual_seed(0)
    cols = 64
    X = torch.randn(300, cols, dtype=torch.float64) @ torch.randn(cols, cols, dtype=torch.float64) * 0.3 \
        + torch.randn(300, cols, dtype=torch.float64)  # (tokens, in): correlated inputs
    H = X.T @ X
    W = torch.randn(40, cols, dtype=torch.float64)
    Ws, keep = sparsegpt_prune(W, H, 0.5, nm)
    Hd = H + 0.01 * H.diag().mean() * torch.eye(cols, dtype=torch.float64)  # the damping both use

    def loss(Wx):
        D = Wx - W
        return float(((D @ Hd) * D).sum())

    exact = torch.zeros_like(W)
    for r in range(W.shape[0]):  # each row's optimum on its own support: H_SS w_S = (W0 H)_S
        S = keep[r]
        exact[r, S] = torch.linalg.solve(Hd[S][:, S], (W[r] @ Hd)[S])
    assert torch.equal(refit_on_mask(W, Ws, H, keep, 0, dtype=torch.float64), Ws)  # no steps: SparseGPT's own weights
    Wr = refit_on_mask(W, Ws, H, keep, 60, dtype=torch.float64)
    assert (Wr[~keep] == 0).all() and torch.equal(Wr != 0, keep)  # the mask (and so the N:M pattern) is unchanged
    assert loss(exact) < 0.95 * loss(Ws)  # SparseGPT's frozen columns leave room: the check is not vacuous
    assert loss(Wr) == pytest.approx(loss(exact), rel=1e-9)
    assert torch.allclose(Wr, exact, atol=1e-6)
    few = refit_on_mask(W, Ws, H, keep, 3, dtype=torch.float64)
    assert loss(exact) <= loss(few) < loss(Ws)  # every step descends
    # the early stop: most of the gain, short of the optimum (it stopped), and never more steps than asked
    gain = loss(Ws) - loss(exact)
    stopped = refit_on_mask(W, Ws, H, keep, 60, dtype=torch.float64, tol=1e-2)
    assert loss(exact) < loss(stopped) <= loss(exact) + 0.05 * gain
    assert torch.equal(refit_on_mask(W, Ws, H, keep, 3, dtype=torch.float64, tol=1e-2), few)
    # float32 products, float64 iterate: the optimum to float32's precision, far below the stop's gap
    mixed = refit_on_mask(W, Ws, H, keep, 60, dtype=torch.float64, product_dtype=torch.float32)
    assert loss(mixed) == pytest.approx(loss(exact), rel=1e-5) and torch.equal(mixed != 0, keep)
    assert not torch.equal(mixed, Wr)  # the products' precision reached the solve


def test_refit_on_mask_rejects_mismatched_inputs_and_config():
    from cap_edge.pruning.sparsegpt import refit_on_mask

    W, keep = torch.randn(4, 8), torch.ones(4, 8, dtype=torch.bool)
    with pytest.raises(ConfigError, match=r"expected weight/pruned/keep of shape \(4, 8\) and a \(8, 8\) Hessian"):
        refit_on_mask(W, W, torch.eye(6), keep)
    with pytest.raises(ConfigError, match="expected iters >= 0 and 0 <= tol < 1, got -1 and 0.0"):
        refit_on_mask(W, W, torch.eye(8), keep, -1)
    with pytest.raises(ConfigError, match="expected iters >= 0 and 0 <= tol < 1, got 5 and 1.0"):
        refit_on_mask(W, W, torch.eye(8), keep, 5, tol=1.0)
    with pytest.raises(ConfigError, match=r"mask_refit_tol: expected a number in \[0, 1\) or none, got -0.1"):
        PruneConfig(method="sparsegpt", mask_refit_tol=-0.1)
    with pytest.raises(ConfigError, match="mask_refit_products: expected float32 or float64 or none, got 'bfloat16'"):
        PruneConfig(method="sparsegpt", mask_refit_products="bfloat16")
    with pytest.raises(ConfigError, match="mask_refit_iters: expected an integer >= 0 or none, got 2.5"):
        PruneConfig(method="sparsegpt", mask_refit_iters=2.5)
    with pytest.raises(ConfigError, match="sparsegpt_damp: expected a number > 0 or none, got 0"):
        PruneConfig(method="sparsegpt", sparsegpt_damp=0)


def test_obs_defaults_differ_only_for_cap_sparsegpt_under_nm_or_from_half():
    from cap_edge.pruning.methods import get_method, obs_settings

    def obs(method, pattern, **kw):
        return obs_settings(PruneConfig(method=method, pattern=pattern, **kw), get_method(method))

    paper = {"damp": 0.01, "refit_iters": 0, "refit_tol": 0.0, "refit_products": "float64"}
    guided = {"damp": 0.1, "refit_iters": 30, "refit_tol": 1e-3, "refit_products": "float32"}
    assert obs("sparsegpt", "unstructured") == obs("sparsegpt", "2:4") == paper
    assert obs("cap-sparsegpt", "unstructured", sparsity=0.3) == obs("cap-sparsegpt", "unstructured", sparsity=0.49) == paper
    assert obs("cap-sparsegpt", "2:4") == obs("cap-sparsegpt", "4:8") == guided
    assert obs("cap-sparsegpt", "unstructured", sparsity=0.5) == obs("cap-sparsegpt", "unstructured", sparsity=0.7) == guided
    assert obs("cap-sparsegpt", "2:4", sparsegpt_damp=0.01, mask_refit_iters=0, mask_refit_tol=0.0,
               mask_refit_products="float64") == paper  # explicit values win
    assert obs("sparsegpt", "2:4", mask_refit_iters=5) == {**paper, "refit_iters": 5}


def test_mask_refit_reaches_prune_model_and_keeps_the_pattern(tokenizer):
    out = {}
    for iters in (0, 20):
        model = make_tiny_llama()
        batch, scores = _scores(model, tokenizer)
        rep = prune_model(model, PruneConfig(method="sparsegpt", pattern="2:4", mask_refit_iters=iters), batch, scores,
                          progress=False)
        assert rep["achieved_sparsity"] == pytest.approx(0.5, abs=1e-9)
        assert rep["obs"] == {"damp": 0.01, "refit_iters": iters, "refit_tol": 0.0,
                              "refit_products": "float64"}  # the report says what the solve used
        out[iters] = [layer.mlp.down_proj.weight.clone() for layer in model.model.layers]
    # layer 0 sees the same inputs either way: the same 2:4 mask, the refit moves only the kept weights
    # (later layers see the refitted layers' outputs, so their masks may differ)
    assert torch.equal(out[0][0] == 0, out[20][0] == 0) and not torch.allclose(out[0][0], out[20][0])
    for w in out[20]:
        assert ((w != 0).view(w.shape[0], -1, 4).sum(-1) <= 2).all()


def test_attention_only_guidance_prunes_every_mlp_as_wanda(tokenizer):
    """guided_blocks="attention": the allocation, unit factors and token weights move attention only; every MLP
    is pruned at the target with plain Wanda's statistics. Layer 0's inputs are the same for both methods (its
    statistics are gathered before it is pruned), so its MLP comes out weight for weight as Wanda's."""
    from cap_edge.scoring import score_channels

    calib = load_split("embedded", "calib", 1)[:6]
    guided, wanda = make_tiny_llama(), make_tiny_llama()
    batch, scores = _scores(guided, tokenizer)
    chans = score_channels(guided, tokenizer, calib, ScoreConfig(), refine_fraction=0.5, progress=False)
    cfg = PruneConfig(method="cap-wanda", sparsity=0.3, guided_blocks="attention", guidance_ramp=None)
    assert cfg.guidance["blocks"] == "attention"
    # the default (guidance.CAP_WANDA_BANDS): attention only from 25% to 40%, every block at 20%, and explicit values win
    assert [PruneConfig(method="cap-wanda", sparsity=s).guidance["blocks"] for s in (0.2, 0.3, 0.5)] == ["all", "attention", "all"]
    assert PruneConfig(method="cap-wanda", sparsity=0.3, guided_blocks="all").guidance["blocks"] == "all"
    rep = prune_model(guided, cfg, batch, scores, progress=False, channel_scores=chans)
    prune_model(wanda, PruneConfig(method="wanda", sparsity=0.3), batch, progress=False)
    assert rep["allocation"]["mlp"] == [0.3, 0.3]
    assert rep["calibration_statistics"]["beta_applies_to"].startswith("attention")  # the report says where beta acted
    attn = rep["allocation"]["attn"]
    assert attn != [0.3, 0.3] and sum(attn) / 2 == pytest.approx(0.3, abs=1e-6)  # the attention blocks share the target
    g, w = guided.model.layers[0], wanda.model.layers[0]
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert torch.equal(getattr(g.mlp, name).weight, getattr(w.mlp, name).weight), name
    assert not torch.equal(g.self_attn.q_proj.weight, w.self_attn.q_proj.weight)
    with pytest.raises(ConfigError, match="guided_blocks: expected all or attention, got 'mlp'"):
        PruneConfig(method="cap-wanda", guided_blocks="mlp")
