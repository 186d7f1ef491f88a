import torch
import pytest

from cap_edge.config import BudgetConfig, ScoreConfig
from cap_edge.errors import TaskError, ScoringIncomplete
from cap_edge.models import model_fingerprint
from cap_edge.scoring import (ScoringEngine, build_calib_batch, compute_scores, scores_cache_key,
                              spearman, subset_losses, summarise_effects, score_matrix)
from cap_edge.tasks import load_split

from conftest import make_tiny_llama


def _batch(tok, n=6, K=3):
    return build_calib_batch(tok, load_split("embedded", "calib", 1)[:n], K)


def test_engine_mask_equals_zeroed_o_proj_columns(tokenizer, tiny_model):
    batch = _batch(tokenizer)
    eng = ScoringEngine(tiny_model, batch, 3, max_batch_tokens=1)  # one head mask per forward
    layer, head, hd = 1, 2, 16
    masked = subset_losses(eng.masked_rows(layer, [head]), batch, 3)[0]
    ref_model = make_tiny_llama()
    with torch.no_grad():
        ref_model.model.layers[layer].self_attn.o_proj.weight[:, head * hd:(head + 1) * hd] = 0
    ref = ScoringEngine(ref_model, batch, 3).intact()
    assert torch.allclose(masked, ref, rtol=0, atol=1e-6)  # the same numbers up to float32 round-off
    fresh = ScoringEngine(tiny_model, batch, 3)  # layer_input runs the intact forward itself
    assert fresh.layer_input(0).shape == (batch.n, batch.input_ids.shape[1], tiny_model.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(fresh.layer_input(0), tiny_model.model.embed_tokens(batch.input_ids))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_exact_matches_naive_with_gqa(tokenizer, attn):
    model = make_tiny_llama(attn=attn)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    batch = _batch(tokenizer)
    exact = compute_scores(model, batch, ScoreConfig(mode="exact"), progress=False)
    naive = compute_scores(model, batch, ScoreConfig(mode="naive"), progress=False)
    d = (score_matrix(exact) - score_matrix(naive)).abs().max().item()
    assert d <= 1e-6
    assert score_matrix(exact).abs().max() > 1e-3  # heads matter: the comparison is not vacuous


def test_batched_masks_equal_single(tokenizer, tiny_model):
    batch = _batch(tokenizer)
    many = ScoringEngine(tiny_model, batch, 3, max_batch_tokens=10**9).masked_rows(0, range(4))
    one = ScoringEngine(tiny_model, batch, 3, max_batch_tokens=1).masked_rows(0, range(4))
    assert torch.allclose(many, one, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("target", ["heads", "channels"])
def test_attribution_in_row_chunks_equals_whole_batch(tokenizer, tiny_model, target):
    # a large calibration batch is differentiated in row chunks (memory); the gradient is a sum
    # over rows, so chunking must not change it
    batch = _batch(tokenizer)
    T = batch.input_ids.shape[1]
    whole = ScoringEngine(tiny_model, batch, 3, max_batch_tokens=10**9, channel_group=8).attribution_effects(target)
    chunked = ScoringEngine(tiny_model, batch, 3, max_batch_tokens=4 * T, channel_group=8).attribution_effects(target)
    assert whole.abs().max() > 1e-4
    assert torch.allclose(whole, chunked, atol=1e-6, rtol=1e-5)


def test_batch_rows_renumbers_answers(tokenizer):
    batch = _batch(tokenizer)
    part = batch.rows(2, 4)
    assert part.n == 2 and torch.equal(part.input_ids, batch.input_ids[2:4])
    sel = (batch.ans_row >= 2) & (batch.ans_row < 4)
    assert torch.equal(part.ans_row, batch.ans_row[sel] - 2) and torch.equal(part.ans_tgt, batch.ans_tgt[sel])


def test_subset_median_mean_spread():
    s = summarise_effects(torch.tensor([0.3, -5.0, 0.1]))
    assert s["median"] == pytest.approx(0.1) and s["mean"] == pytest.approx(-4.6 / 3)
    assert s["spread"] == pytest.approx(5.3)
    assert summarise_effects(torch.tensor([1.0, 3.0, 10.0, 2.0]))["median"] == pytest.approx(2.5)


def test_attribution_and_hybrid_run_and_correlate(tokenizer, tiny_model):
    batch = _batch(tokenizer)
    exact = score_matrix(compute_scores(tiny_model, batch, ScoreConfig(mode="exact"), progress=False))
    attr = score_matrix(compute_scores(tiny_model, batch, ScoreConfig(mode="attribution"), progress=False))
    hyb = compute_scores(tiny_model, batch, ScoreConfig(mode="hybrid", refine_fraction=0.5), progress=False)
    assert hyb["refined_units"] >= 2 and 0 < hyb["refined_cost_share"] <= 0.5
    h = score_matrix(hyb)
    exact_heads = [(int(l), i) for l, hs in hyb["layers"].items() for i, d in enumerate(hs) if d["how"] == "exact"]
    for l, i in exact_heads:
        assert h[l, i] == pytest.approx(exact[l, i].item(), abs=1e-6)  # float32 round-off of another batching
    assert spearman(h.flatten().tolist(), exact.flatten().tolist()) >= spearman(attr.flatten().tolist(), exact.flatten().tolist()) - 1e-9


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_cache_key_changes_with_weights_and_data(tokenizer, tiny_model):
    cfg = ScoreConfig()
    b1, b2 = _batch(tokenizer, 6), _batch(tokenizer, 5)
    fp = model_fingerprint(tiny_model)
    k = scores_cache_key(fp, b1, cfg, torch.float32)
    assert k == scores_cache_key(model_fingerprint(make_tiny_llama()), b1, cfg, torch.float32)
    assert k != scores_cache_key(fp, b2, cfg, torch.float32)
    assert k != scores_cache_key(model_fingerprint(make_tiny_llama(seed=1)), b1, cfg, torch.float32)
    assert k != scores_cache_key(fp, b1, ScoreConfig(subsets=2), torch.float32)


def test_cache_hit_and_resume_computes_only_the_rest(tokenizer, tiny_model):
    batch = _batch(tokenizer)
    key = scores_cache_key(model_fingerprint(tiny_model), batch, ScoreConfig(), torch.float32)
    fresh = compute_scores(tiny_model, batch, ScoreConfig(), progress=False)  # no cache: the reference
    # interrupted after layer 0 (Ctrl-C while layer 1 would start): layer 0 is kept in the cache
    def stop(result):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        compute_scores(tiny_model, batch, ScoreConfig(), cache_key=key, progress=False, on_layer=stop)
    resumed = compute_scores(tiny_model, batch, ScoreConfig(), cache_key=key, progress=False)
    assert resumed["complete"] and not resumed["cache_hit"] and resumed["resumed_layers"] == 1
    # layer-forwards: the intact pass (2) + layer 0's 4 masks x 2 layers, then intact (2) + layer 1's 4 masks x 1
    assert fresh["layer_forwards"] == 2 + 4 * 2 + 4 * 1
    assert resumed["layer_forwards"] == (2 + 4 * 2) + (2 + 4 * 1)  # the resumed run added only layer 1's work
    assert resumed["layers"] == fresh["layers"]
    again = compute_scores(tiny_model, batch, ScoreConfig(), cache_key=key, progress=False)
    assert again["cache_hit"] and again["layers"] == fresh["layers"]


def test_time_budget_stops_cleanly_and_resumes(tokenizer, tiny_model):
    batch = _batch(tokenizer)
    key = scores_cache_key(model_fingerprint(tiny_model), batch, ScoreConfig(), torch.float32)
    with pytest.raises(ScoringIncomplete) as ei:
        compute_scores(tiny_model, batch, ScoreConfig(), cache_key=key, time_budget_s=0.0, progress=False)
    assert "0 of 2 layers" in str(ei.value) and ei.value.partial_path.is_file()
    done = compute_scores(tiny_model, batch, ScoreConfig(), cache_key=key, progress=False)
    assert done["complete"] and done["resumed_layers"] == 0


def test_empty_or_small_calibration_is_clear_error(tokenizer):
    with pytest.raises(TaskError, match="empty"):
        build_calib_batch(tokenizer, [], 3)
    with pytest.raises(TaskError, match="too small"):
        build_calib_batch(tokenizer, load_split("embedded:dates", "calib", 2), 3)


def test_budget_caps_problems_and_tokens(tokenizer):
    b = build_calib_batch(tokenizer, load_split("embedded", "calib", 2), 3, BudgetConfig(problems=5, tokens_per_problem=40))
    assert b.n == 5 and b.input_ids.shape[1] <= 40
