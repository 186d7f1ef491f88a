"""The build search's pure rules on hand-made tables: the grid respects the device, the selection
ships the most accurate candidate that meets every target, says so when nothing does, and the
Pareto front is the set of undominated rows."""

import pytest

from cap_edge.config import PruneConfig, SearchConfig, TargetConfig
from cap_edge.deploy.search import candidates, pareto_front, prune_grid, select
from cap_edge.errors import ConfigError


def _row(name, acc, tok, mb, *, output="gguf:q8_0", dense=False, baseline=False, valid=True, mem=300):
    return {"name": name, "output": output, "dense": dense, "baseline": baseline, "valid": valid, "acc": acc,
            "decode_tok_s": tok, "ttft_s": 0.1, "mb": mb, "memory_mb": mem}


def test_grid_offers_n_m_only_where_the_runtime_exploits_it():
    s = SearchConfig(levels=(0.1, 0.2), selection=("cap", "magnitude"), nm_methods=("sparsegpt",))
    base = PruneConfig()
    cpu = prune_grid(s, "none", base)
    assert [n for n, _ in cpu] == ["dense", "cap-s10", "magnitude-s10", "cap-s20", "magnitude-s20"]
    assert all(p is None or p.structured for _, p in cpu)
    jetson = prune_grid(s, "2:4", base)
    assert ("sparsegpt-2:4" in [n for n, _ in jetson]) and dict(jetson)["sparsegpt-2:4"].pattern == "2:4"
    cands = candidates(s, ["gguf:q8_0"], "none", base, {"gguf:q8_0": "gguf:q4_0"})
    assert [c.output for c in cands if c.baseline] == ["gguf:q4_0"] and all(c.prune is None for c in cands if c.baseline)
    with pytest.raises(ConfigError, match="search.levels"):
        SearchConfig(levels=(1.2,))


def test_select_ships_the_most_accurate_that_meets_every_target():
    rows = [_row("dense", 0.60, 100, 145, dense=True), _row("cap-s10", 0.58, 120, 130), _row("cap-s20", 0.40, 140, 116),
            _row("dense", 0.55, 160, 90, output="gguf:q4_0", dense=True, baseline=True)]
    t = TargetConfig(decode_tok_s_floor=110, accuracy_floor=0.9)
    sel = select(rows, t, memory_budget_mb=1000)
    assert rows[sel["chosen"]]["name"] == "cap-s10" and sel["met_targets"] and sel["pruned_beats_dense"]
    assert "shipping pruned cap-s10" in sel["message"]
    assert any("accuracy 0.400 < 0.9 x dense 0.600" in m for m in sel["failures"][2])  # cap-s20 misses the floor
    # without a speed floor the dense model is more accurate: the build says pruning did not pay off
    sel = select(rows, TargetConfig(accuracy_floor=0.9), memory_budget_mb=1000)
    assert rows[sel["chosen"]]["name"] == "dense" and not sel["pruned_beats_dense"]
    assert "no pruned candidate beats the dense model" in sel["message"]


def test_select_ties_prefer_faster_then_smaller_and_reports_best_effort():
    rows = [_row("a", 0.5, 100, 100), _row("b", 0.5, 120, 100), _row("c", 0.5, 120, 90)]
    assert rows[select(rows, TargetConfig(), 1000)["chosen"]]["name"] == "c"
    # nothing meets the speed floor: the best effort is the one missing fewest targets, then the most accurate
    rows = [_row("a", 0.6, 50, 100, mem=5000), _row("b", 0.5, 80, 100)]
    sel = select(rows, TargetConfig(decode_tok_s_floor=200), memory_budget_mb=1000)
    assert not sel["met_targets"] and rows[sel["chosen"]]["name"] == "b"
    assert "no candidate meets every target; best effort: b" in sel["message"] and "decode 80.0 tok/s < 200" in sel["message"]
    # an invalid artifact never ships while a valid one meets the targets
    rows = [_row("x", 0.9, 200, 10, valid=False), _row("y", 0.5, 100, 100)]
    assert rows[select(rows, TargetConfig(), 1000)["chosen"]]["name"] == "y"


def test_pareto_front():
    rows = [_row("a", 0.6, 100, 145), _row("b", 0.6, 120, 130), _row("c", 0.4, 140, 116), _row("d", 0.3, 130, 120),
            _row("e", 0.9, 10, 10, valid=False)]
    assert pareto_front(rows) == [False, True, True, False, False]
