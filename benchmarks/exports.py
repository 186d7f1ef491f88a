"""The pruned embedded model (CAP, 50% unstructured and 2:4) exported to ONNX fp32 + int8 and GGUF
F16 + Q8_0 + Q4_0, each validated against PyTorch; sizes raw / zipped and agreement figures.

    python benchmarks/exports.py [--out runs/exports]

Writes benchmarks/results/exports.json.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from _common import table, write_result
from cap_edge.config import PruneConfig, ScoreConfig
from cap_edge.errors import ValidationError
from cap_edge.models import load_model
from cap_edge.deploy.export import export_artifact
from cap_edge.prune_io import save_pruned
from cap_edge.pruning import prune_model
from cap_edge.scoring import build_calib_batch, score_heads
from cap_edge.tasks import calibration_problems

OUTPUTS = [("onnx", "fp32"), ("onnx", "int8"), ("gguf", "f16"), ("gguf", "q8_0"), ("gguf", "q4_0")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/exports")
    args = ap.parse_args()
    root = Path(args.out)
    rows, results = [], []
    for pattern in ("unstructured", "2:4"):
        lm = load_model(None, dtype="fp32")
        calib = calibration_problems("embedded", 32)
        batch = build_calib_batch(lm.tokenizer, calib, 3, pad_id=lm.tokenizer.pad_token_id or 0)
        scores = score_heads(lm.model, lm.tokenizer, calib, ScoreConfig())
        rep = prune_model(lm.model, PruneConfig(method="cap", sparsity=0.5, pattern=pattern), batch, scores)
        mdir = root / pattern.replace(":", "of") / "model"
        if mdir.exists():
            shutil.rmtree(mdir)
        save_pruned(lm.model, lm.tokenizer, mdir, rep)
        ref = (lm.model.eval(), lm.tokenizer)
        for fmt, prec in OUTPUTS:
            t = time.perf_counter()
            try:
                a = export_artifact(mdir, fmt, prec, mdir.parent / "artifacts", reference=ref)
            except ValidationError as e:
                print(f"INVALID {pattern} {fmt}:{prec}: {e}")
                import json

                entry = [x for x in json.loads((mdir.parent / "artifacts" / "manifest.json").read_text())["artifacts"]
                         if x["path"].endswith(f"model.{prec}.{fmt}")][-1]
                from exporters.bundle import Artifact

                a = Artifact(**entry)
            v = a.validation
            r = {"pattern": pattern, "format": fmt, "precision": prec, "valid": a.valid, "bytes": a.bytes,
                 "compressed_bytes": a.compressed_bytes, "sha256": a.sha256, "seconds": time.perf_counter() - t,
                 "achieved_sparsity": rep["achieved_sparsity"], "validation": v,
                 "quantized_zeros": a.metadata.get("quantized_zeros")}
            results.append(r)
            rows.append([f"CAP 50% {pattern}", f"{fmt}:{prec}", f"{a.bytes / 1e6:.1f}", f"{a.compressed_bytes / 1e6:.1f}",
                         f"{a.bytes / a.compressed_bytes:.2f}", f"{v['metric']} {v[v['metric']]:.3g} ({v['tolerance']})", f"{v['mean_kl']:.4f}",
                         f"{v['top1_agreement']:.3f}", str(v.get("greedy_equal", "n/a")), str(a.valid),
                         str((r["quantized_zeros"] or {}).get("ok", "n/a"))])
            print(rows[-1], flush=True)
    md = table(rows, ["model", "artifact", "raw MB", "zip MB", "ratio", "checked metric (tol)", "mean KL", "top-1 agree",
                      "greedy 32 = PyTorch", "valid", "zeros kept"])
    print(md)
    write_result("exports", {"results": results, "table_md": md})


if __name__ == "__main__":
    main()
