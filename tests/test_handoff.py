"""The Jetson hand-off folder: every command names files that exist (relative to jetson/), and
the TensorRT shape profile matches the ONNX graph's inputs."""

import json
import re
import shlex

from cap_edge.deploy.export import export_artifact
from cap_edge.deploy.handoff import onnx_input_shapes, write_jetson_handoff


def _paths_in(script: str) -> list[str]:
    """Paths a script passes to --onnx=, -m, and the model dir named in comments (MODEL = ...)."""
    out = re.findall(r"--onnx=(\S+)", script) + re.findall(r"-m (\S+)", script) + re.findall(r"MODEL = (\S+)", script)
    return out


def test_jetson_handoff_names_existing_files_and_matching_shapes(tiny_dir, tmp_path):
    build = tmp_path / "build"
    onnx = export_artifact(tiny_dir, "onnx", "fp16", build / "artifacts")
    gguf = export_artifact(tiny_dir, "gguf", "q8_0", build / "artifacts")
    info = write_jetson_handoff(build, onnx.path, gguf.path, str(tiny_dir), prompt_tokens=64, context=512, structured=False)
    d = build / "jetson"
    assert {"README.md", "build_engine.sh", "edge_llm.sh", "llama_cpp.sh", "run_bench.sh", "shapes.json"} <= set(info["files"])
    for name in ("build_engine.sh", "edge_llm.sh", "llama_cpp.sh", "run_bench.sh"):
        text = (d / name).read_text()
        assert text.startswith("#!/usr/bin/env bash") and (d / name).stat().st_mode & 0o111
        for p in _paths_in(text):
            assert (d / p).exists(), f"{name} names {p}, which does not exist"
    engine = (d / "build_engine.sh").read_text()
    assert "--fp16" in engine and "--sparsity=enable" in engine
    graph = onnx_input_shapes(onnx.path)
    shapes = json.loads((d / "shapes.json").read_text())["profile"]
    assert set(shapes) == set(graph)  # every graph input has a profile, nothing else
    for name, dims in graph.items():
        for which in ("min", "opt", "max"):
            s = shapes[name][which]
            assert len(s) == len(dims)
            assert all(a == b for a, b in zip(s, dims) if isinstance(b, int) and b > 0)  # fixed dims kept
        assert all(lo <= o <= hi for lo, o, hi in zip(shapes[name]["min"], shapes[name]["opt"], shapes[name]["max"]))
    flags = {f.split("=", 1)[0]: f.split("=", 1)[1] for f in shlex.split(engine.replace("\\\n", " ")) if f.startswith("--") and "=" in f}
    for which in ("min", "opt", "max"):
        listed = dict(item.split(":", 1) for item in flags[f"--{which}Shapes"].split(","))
        assert listed == {n: "x".join(map(str, s[which])) for n, s in shapes.items()}
    assert shapes["past_key_values.0.key"]["max"] == [1, 2, 511, 16] and shapes["input_ids"]["max"] == [1, 64]


def test_structured_handoff_says_edge_llm_is_not_offered(tiny_dir, tmp_path):
    info = write_jetson_handoff(tmp_path, None, None, str(tiny_dir), 64, 512, structured=True)
    assert "edge_llm" not in info and "per-layer head counts" in (tmp_path / "jetson" / "README.md").read_text()


def test_handoff_says_why_trtexec_is_missing_when_the_search_shipped_int8_onnx(tiny_dir, tmp_path):
    info = write_jetson_handoff(tmp_path, None, None, str(tiny_dir), 64, 512, structured=False, onnx_shipped="onnx:int8")
    text = (tmp_path / "jetson" / "README.md").read_text()
    assert "trtexec" not in info and not (tmp_path / "jetson" / "build_engine.sh").exists()
    assert "`onnx:int8`" in text and "MatMulNBits" in text and "not offered" in text


def test_handoff_builds_the_engine_from_the_fp16_candidate_when_int8_onnx_shipped(tiny_dir, tmp_path):
    onnx = export_artifact(tiny_dir, "onnx", "fp16", tmp_path / "cand")
    info = write_jetson_handoff(tmp_path, onnx.path, None, str(tiny_dir), 64, 512, structured=False, onnx_shipped="onnx:int8")
    text = (tmp_path / "jetson" / "README.md").read_text()
    assert info["trtexec"] == "build_engine.sh" and "`onnx:int8`" in text and "fp16 candidate" in text
