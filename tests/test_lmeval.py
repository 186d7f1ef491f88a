"""lm-evaluation-harness runs on a pruned directory (unstructured and structured) with a local
task written by cap-edge, and agrees with cap-edge's own evaluation on the same problems."""

import pytest

pytest.importorskip("lm_eval", reason="lm-eval is a test dependency (pip install -e '.[test]')")


@pytest.mark.parametrize("pattern", ["unstructured", "structured"])
def test_lm_eval_on_a_pruned_dir_matches_cap_edge_eval(pattern, tiny_dir, tokenizer, tmp_path):
    import cap_edge
    from cap_edge.backend import TorchBackend
    from cap_edge.config import PruneConfig
    from cap_edge.evaluate import evaluate
    from cap_edge.lmeval import run, write_task
    from cap_edge.models import load_model
    from cap_edge.prune_io import save_pruned
    from cap_edge.pruning import prune_model
    from cap_edge.scoring import build_calib_batch
    from cap_edge.tasks import load_split

    lm = load_model(str(tiny_dir), device="cpu")
    batch = build_calib_batch(tokenizer, load_split("embedded", "calib", 1)[:6], 3)
    cfg = PruneConfig(method="magnitude", sparsity=0.2 if pattern == "structured" else 0.5, pattern=pattern, refit=False)
    d = save_pruned(lm.model, tokenizer, tmp_path / "p", prune_model(lm.model, cfg, batch, progress=False))
    include, task = write_task(tmp_path / "task", "embedded:geography,animals", limit=6)
    model = str(d) if pattern == "unstructured" else cap_edge.load_pretrained(d)  # structured: the documented loader
    out = run(model, tokenizer, include, task, batch_size=4)
    assert len(out["samples"]) == 12 and 0 <= out["results"]["acc_norm,none"] <= 1
    ours = evaluate(TorchBackend(cap_edge.load_pretrained(d), tokenizer, progress=False), tokenizer,
                    load_split("embedded:geography,animals", "eval", 6))
    assert out["results"]["acc_norm,none"] == pytest.approx(ours["overall"]["acc"])  # the same requests, the same answer
