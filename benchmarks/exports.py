"""Every export of the embedded model, dense and pruned, validated against PyTorch through its own
runtime: ONNX (optimum, ORT), GGUF (llama.cpp), onnxruntime-genai folders (the apps' runtime; its
token ids checked against the Hugging Face tokenizer's). Sizes raw / zipped, agreement figures.

    python benchmarks/exports.py [--out runs/exports]

Writes benchmarks/results/exports.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import table, write_result
from cap_edge.config import BudgetConfig, PruneConfig, ScoreConfig
from cap_edge.deploy.export import export_artifact
from cap_edge.errors import CapEdgeError, ValidationError
from cap_edge.models import load_model
from cap_edge.pruning.run import prune_stage

MODELS = {  # name -> prune config (None: dense)
    "dense": None,
    "cap-wanda 50%": PruneConfig(method="cap-wanda", sparsity=0.5),
    "cap-sparsegpt 2:4": PruneConfig(method="cap-sparsegpt", pattern="2:4"),
    "cap structured 20%": PruneConfig(method="cap", pattern="structured", sparsity=0.2, refit_problems=128),
}
OUTPUTS = [("onnx", "fp32"), ("onnx", "int8"), ("onnx", "int4"), ("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q4_0"),
           ("genai", "fp32"), ("genai", "int4")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/exports")
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    args = ap.parse_args()
    rows, results = [], []
    for name in args.models:
        lm = load_model(None, device="cpu")
        cfg = MODELS[name]
        if cfg is None:
            mdir, sparsity = lm.path, 0.0
        else:
            res = prune_stage(lm, cfg, budget=BudgetConfig(problems=32), score_cfg=ScoreConfig())
            mdir, sparsity = res.dir, res.report["achieved_sparsity"]
        out = Path(args.out) / name.replace(" ", "-").replace("%", "").replace(":", "of")
        for fmt, prec in OUTPUTS:
            t = time.perf_counter()
            try:
                a = export_artifact(mdir, fmt, prec, out, overwrite=True)
                entry = a.as_dict()
            except ValidationError as e:
                print(f"INVALID {name} {fmt}:{prec}: {e}")
                from exporters.bundle import resolve

                entries = json.loads((out / "manifest.json").read_text())["artifacts"]
                entry = next(resolve(x, out) for x in entries if x["format"] == fmt and x["precision"] == prec)
            except CapEdgeError as e:  # refused for this model (stated, never a wrong file)
                results.append({"model": name, "format": fmt, "precision": prec, "refused": str(e)})
                rows.append([name, f"{fmt}:{prec}", "-", "-", "-", f"refused: {str(e)[:60]}", "-", "-", "-", "-", "-"])
                continue
            v = entry["validation"]
            r = {"model": name, "format": fmt, "precision": prec, "valid": entry["valid"], "bytes": entry["bytes"],
                 "compressed_bytes": entry["compressed_bytes"], "sha256": entry["sha256"], "seconds": time.perf_counter() - t,
                 "achieved_sparsity": sparsity, "validation": v, "quantized_zeros": entry["metadata"].get("quantized_zeros"),
                 "bundle_files": None}
            results.append(r)
            rows.append([name, f"{fmt}:{prec}", f"{entry['bytes'] / 1e6:.1f}", f"{entry['compressed_bytes'] / 1e6:.1f}",
                         f"{v['metric']} {v[v['metric']]:.3g} ({v['tolerance']})", f"{v['mean_kl']:.4f}",
                         f"{v['top1_agreement_decisive']:.3f}", str(v.get("greedy_equal", "n/a")),
                         str(v.get("tokenizer_equal", "n/a")), str(entry["valid"]),
                         str((r["quantized_zeros"] or {}).get("ok", "n/a"))])
            print(rows[-1], flush=True)
    md = table(rows, ["model", "artifact", "raw MB", "zip MB", "checked metric (tol)", "mean KL", "top-1 (decisive)",
                      "greedy 32 = PyTorch", "genai ids = HF", "valid", "zeros kept"])
    print(md)
    write_result("exports", {"results": results, "table_md": md})


if __name__ == "__main__":
    main()
