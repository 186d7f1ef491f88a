"""The Jetson hand-off: a folder in the build with everything needed on the device.

Jetson users build the TensorRT engine on the device (engines are specific to the GPU and the
TensorRT version), from the fp16 ONNX with ``trtexec`` (2:4 sparse tactics enabled), or from the
pruned Hugging Face checkpoint with TensorRT Edge-LLM (exported on an x86 host, built on the
device), or they run the GGUF with llama.cpp's CUDA build. ``write_jetson_handoff`` writes the
commands with this build's file names and the graph's own input shapes (read from the ONNX file),
and ``shapes.json`` beside them so the shapes can be checked.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path


def onnx_input_shapes(path: str | Path) -> dict[str, list]:
    """Input name -> dims (int, or the dim's symbolic name) of an ONNX graph."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in i.type.tensor_type.shape.dim]
            for i in m.graph.input}


def trt_profile(inputs: dict[str, list], prompt: int, context: int) -> dict[str, dict[str, list[int]]]:
    """min / opt / max shapes for one TensorRT optimization profile covering prefill (up to
    ``prompt`` new tokens on an empty cache) and decode (1 token over up to ``context`` - 1 cached),
    tuned at decode (the phase that runs once per generated token)."""
    out = {}
    for name, dims in inputs.items():
        if name == "input_ids" or name == "position_ids":
            mn, opt, mx = [1, 1], [1, 1], [1, prompt]
        elif name == "attention_mask":
            mn, opt, mx = [1, 1], [1, context // 2], [1, context]
        elif name.startswith("past_key_values."):
            kv, hd = int(dims[1]), int(dims[3])
            mn, opt, mx = [1, kv, 0, hd], [1, kv, context // 2 - 1, hd], [1, kv, context - 1, hd]
        else:
            raise ValueError(f"unexpected graph input {name!r} {dims}")
        out[name] = {"min": mn, "opt": opt, "max": mx}
    return out


def _shape_flag(profile: dict, which: str) -> str:
    return ",".join(f"{n}:{'x'.join(str(d) for d in s[which])}" for n, s in profile.items())


def _script(path: Path, lines: list[str]) -> None:
    path.write_text("#!/usr/bin/env bash\n# Written by cap-edge build; run on the Jetson from this folder.\nset -euo pipefail\n"
                    + "\n".join(lines) + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# why a weight-only quantized ONNX (onnx:int8 / int4) cannot be handed to trtexec
NOT_FOR_TENSORRT = "Its weight-only quantized MatMulNBits nodes are an ONNX Runtime contrib op that TensorRT cannot parse:"


def write_jetson_handoff(build_dir: Path, onnx_fp16: str | None, gguf: str | None, model_dir: str, prompt_tokens: int,
                         context: int, structured: bool, onnx_shipped: str | None = None) -> dict:
    """Write BUILD/jetson/ (README.md, build_engine.sh, edge_llm.sh, llama_cpp.sh, run_bench.sh,
    shapes.json). Paths in the scripts are relative to that folder. Returns what was written.
    ``onnx_shipped``: the ONNX output the search shipped when it is not fp16 (e.g. "onnx:int8", a
    dense lower-precision baseline that won); ``onnx_fp16`` is then the same model's fp16 candidate
    (or None: trtexec not offered), and the README says which is which."""
    d = build_dir / "jetson"
    d.mkdir(exist_ok=True)
    rel = lambda p: os.path.relpath(p, d)  # noqa: E731
    written = {}
    readme = ["# Jetson hand-off (cap-edge)", "",
              "Copy the whole build folder to the Jetson, then run these from `jetson/`. TensorRT engines are",
              "specific to the GPU and the TensorRT version: build them on the device.", ""]
    if onnx_fp16:
        shapes = trt_profile(onnx_input_shapes(onnx_fp16), prompt_tokens, context)
        (d / "shapes.json").write_text(json.dumps({"onnx": rel(onnx_fp16), "profile": shapes}, indent=1))
        _script(d / "build_engine.sh", [
            "# fp16 engine with 2:4 sparse tactics where the weights are 2:4 (the Ampere tensor cores skip the zeros);",
            "# one optimization profile: prefill up to the prompt length, decode up to the context, tuned for decode.",
            f"trtexec --onnx={rel(onnx_fp16)} --fp16 --sparsity=enable --saveEngine=model.fp16.plan \\",
            f"  --minShapes={_shape_flag(shapes, 'min')} \\",
            f"  --optShapes={_shape_flag(shapes, 'opt')} \\",
            f"  --maxShapes={_shape_flag(shapes, 'max')}",
            "# check the sparse tactics were used: look for 'Layers eligible for sparse math' in the log"])
        written["trtexec"] = "build_engine.sh"
        readme += ["## TensorRT (trtexec)", "", "`./build_engine.sh` builds `model.fp16.plan` from the validated fp16 ONNX "
                   f"(`{rel(onnx_fp16)}`); shapes: `shapes.json`.", ""]
        if onnx_shipped:
            readme += [f"The search shipped `{onnx_shipped}` for ONNX Runtime (more accurate or faster than the fp16 "
                       f"candidates on the host). {NOT_FOR_TENSORRT} so the engine is built from the same model's fp16 "
                       "candidate above.", ""]
    elif onnx_shipped:
        readme += ["## TensorRT (trtexec): not offered", "",
                   f"The search shipped `{onnx_shipped}` and no validated fp16 ONNX of the same model is in this build. "
                   f"{NOT_FOR_TENSORRT} ONNX Runtime's CUDA EP runs it (`run_bench.sh`).", ""]
    if structured:
        readme += ["## TensorRT Edge-LLM", "", "Not offered: Edge-LLM's exporter builds stock architectures, and this model "
                   "has per-layer head counts (structured pruning). Use `build_engine.sh` or llama.cpp.", ""]
    else:
        _script(d / "edge_llm.sh", [
            "# 1) on an x86 host with the TensorRT Edge-LLM Python package (github.com/NVIDIA/TensorRT-Edge-LLM):",
            "#      releases up to 0.7: tensorrt-edgellm-export-llm --model_dir MODEL --output_dir onnx-edgellm",
            "#      releases from 0.8:  tensorrt-edgellm-export MODEL onnx-edgellm",
            f"#    with MODEL = {rel(model_dir)} (the pruned Hugging Face checkpoint of this build), then copy",
            "#    onnx-edgellm/ here.",
            "# 2) on the Jetson, from a TensorRT-Edge-LLM build (EMBEDDED_TARGET=jetson-orin):",
            'EDGELLM=${EDGELLM:-$HOME/TensorRT-Edge-LLM/build/examples/llm}',
            'ONNX=onnx-edgellm; [ -d onnx-edgellm/llm ] && ONNX=onnx-edgellm/llm',
            f'"$EDGELLM/llm_build" --onnxDir "$ONNX" --engineDir engine-edgellm --maxBatchSize 1 --maxInputLen {prompt_tokens} '
            f"--maxKVCacheCapacity {context}",
            'echo \'{"requests": [{"messages": [{"role": "user", "content": "What is the capital of France?"}]}]}\' > input.json',
            '"$EDGELLM/llm_inference" --engineDir engine-edgellm --inputFile input.json --outputFile output.json'])
        written["edge_llm"] = "edge_llm.sh"
        readme += ["## TensorRT Edge-LLM", "", "`edge_llm.sh`: export the pruned checkpoint "
                   f"(`{rel(model_dir)}`) on an x86 host, build and run the engine on the Jetson.", ""]
    if gguf:
        _script(d / "llama_cpp.sh", [
            "# llama.cpp built with -DGGML_CUDA=ON; all layers on the GPU",
            f"llama-cli -m {rel(gguf)} -ngl 99 -cnv",
            f"llama-bench -m {rel(gguf)} -ngl 99 -p {prompt_tokens} -n 32"])
        written["llama_cpp"] = "llama_cpp.sh"
        readme += ["## llama.cpp (CUDA)", "", f"`llama_cpp.sh` chats with and benchmarks `{rel(gguf)}`.", ""]
    _script(d / "run_bench.sh", [
        "# cap-edge on the Jetson (pip install cap-edge[...] with onnxruntime-gpu / TensorRT EP): the same interleaved",
        "# dense-vs-pruned bench as on the host, gated against a stored baseline",
        "cap-edge bench .. --runs 5 --json bench-jetson.json \"$@\"",
        "# then: cap-edge gate bench-jetson.json --baseline BASELINE.json   (exit 1 on a regression, 4 if not comparable)"])
    written["bench"] = "run_bench.sh"
    readme += ["## Regression bench", "", "`./run_bench.sh [--baseline FILE]` runs `cap-edge bench` on the device "
               "(the profile's TensorRT/CUDA providers are used where present) and writes `bench-jetson.json`; "
               "in pytest, mark hardware tests `@pytest.mark.device(\"jetson-orin\")`.", ""]
    (d / "README.md").write_text("\n".join(readme))
    return {"dir": "jetson", "files": sorted(p.name for p in d.iterdir()), **written}
