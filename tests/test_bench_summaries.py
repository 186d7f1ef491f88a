"""The benchmarks' summaries over calibration draws: a difference is called larger than the noise
only when the two rows' ranges over the draws do not overlap."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def draws(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("structured_draws")


def _run(draw, name, method, acc, kacc):
    return {"draw": draw, "name": name, "method": method, "level": 0.2, "params": 1, "acc": acc, "ci95": [0, 1],
            "answer_ce": 3.0, "knowledge": {"acc": kacc, "answer_ce": 4.0}}


def test_structured_draws_separate_only_non_overlapping_ranges(draws):
    runs = [_run(0, "cap-20", "cap", 0.40, 0.50), _run(0, "magnitude-20", "magnitude", 0.38, 0.40),
            _run(1, "cap-20", "cap", 0.36, 0.55), _run(1, "magnitude-20", "magnitude", 0.39, 0.45)]
    hits = {f"{n}@{d}": {"knowledge": "1100", "suite": "10"} for n in ("cap-20", "magnitude-20") for d in (0, 1)}
    hits["magnitude-20@1"] = {"knowledge": "0100", "suite": "10"}
    data = {"draws": {"runs": runs, "hits": hits}}
    draws.summarise_draws(data)
    d = data["draws"]
    assert d["draws"] == [0, 1]
    (cmp,) = d["comparisons"]
    # knowledge: cap 0.50-0.55 vs magnitude 0.40-0.45 do not overlap; suite: 0.36-0.40 vs 0.38-0.39 do
    assert cmp["verdict"]["knowledge_acc"] == pytest.approx({"higher": "cap", "delta": 0.10, "separated": True})
    assert cmp["verdict"]["acc"]["separated"] is False
    assert [t["knowledge"]["a_only"] for t in cmp["mcnemar_per_draw"]] == [0, 1]
    assert "beyond the spread" in d["compare_md"] and "within the spread" in d["compare_md"]
    cap = next(s for s in d["summary"] if s["name"] == "cap-20")
    assert cap["knowledge_acc"]["min"] == 0.50 and cap["knowledge_acc"]["max"] == 0.55 and cap["draws"] == 2


def test_gemma3_table_says_retention_is_undefined_when_dense_answers_nothing(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    gemma3 = importlib.import_module("gemma3")
    row = {"method": "wanda", "pattern": "unstructured", "sparsity": 0.2, "acc": 0.7, "answer_ce": 3.0, "kl": 0.36,
           "retention": float("nan"), "ppl": 119.0, "prune_seconds": 68}
    dense = {"knowledge": {"acc": 0.7}, "suite": {"answer_ce": 2.9}, "ppl": 100.0,
             "generation": {"questions_asked": 80, "dense_correct": 0}}
    md = gemma3.pruning_md([row], dense)
    assert row["retention"] != row["retention"]  # the table reads its rows, never rewrites them
    assert "nan" not in md and md.count("n/a") >= 2 and "answers 0 of 80" in md
    dense["generation"]["dense_correct"] = 40
    row["retention"] = 0.5
    assert "n/a" not in gemma3.pruning_md([row], dense)


@pytest.fixture
def cmp(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("pruning_compare")


def _prun(method, draw, ce, kl, hits=None, acc=None):
    return {"method": method, "draw": draw, "answer_ce": ce, "kl": kl, "hits": hits,
            "acc": acc if acc is not None else sum(hits) / len(hits)}


BASE_HITS = [True] * 10 + [False] * 10


def test_best_cap_is_the_lowest_ce_method_that_meets_every_criterion(cmp):
    level = [_prun("wanda", d, 4.5, 1.0, BASE_HITS) for d in (0, 1)]
    level += [_prun("sparsegpt", d, 4.0, 1.4, BASE_HITS) for d in (0, 1)]  # best baseline by CE
    level += [_prun("cap-sparsegpt", d, 3.7, 1.6, BASE_HITS) for d in (0, 1)]  # lowest CE, KL x1.14
    level += [_prun("cap-wanda", d, 3.9, 1.3, [True] * 12 + [False] * 8) for d in (0, 1)]  # all criteria
    out = cmp.compare(level, [0, 1])
    assert out["best_baseline"] == "sparsegpt"
    assert out["lowest_ce_cap"] == "cap-sparsegpt" and out["best_cap"] == "cap-wanda"
    assert out["criteria"] == {"ce_within_0.02": True, "kl_within_5pct": True, "not_significantly_worse": True}
    assert out["kl_ratio"] == pytest.approx(1.3 / 1.4) and out["ce_gap"] == pytest.approx(-0.1)
    by = {j["method"]: j for j in out["per_cap"]}
    assert by["cap-sparsegpt"]["criteria"]["kl_within_5pct"] is False
    assert [t["a_only"] for t in by["cap-wanda"]["mcnemar_per_draw"]] == [2, 2]
    # nobody passes: the lowest-CE CAP method is reported, failing
    level = [r for r in level if r["method"] != "cap-wanda"]
    out = cmp.compare(level, [0, 1])
    assert out["best_cap"] == "cap-sparsegpt" and out["criteria"]["kl_within_5pct"] is False


def test_runs_without_hits_reuse_stored_tests_or_leave_the_paired_criterion_open(cmp):
    level = [_prun("wanda", 0, 4.5, 1.0, acc=0.5), _prun("sparsegpt", 0, 4.0, 1.0, acc=0.5),
             _prun("cap-wanda", 0, 3.9, 1.0, acc=0.45), _prun("cap-sparsegpt", 0, 3.95, 1.0, acc=0.55)]
    out = cmp.compare(level, [0])
    by = {j["method"]: j for j in out["per_cap"]}
    assert by["cap-wanda"]["criteria"]["not_significantly_worse"] is None  # behind, no hits, no stored test
    assert by["cap-sparsegpt"]["criteria"]["not_significantly_worse"] is True  # ahead: no test can call it worse
    assert out["best_cap"] == "cap-sparsegpt"  # the only one whose every criterion is decided and met
    known = {("cap-wanda", "sparsegpt", 0): {"draw": 0, "n": 20, "a_only": 1, "b_only": 2, "p_value": 1.0}}
    out = cmp.compare(level, [0], known)
    assert out["best_cap"] == "cap-wanda" and out["mcnemar_per_draw"][0]["reused"] is True
    stored = [{"pattern": "unstructured", "sparsity": 0.5, **out}]
    assert cmp.known_tests(stored)[("", "unstructured", 0.5)][("cap-wanda", "sparsegpt", 0)]["a_only"] == 1


def test_a_checkpoint_with_some_methods_on_fewer_draws_compares_on_the_shared_draws(cmp):
    level = [_prun(m, d, 4.0, 1.0, BASE_HITS) for m in ("wanda", "sparsegpt") for d in (0, 1, 2)]
    level += [_prun("cap-wanda", 0, 3.9, 1.0, BASE_HITS)]  # a run stopped (or checkpointed) after draw 0
    out = cmp.compare(level, [0, 1, 2])
    assert [t["draw"] for t in out["mcnemar_per_draw"]] == [0] and out["best_cap"] == "cap-wanda"


def test_a_stored_test_is_reused_only_for_the_runs_it_was_computed_on(cmp):
    level = [_prun("wanda", 0, 4.5, 1.0, acc=0.5), _prun("sparsegpt", 0, 4.0, 1.0, acc=0.5),
             _prun("cap-wanda", 0, 3.9, 1.0, acc=0.45)]
    t = {"draw": 0, "n": 20, "a_only": 1, "b_only": 2, "p_value": 1.0}
    assert cmp.compare(level, [0], {("cap-wanda", "sparsegpt", 0): {**t, "ce": [3.9, 4.0]}})["best_cap"] == "cap-wanda"
    stale = cmp.compare(level, [0], {("cap-wanda", "sparsegpt", 0): {**t, "ce": [3.7, 4.0]}})  # cap-wanda re-measured since
    assert stale["mcnemar_per_draw"][0]["p_value"] is None and stale["criteria"]["not_significantly_worse"] is None


def test_keep_stored_keeps_transfer_rows_of_methods_this_run_does_not_run(monkeypatch, tmp_path):
    import argparse
    import json

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    pruning = importlib.import_module("pruning")

    def row(method, pattern, sp, **kw):
        return {"method": method, "pattern": pattern, "target_sparsity": sp, "draw": 0, "answer_ce": 3.0, **kw}

    stored = {"eval": {"knowledge": 3}, "runs": [row("wanda", "unstructured", 0.3)], "settings": ["0.3"],
              "transfer": [row(m, p, 0.5, split="A->B") for m in ("sparsegpt", "cap-sparsegpt") for p in ("2:4", "unstructured")],
              "sparsegpt_precision": [], "scoring": [], "summary": [], "transfer_summary": [], "kept_from": [],
              "command": "c", "commit": "x", "machine": {"date": "d"}}
    (tmp_path / "pruning.json").write_text(json.dumps(stored))
    monkeypatch.setattr(pruning, "RESULTS", tmp_path)
    ev = type("Ev", (), {"sizes": lambda self: {"knowledge": 3}})()
    args = argparse.Namespace(keep_stored=True, settings=["2:4"], transfer_settings=["2:4"], methods=["cap-sparsegpt"],
                              transfer_methods=["cap-sparsegpt"], transfer_splits=["A->B", "B->A"], first_draw=0, draws=1,
                              no_precision_check=True, transfer_draws=[0])
    kept = pruning.load_stored(args, ev)["transfer"]
    # this run re-measures only cap-sparsegpt at 2:4: SparseGPT's 2:4 row and every 50% row stay
    assert sorted((r["method"], r["pattern"]) for r in kept) == [("cap-sparsegpt", "unstructured"), ("sparsegpt", "2:4"),
                                                                 ("sparsegpt", "unstructured")]
    # a run of draw 1 alone keeps draws 0 and 2 of its own method and setting
    stored["runs"] = [row("cap-sparsegpt", "2:4", 0.5, draw=d) for d in range(3)]
    (tmp_path / "pruning.json").write_text(json.dumps(stored))
    one = argparse.Namespace(**{**vars(args), "first_draw": 1})
    assert [r["draw"] for r in pruning.load_stored(one, ev)["runs"]] == [0, 2]
    # a run of the other direction only keeps every A->B row
    other = argparse.Namespace(**{**vars(args), "transfer_splits": ["B->A"], "transfer_methods": ["sparsegpt", "cap-sparsegpt"]})
    assert len(pruning.load_stored(other, ev)["transfer"]) == 4
    # a run of transfer draw 1 keeps draw 0 of its own methods, splits and settings
    later = argparse.Namespace(**{**vars(args), "transfer_draws": [1]})
    assert len(pruning.load_stored(later, ev)["transfer"]) == 4


def test_calibration_scores_the_dense_model_after_a_prune(monkeypatch):
    """A run prunes in place; a later draw or transfer split must still be scored on the dense weights
    (it was not: draws after the first and both transfer splits scored the last pruned model)."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    pruning = importlib.import_module("pruning")
    model = torch.nn.Linear(4, 4)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []

    def score(m, *a, **k):
        seen.append(m.weight.detach().clone())
        return {}

    monkeypatch.setattr(pruning, "score_heads", score)
    monkeypatch.setattr(pruning, "score_channels", score)
    monkeypatch.setattr(pruning, "calibration_problems", lambda *a, **k: ["p"])
    monkeypatch.setattr(pruning, "build_calib_batch", lambda *a, **k: None)
    with torch.no_grad():
        model.weight[:, :2] = 0  # a prune
    lm = type("LM", (), {"model": model, "tokenizer": type("Tok", (), {"pad_token_id": 0})()})()
    pruning.calibrate(lm, original, "embedded", 1, "hybrid")
    assert len(seen) == 2 and all(torch.equal(w, original["weight"]) for w in seen)


