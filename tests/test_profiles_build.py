import dataclasses
import json
import re

import pytest
from typer.testing import CliRunner

from cap_edge.cli import app
from cap_edge import guidance
from cap_edge.config import BudgetConfig, PruneConfig
from cap_edge.errors import MemoryBudgetError
from cap_edge.config import BuildConfig
from cap_edge.deploy.build import build, output_specs
from cap_edge.deploy.estimate import check_memory, memory_estimates, roofline
from device_profiles import ProfileError, detect, list_profiles, load_profile

runner = CliRunner()


def test_builtin_profiles_load_and_have_required_devices():
    names = list_profiles()
    for required in ("cpu", "jetson-orin", "mobile-npu", "raspberry-pi-5"):
        assert required in names
        p = load_profile(required)
        assert p.hardware.memory_bandwidth_gbs > 0 and p.budget.problems > 0 and p.export.outputs
    assert load_profile("jetson-orin").prune.pattern == "2:4"
    assert load_profile("jetson-orin").runtime.provider_options["TensorrtExecutionProvider"]["trt_sparsity_enable"] == "True"


def _write(tmp_path, text, name="board.toml"):
    f = tmp_path / name
    f.write_text(text)
    return f


BASE = (open(load_profile("cpu").path).read())


def test_user_profile_by_path(tmp_path):
    f = _write(tmp_path, BASE.replace('name = "cpu"', 'name = "my-board"'))
    p = load_profile(str(f))
    assert p.name == "my-board" and p.path == str(f)


@pytest.mark.parametrize("edit,msg", [
    (("[hardware]", "[hardware]\nturbo = true"), "unknown key 'turbo'"),
    (("problems = 32", 'problems = "many"'), "key 'problems': expected int, got str"),
    (("memory_bandwidth_gbs = 51.2", 'memory_bandwidth_gbs = "fast"'), "key 'memory_bandwidth_gbs': expected float"),
    (("sparsity = 0.5", "sparsity = 1.5"), "[0, 1)"),
    (('outputs = ["gguf:q8_0"]', 'outputs = ["gguf:q2_k"]'), "gguf precision: expected one of f32, f16, q8_0, q4_0, got 'q2_k'"),
    (('name = "cpu"', 'name = "cpu"\ncolour = "red"'), "unknown key 'colour'"),
])
def test_profile_validation_errors_name_file_key_and_type(tmp_path, edit, msg):
    f = _write(tmp_path, BASE.replace(*edit))
    with pytest.raises(ProfileError) as e:
        load_profile(str(f))
    assert msg in str(e.value) and str(f) in str(e.value)


