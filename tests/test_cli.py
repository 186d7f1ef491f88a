import json

import torch

import pytest
from typer.testing import CliRunner

from cap_edge.cli import app

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("eval", "score"):
        assert cmd in r.output


def test_eval_on_tiny_dir_writes_json(tiny_dir, tmp_path):
    out = tmp_path / "e.json"
    r = runner.invoke(app, ["eval", "--model", str(tiny_dir), "--tasks", "embedded:boolean", "--limit", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "boolean" in r.output and "95% CI" in r.output
    d = json.loads(out.read_text())
    assert d["families"]["boolean"]["n"] == 3


def test_eval_missing_model_is_clear_error(tmp_path):
    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "missing")])
    assert r.exit_code == 2
    assert "does not exist" in r.output


def test_score_writes_json_and_heatmap_then_hits_cache(tiny_dir, tmp_path):
    out = tmp_path / "s"
    args = ["score", "--model", str(tiny_dir), "--samples", "6", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "computed" in r.output
    d = json.loads((out / "head_scores.json").read_text())
    assert d["complete"] and len(d["layers"]) == 2 and len(d["layers"]["0"]) == 4
    assert (out / "head_scores.png").read_bytes()[:4] == b"\x89PNG"
    r2 = runner.invoke(app, args)
    assert r2.exit_code == 2 and "not empty" in r2.output  # never replaces earlier scores silently
    r2 = runner.invoke(app, args + ["--overwrite"])
    assert r2.exit_code == 0 and "cache hit" in r2.output
    r3 = runner.invoke(app, args + ["--force", "--overwrite"])
    assert "computed" in r3.output


def test_score_too_small_calibration(tiny_dir, tmp_path):
    r = runner.invoke(app, ["score", "--model", str(tiny_dir), "--samples", "2", "--out", str(tmp_path / "s")])
    assert r.exit_code == 2 and "too small" in r.output


@pytest.mark.parametrize("method,pattern", [("cap", "unstructured"), ("wanda", "2:4")])
def test_prune_writes_loadable_dir(tiny_dir, tmp_path, method, pattern):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "p"
    r = runner.invoke(app, ["prune", "--model", str(tiny_dir), "--method", method, "--pattern", pattern,
                            "--sparsity", "0.5", "--samples", "6", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "sparsity.json").read_text())
    assert rep["method"] == method and abs(rep["achieved_sparsity"] - 0.5) < 0.01
    assert rep["calibration"]["hash"] and len(rep["layers"]) == 14
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    import safetensors.torch
    saved = safetensors.torch.load_file(out / "model.safetensors")
    for name, t in reloaded.state_dict().items():
        assert torch.equal(t, saved[name])  # identical weights after the round trip
    # refuses to overwrite
    r2 = runner.invoke(app, ["prune", "--model", str(tiny_dir), "--out", str(out), "--samples", "6"])
    assert r2.exit_code == 2 and "not empty" in r2.output


def test_prune_mixed_dense_and_2_4_from_the_command_line(tiny_dir, tmp_path):
    out = tmp_path / "mixed"
    r = runner.invoke(app, ["prune", "--model", str(tiny_dir), "--method", "sparsegpt", "--pattern", "2:4", "--nm-dense", "0.3",
                            "--nm-dense-by", "depth", "--samples", "6", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "sparsity.json").read_text())
    assert rep["dense_blocks"] == ["attn 0"] and "dense blocks: attn 0" in r.output
    assert rep["achieved_sparsity"] == pytest.approx(rep["effective_target"]) and rep["achieved_sparsity"] < 0.5
    r2 = runner.invoke(app, ["prune", "--model", str(tiny_dir), "--method", "sparsegpt", "--nm-dense", "0.3",
                             "--samples", "6", "--out", str(tmp_path / "bad")])
    assert r2.exit_code == 2 and "N:M pattern" in r2.output


@pytest.mark.parametrize("args,msg", [(["--sparsity", "1.0"], "[0, 1)"), (["--pattern", "5:4"], "0 < N < M"),
                                      (["--method", "random"], "expected one of"), (["--sparsity", "-0.2"], "[0, 1)")])
def test_prune_bad_input(tiny_dir, tmp_path, args, msg):
    r = runner.invoke(app, ["prune", "--model", str(tiny_dir), "--out", str(tmp_path / "x"), *args])
    assert r.exit_code == 2 and msg in r.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_eval_on_embedded_model_small_budget(tmp_path, monkeypatch):
    monkeypatch.delenv("CAP_EDGE_CACHE", raising=False)  # reuse the real converted-model cache
    out = tmp_path / "e.json"
    r = runner.invoke(app, ["eval", "--tasks", "embedded:geography,sequences", "--limit", "12", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["model"].startswith("embedded:") and d["overall"]["n"] == 24
    assert 0 <= d["overall"]["acc"] <= 1 and d["overall"]["answer_ce"] > 0
    # the real model, loaded and prompted correctly, knows capitals (0.90 at n=50): a broken
    # conversion, tokenizer or prompt format drops this to chance
    assert d["families"]["geography"]["above_chance"], d["families"]["geography"]


def test_prune_structured_cli_writes_reloadable_smaller_model(tiny_dir, tmp_path):
    from cap_edge.models import load_model

    out = tmp_path / "st"
    r = runner.invoke(app, ["prune", "--model", str(tiny_dir), "--method", "cap", "--pattern", "structured",
                            "--sparsity", "0.1", "--samples", "6", "--refit-problems", "20", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "heads per layer" in r.output
    rep = json.loads((out / "sparsity.json").read_text())
    assert rep["pattern"] == "structured" and rep["achieved_sparsity"] >= 0.1 and rep["channel_scores"]
    assert rep["refit"]["damp"] == 1.0 and rep["refit"]["tokens"] > 0  # refit on by default, on 20 problems
    assert rep["calibration"]["problems"] == 20
    lm = load_model(str(out), device="cpu")
    assert sum(p.numel() for p in lm.model.parameters()) == rep["params_after"]
    r = runner.invoke(app, ["prune", "--model", str(tiny_dir), "--method", "cap", "--pattern", "structured",
                            "--sparsity", "0.1", "--samples", "6", "--no-refit", "--out", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    plain = json.loads((tmp_path / "plain" / "sparsity.json").read_text())
    assert plain["refit"] is None and plain["kept"] == rep["kept"]  # same plan, weights not refitted