def test_n300_checks_the_stored_run_and_tests_the_pair(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    n300 = importlib.import_module("pruning_n300")
    new = {"a": True, "b": False, "c": True}
    same = n300.agreement(new, ["a", "b"], {"acc": 0.5, "hits": "10"})
    assert same == {"n": 2, "acc": 0.5, "stored_acc": 0.5, "same_acc": True, "same": 2}
    other = n300.agreement(new, ["a", "b"], {"acc": 1.0, "hits": "11"})
    assert other["same"] == 1 and other["same_acc"] is False
    assert "same" not in n300.agreement(new, ["a", "b"], {"acc": 0.5})  # stored before hits were kept: accuracy only
    cap = {"method": "cap-wanda", "draw": 1, "acc": 0.9, "hits": "1" * 9 + "0"}
    base = {"method": "wanda", "draw": 1, "acc": 0.1, "hits": "0" * 9 + "1"}
    lv = n300.level_result({"pattern": "unstructured", "sparsity": 0.5}, cap, base)
    assert lv["mcnemar"]["a_only"] == 9 and lv["mcnemar"]["b_only"] == 1 and lv["not_significantly_worse"] and lv["draw"] == 1
    behind = n300.level_result({"pattern": "unstructured", "sparsity": 0.5}, base, cap)
    assert behind["mcnemar"]["p_value"] < 0.05 and not behind["not_significantly_worse"]


def test_tuning_pairs_each_cap_row_with_its_baseline_of_the_same_draw_and_validation_set(monkeypatch):
    """guided_tuning's paired table: a CAP row against each baseline's row (Wanda, SparseGPT) of the same
    setting, draw and validation set only; the validation set leaves out every tuned draw's problems."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    gt = importlib.import_module("guided_tuning")
    row = lambda variant, draw, hits, ce, kl, keys="v": {"setting": "0.3", "variant": variant, "draw": draw, "val_keys": keys,
                                                        "val_hits": hits, "val_answer_ce": ce, "kl_mean": kl}
    results = [row("wanda", 1, "1100", 2.7, 0.2), row("wanda", 2, "0000", 2.9, 0.1),
               row("cap-wanda ramp 0.5", 1, "1011", 2.6, 0.21), row("cap-wanda ramp 0.5", 3, "1111", 2.5, 0.2),
               row("cap-wanda ramp 0.5", 2, "1111", 2.5, 0.2, keys="other")]
    pairs = gt.paired_rows(results)
    assert len(pairs) == 1  # draw 3 has no Wanda row; draw 2's Wanda row is on another validation set
    setting, draw, variant, scores, base, ce, kl, counts, p, knowledge = pairs[0]
    assert (draw, base, ce, kl, counts, knowledge) == (1, "wanda", "-0.100", "1.050", "2/1", "-")
    # a set that marks its knowledge problems (--knowledge-val) pairs them alone too: positions 0 and 3 here
    assert gt.paired_rows(results, {"v": {"knowledge_mask": "1001"}})[0][-1] == "1/0 (p 1.000)"
    vs = importlib.import_module("validation_sets")
    used = frozenset(p.key for p in vs.validation_problems()[:5])
    assert not used & {p.key for p in vs.validation_problems(used)}


def test_knowledge_validation_stays_off_every_test_pool(monkeypatch):
    """--knowledge-val: the evaluated half's knowledge families only (all three in-family), none of pruning.py's
    transfer or in-family knowledge problems nor pruning_n300's, none of the other half's calibration problems, and
    in-family none of the draws' calibration problems; the transfer sets are the ones the tenth round's rows name."""
    import json

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    vs = importlib.import_module("validation_sets")
    from cap_edge.assess import KNOWLEDGE
    from cap_edge.tasks import calibration_problems, load_split

    used = vs.used_keys((0, 1, 2))
    stored = json.loads((ROOT / "benchmarks" / "results" / "guided_tuning.json").read_text())["validation_sets"]
    for split, (calib_spec, know, _) in [*vs.SPLITS.items(), (None, ("embedded", KNOWLEDGE, None))]:
        val = vs.knowledge_validation(split, used=frozenset() if split else used)
        fams = know.split(":", 1)[1].split(",")
        start = max(vs.TRANSFER_KNOWLEDGE[split], vs.N300_PER_FAMILY) if split else vs.N300_PER_FAMILY
        assert {p.family for p in val} == set(fams)
        tested = {p.key for p in load_split(know, "eval", start)}
        assert len(tested) == len(fams) * start and not {p.key for p in val} & tested
        assert len(val) > 35 * len(fams)  # more than validation_problems' 15-20 per family
        if split:
            assert not {p.family for p in calibration_problems(calib_spec, 128)} & set(fams)
            assert vs.validation_set(split, True, [0, 1, 2])[1] in stored  # the rows measured on it stay comparable
        else:
            assert not {p.key for p in val} & used
            probs, name = vs.validation_set(None, True, [0, 1, 2])
            assert name.startswith("knowledge-val, without draws 0 1 2: ") and len(probs) == len({p.key for p in probs})


def test_knowledge_sets_pools(monkeypatch):
    """knowledge_sets' three pools of half B's knowledge problems: disjoint, the test pool is pruning.py's A->B
    transfer knowledge set, and the two validation parts together are guided_tuning --split A->B --knowledge-val's
    knowledge problems."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    ks = importlib.import_module("knowledge_sets")
    from cap_edge.tasks import load_split

    pools = ks.pools()
    keys = {n: {p.key for p in ps} for n, ps in pools.items()}
    assert sum(map(len, keys.values())) == len(set().union(*keys.values()))
    assert keys["test"] == {p.key for p in load_split(ks.SPLITS["A->B"][1], "eval", ks.TRANSFER_KNOWLEDGE["A->B"])}
    vs = importlib.import_module("validation_sets")
    val, _ = vs.validation_set("A->B", True, [0, 1, 2])
    fams = set(vs.knowledge_families("A->B"))
    assert keys["validation calib"] | keys["validation tail"] == {p.key for p in val if p.family in fams}
    assert keys["validation calib"] and keys["validation tail"]


def test_stored_row_finds_the_last_row_of_its_method_level_draw_and_split(monkeypatch):
    """pruning_n300 (calibration-family runs) and knowledge_sets (transfer rows) read stored pruning.json rows
    through one lookup: the last row written for that method, pattern, target, draw and split, else None."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    common = importlib.import_module("_common")
    row = lambda acc, split=None, draw=0, sp=0.3: {"method": "wanda", "pattern": "unstructured", "target_sparsity": sp,
                                                   "draw": draw, "acc": acc, **({"split": split} if split else {})}
    rows = [row(0.1), row(0.2, "A->B"), row(0.3), row(0.4, draw=1), row(0.5, sp=0.2)]
    assert common.stored_row(rows, "wanda", "unstructured", 0.3, 0)["acc"] == 0.3  # the later of two
    assert common.stored_row(rows, "wanda", "unstructured", 0.3, 0, "A->B")["acc"] == 0.2
    assert common.stored_row(rows, "wanda", "unstructured", 0.3 + 1e-12, 1)["acc"] == 0.4
    assert common.stored_row(rows, "wanda", "unstructured", 0.3, 0, "B->A") is None
    assert common.stored_row(rows, "wanda", "2:4", 0.5, 0) is None and common.stored_row(rows, "cap", "unstructured", 0.3, 0) is None