def test_unknown_device_and_bad_toml(tmp_path):
    with pytest.raises(ProfileError, match="unknown device 'nope'; known: cpu"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(str(_write(tmp_path, "name = ")))


def test_detectors_read_the_device_files(tmp_path, monkeypatch):
    import device_profiles

    assert detect(load_profile("cpu"))[0]
    monkeypatch.setattr(device_profiles, "JETSON_RELEASE", tmp_path / "nv_tegra_release")
    present, why = detect(load_profile("jetson-orin"))
    assert not present and "nv_tegra_release: not a Jetson" in why
    (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 3.0\n")
    assert detect(load_profile("jetson-orin")) == (True, f"found {tmp_path / 'nv_tegra_release'}")
    model = tmp_path / "model"
    monkeypatch.setattr(device_profiles, "DEVICE_TREE_MODEL", model)
    model.write_text("Raspberry Pi 5 Model B Rev 1.0\x00")
    assert detect(load_profile("raspberry-pi-5"))[0]
    model.write_text("NVIDIA Jetson Orin Nano\x00")
    assert not detect(load_profile("raspberry-pi-5"))[0]


def test_devices_lists_every_output_of_each_profile():
    r = runner.invoke(app, ["devices"])
    assert r.exit_code == 0, r.output
    line = next(l for l in r.output.splitlines() if l.startswith("mobile-npu"))
    assert "onnx-static:qdq16" in line and "onnx:fp32" in line


def test_memory_budget_refusal_gives_both_numbers(tiny_model, tmp_path):
    prof = load_profile("cpu")
    import dataclasses

    tiny_budget = dataclasses.replace(prof, hardware=dataclasses.replace(prof.hardware, memory_budget_mb=0.01))
    cfg = BuildConfig(profile=tiny_budget, out=str(tmp_path))
    with pytest.raises(MemoryBudgetError) as e:
        check_memory(memory_estimates(tiny_model.config, output_specs(cfg), 2048), 0.01, "cpu")
    assert "MB at" in str(e.value) and "memory budget of 0 MB" in str(e.value)


def test_roofline_credits_sparsity_only_where_exploited():
    jet, npu = load_profile("jetson-orin").hardware, load_profile("mobile-npu").hardware
    a = roofline(jet, 10**8, 10**8, 64, "2:4")
    b = roofline(jet, 10**8, 10**8, 64, "unstructured")
    assert a["sparsity_credited"] and not b["sparsity_credited"] and a["ttft_s_min"] == pytest.approx(b["ttft_s_min"] / 2)
    assert not roofline(npu, 10**8, 10**8, 64, "2:4")["sparsity_credited"]
    assert a["decode_tok_s_max"] == pytest.approx(68e9 / 1e8) and a["label"] == "estimated"


def test_dry_run_prints_plan_and_writes_nothing(tiny_dir, tmp_path):
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", "--device", "jetson-orin", "--model", str(tiny_dir), "--out", str(out), "--dry-run"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    patterns = {c["prune"]["pattern"] for c in plan["candidates"] if c["prune"]}
    assert "2:4" in patterns and "onnx:fp16" in plan["outputs"] and plan["memory_estimate"]
    assert any(c["baseline"] for c in plan["candidates"]) and plan["estimated_seconds"] > 0
    assert plan["scoring"]["read_by"]  # the search's CAP candidates at 10-20% read CAP scores
    assert not out.exists()


def test_onnx_fallback_warning_when_provider_missing(tiny_dir, tmp_path):
    from cap_edge.deploy.export import export_artifact
    from runtimes.onnxruntime import OnnxCausalLM

    art = export_artifact(tiny_dir, "onnx", "fp32", tmp_path / "o")
    with pytest.warns(RuntimeWarning, match="TensorrtExecutionProvider is not available.*falling back to CPUExecutionProvider"):
        rt = OnnxCausalLM(art.path, providers=("TensorrtExecutionProvider", "CPUExecutionProvider"))
    assert rt.providers == ["CPUExecutionProvider"]


def _tiny_build(tiny_dir, out, profile="cpu", **kw):
    prof = load_profile(profile) if isinstance(profile, str) else profile
    return BuildConfig(profile=prof, out=str(out), model=str(tiny_dir), eval_per_family=1,
                       budget=BudgetConfig(problems=6, tokens_per_problem=64), prompt_tokens=8, gen_tokens=4, runs=1, **kw)


def test_build_search_on_tiny_model_ships_the_best_candidate_beside_dense_baselines(tiny_dir, tmp_path):
    cfg = _tiny_build(tiny_dir, tmp_path / "build")
    m = build(cfg, progress=False)
    assert m["status"] == "complete"
    rows = {(r["name"], r["output"]): r for r in m["candidates"]}
    # every model of the grid at the profile's output, and dense at the next lower precision as a baseline
    assert set(rows) == {("dense", "gguf:q8_0"), ("cap-s10", "gguf:q8_0"), ("cap-s20", "gguf:q8_0"), ("dense", "gguf:q4_0")}
    assert rows[("dense", "gguf:q4_0")]["baseline"] and not rows[("dense", "gguf:q8_0")]["baseline"]
    for r in m["candidates"]:
        assert r["valid"] and 0 <= r["acc"] <= 1 and r["kl"] >= 0 and r["decode_tok_s"] > 0 and r["speed_label"] == "host-measured"
        assert set(r["samples"]) and r["n"] == 3  # the three knowledge families, one problem each
    assert rows[("cap-s20", "gguf:q8_0")]["params"] < rows[("cap-s10", "gguf:q8_0")]["params"] < rows[("dense", "gguf:q8_0")]["params"]
    sel = m["selection"]["gguf:q8_0"]
    (shipped,) = m["artifacts"]
    assert sel["shipped"] == f"{shipped['candidate']} {shipped['format']}:{shipped['precision']}" and sel["message"]
    assert (tmp_path / "build" / shipped["path"]).is_file() and not shipped["path"].startswith("/")  # relative to the build
    assert (tmp_path / "build" / "model" / "config.json").is_file()  # the shipped model's HF directory is in the build
    report = (tmp_path / "build" / "report.md").read_text()
    assert "What was shipped, and why" in report and "dense (baseline)" in report and "Sample outputs" in report
    assert (tmp_path / "build" / "candidates.png").read_bytes()[:4] == b"\x89PNG"
    import stat

    assert stat.S_IMODE((tmp_path / "build" / shipped["path"]).stat().st_mode) == 0o644
    import zipfile

    names = zipfile.ZipFile(tmp_path / "build" / shipped["bundle"]).namelist()
    # the shipped output's file (dense Q4_0 ships when it wins on the clock, which varies on a tiny model)
    assert {f"model.{shipped['precision']}.gguf", "manifest-entry.json", "LICENSE-NOTICE.txt"} <= set(names)
    # a second build reuses the cached scores and pruned models
    m2 = build(BuildConfig(**{**cfg.__dict__, "overwrite": True}), progress=False)
    assert all(v["cache_hit"] for k, v in m2["pruned"].items() if k != "shipped")


def test_fixed_build_ships_the_configured_model_and_compares_it(tiny_dir, tmp_path):
    cfg = _tiny_build(tiny_dir, tmp_path / "b", search=False, prune=PruneConfig(method="magnitude", sparsity=0.3))
    m = build(cfg, progress=False)
    names = {(r["name"], r["output"]) for r in m["candidates"]}
    assert names == {("dense", "gguf:q8_0"), ("configured", "gguf:q8_0"), ("dense", "gguf:q4_0")}
    assert m["artifacts"][0]["candidate"] == "configured" and "fixed configuration" in m["selection"]["gguf:q8_0"]["message"]


def _npu_profile(tmp_path, table="qnn-htp", on_unsupported="fail"):
    import dataclasses

    p = load_profile("mobile-npu")
    export = dataclasses.replace(p.export, outputs=("onnx-static:qdq16",), static_chunk=8,
                                 op_table=table, unsupported_ops=on_unsupported)
    runtime = dataclasses.replace(p.runtime, context_length=512, onnx_providers=("CPUExecutionProvider",))
    return dataclasses.replace(p, export=export, runtime=runtime)


def test_static_build_on_tiny_model_reports_op_coverage_and_accuracy(tiny_dir, tmp_path):
    cfg = _tiny_build(tiny_dir, tmp_path / "b", _npu_profile(tmp_path), search=False,
                      prune=PruneConfig(method="magnitude", sparsity=0.3))
    m = build(cfg, progress=False)
    assert m["status"] == "complete"
    (a,) = m["artifacts"]
    assert a["format"] == "onnx-static" and a["precision"] == "qdq16" and a["valid"]
    assert a["accuracy"]["overall"]["n"] == 3 and a["metadata"]["op_coverage"]["decode"]["ok"] and len(a["files"]) == 2
    assert {r["output"] for r in m["candidates"]} == {"onnx-static:qdq16", "onnx-static:qdq8"}  # qdq8: the lower baseline


def test_static_build_fails_on_an_op_missing_from_the_table(tiny_dir, tmp_path):
    from cap_edge.errors import CapEdgeError

    table = tmp_path / "npu-ops.toml"
    from exporters.op_coverage import OPS_DIR

    src = (OPS_DIR / "qnn-htp.toml").read_text()
    table.write_text(src.replace('"ai.onnx:Softmax" = ""\n', "").replace('"ai.onnx:Sigmoid" = ""\n', ""))
    cfg = _tiny_build(tiny_dir, tmp_path / "b", _npu_profile(tmp_path, str(table)), search=False,
                      prune=PruneConfig(method="magnitude", sparsity=0.3))
    with pytest.raises(CapEdgeError, match="ai.onnx:Sigmoid x2"):
        build(cfg, progress=False)


def test_structured_build_on_tiny_model(tiny_dir, tmp_path):
    cfg = _tiny_build(tiny_dir, tmp_path / "s", search=False,
                      prune=PruneConfig(method="cap", pattern="structured", sparsity=0.1, channel_refine=0.5, refit_problems=12))
    m = build(cfg, progress=False)
    assert m["status"] == "complete" and m["pruned"]["configured"]["pattern"] == "structured"
    assert m["pruned"]["configured"]["achieved_sparsity"] >= 0.1
    rep = json.loads((tmp_path / "s" / "model" / "sparsity.json").read_text())
    assert rep["calibration"]["problems"] == 12  # the refit saw its own, larger batch
    gg = m["artifacts"][0]
    assert gg["metadata"]["gguf_arch"] == "deci"
    assert json.loads((tmp_path / "s" / "model" / "config.json").read_text())["model_type"] == "cap_edge_structured"


def test_op_coverage_is_checked_on_the_invalid_artifact_path_too(tmp_path):
    """_finish (valid and invalid artifacts alike) refuses a graph with ops the target EP lacks,
    before it spends time measuring it."""
    import types

    from cap_edge.deploy.candidates import _finish
    from cap_edge.errors import CapEdgeError

    export = _npu_profile(tmp_path).export
    entry = {"path": str(tmp_path / "model.onnx"), "bytes": 1, "compressed_bytes": 1, "validation": {"passed": False},
             "metadata": {"op_coverage": {"decode": {"ok": False, "unsupported": {"com.microsoft:Foo": {"count": 3}}}}}}
    ctx = types.SimpleNamespace(profile=types.SimpleNamespace(export=export))  # nothing else may be touched
    with pytest.raises(CapEdgeError, match="com.microsoft:Foo x3"):
        _finish({"name": "c", "output": "onnx-static:qdq16", "valid": False}, entry, ctx, lambda s: None, None, 1)


def test_jetson_build_hands_trtexec_an_fp16_onnx_whichever_precision_ships(tiny_dir, tmp_path):
    """The search may ship dense onnx:int8 (the lower-precision baseline) for the fp16 output; TensorRT
    cannot parse its MatMulNBits nodes, so build_engine.sh must still point at a validated fp16 ONNX."""
    import dataclasses

    from cap_edge.config import replace

    p = load_profile("jetson-orin")
    p = dataclasses.replace(p, export=dataclasses.replace(p.export, outputs=("onnx:fp16",)),
                            runtime=dataclasses.replace(p.runtime, onnx_providers=("CPUExecutionProvider",), provider_options={}),
                            search=replace(p.search, levels=(), nm_methods=()))
    m = build(_tiny_build(tiny_dir, tmp_path / "j", p), progress=False)
    assert {(r["name"], r["output"]) for r in m["candidates"]} == {("dense", "onnx:fp16"), ("dense", "onnx:int8")}
    script = (tmp_path / "j" / "jetson" / "build_engine.sh").read_text()
    onnx = re.search(r"--onnx=(\S+)", script).group(1)
    assert onnx.endswith("model.fp16.onnx") and (tmp_path / "j" / "jetson" / onnx).is_file()
    readme = (tmp_path / "j" / "jetson" / "README.md").read_text()
    if m["artifacts"][0]["precision"] == "int8":
        assert "`onnx:int8`" in readme and "fp16 candidate" in readme


def test_calibration_draw_reaches_the_plan_and_the_pruned_model(tiny_dir, tmp_path):
    from cap_edge.errors import ConfigError
    from cap_edge.models import load_model
    from cap_edge.pruning.run import prune_stage

    with pytest.raises(ConfigError, match="--calib-draw: expected an integer >= 0, got -1"):
        _tiny_build(tiny_dir, tmp_path / "x", calib_draw=-1)
    r = runner.invoke(app, ["build", "--device", "cpu", "--model", str(tiny_dir), "--out", str(tmp_path / "b"),
                            "--calib-draw", "2", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["calibration"]["draw"] == 2
    hashes = []
    for d in (0, 1):
        res = prune_stage(load_model(str(tiny_dir)), PruneConfig(method="wanda", sparsity=0.5), budget=BudgetConfig(problems=4,
                          tokens_per_problem=64), draw=d, progress=False)
        hashes.append((res.calibration["draw"], res.calibration["hash"], str(res.dir)))
    assert [h[0] for h in hashes] == [0, 1] and hashes[0][1] != hashes[1][1] and hashes[0][2] != hashes[1][2]


def test_raspberry_pi_fixed_build_prunes_with_the_fisher_allocation(tiny_dir, tmp_path, monkeypatch):
    """raspberry-pi-5's --no-search method is pruning.json's winner at 30% (cap-wanda), whose default guidance
    there is the answer loss's saliency allocation at the squared ramp: a build runs it end to end and records it,
    with the CAP scores its unit factors read."""
    prof = load_profile("raspberry-pi-5")
    assert (prof.prune.method, prof.prune.allocation_signal) == ("cap-wanda", "fisher")
    m = build(_tiny_build(tiny_dir, tmp_path / "b", profile=prof, search=False), progress=False)
    g = m["pruned"]["configured"]["guidance"]
    assert m["status"] == "complete" and m["artifacts"][0]["candidate"] == "configured"
    assert g["alloc_signal"] == "fisher" and g["alloc_bound"] == pytest.approx(0.075 * 0.36)  # half the bound, (0.3 / 0.5) ** 2
    assert g["unit_strength"] == pytest.approx(0.5 * 0.36) and g["token_beta"] == pytest.approx(0.5 * 0.36)
    assert m["plan"]["candidates"][1]["prune"]["guidance"] == g  # the resolved plan (--dry-run) shows what the prune used
    assert m["plan"]["scoring"]["read_by"] == ["configured"] and m["scores"]["cache_key"]
    assert (tmp_path / "b" / "head_scores.json").exists()
    assert abs(m["pruned"]["configured"]["achieved_sparsity"] - 0.3) < 0.01
    # a changed default is part of the pruned-model cache key: the same config then prunes again, not from the cache
    bands = [(lo, hi, dataclasses.replace(row, alloc_bound=0.05) if row.alloc_signal == "fisher" else row)
             for lo, hi, row in guidance.CAP_WANDA_BANDS]
    monkeypatch.setattr(guidance, "CAP_WANDA_BANDS", tuple(bands))
    again = build(_tiny_build(tiny_dir, tmp_path / "c", profile=prof, search=False), progress=False)["pruned"]["configured"]
    assert not again["cache_hit"] and again["guidance"]["alloc_bound"] == pytest.approx(0.05 * 0.36)
