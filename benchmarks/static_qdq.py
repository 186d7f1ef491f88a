"""Static QDQ quantization of the fixed-shape graphs: which nodes must stay in float.

Exports the CAP 50%-pruned embedded model (the mobile-npu build's pruned model, from the cache)
as fixed-shape prefill/decode graphs with uint16 or uint8 activations and several mixed-precision
lists, validating each against PyTorch (mean KL, top-1 on decisive positions, pruned zeros).

    python benchmarks/static_qdq.py --pruned DIR

Writes benchmarks/results/static_qdq.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from _common import table, write_result
from cap_edge.errors import ValidationError
from cap_edge.deploy.export import export_artifact

CONFIGS = [("qdq16", ()), ("qdq16", ("norm",)), ("qdq16", ("norm", "/Add")), ("qdq16", ("norm", "/Add", "down_proj")),
           ("qdq8", ("norm", "/Add")), ("qdq8", ("norm", "/Add", "down_proj"))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pruned", required=True, help="a pruned model directory (e.g. the mobile-npu build's)")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--context", type=int, default=1024)
    args = ap.parse_args()
    work = Path("runs/static-qdq-bench")
    rows = []
    for prec, keep in CONFIGS:
        out = work / f"{prec}-{'-'.join(k.strip('/') for k in keep) or 'none'}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        try:
            export_artifact(args.pruned, "onnx-static", prec, out,
                            export_options={"chunk": args.chunk, "context": args.context, "keep_float": keep,
                                            "op_table": "qnn-htp"})
        except ValidationError as e:
            print(f"{prec} {keep}: invalid: {e}", flush=True)
        a = json.loads((out / "manifest.json").read_text())["artifacts"][0]
        v = a["validation"]
        row = {"precision": prec, "keep_float": list(keep), "valid": a["valid"], "mean_kl": v["mean_kl"],
               "top1_agreement": v["top1_agreement"], "top1_decisive": v["top1_agreement_decisive"],
               "bytes": a["bytes"], "compressed_bytes": a["compressed_bytes"], "seconds": time.perf_counter() - t,
               "quantized_zeros": a["metadata"]["quantized_zeros"],
               "unsupported_ops": {g: c["unsupported"] for g, c in a["metadata"]["op_coverage"].items()}}
        rows.append(row)
        print(prec, keep, f"KL {row['mean_kl']:.3f}, top-1 decisive {row['top1_decisive']:.3f}, valid {row['valid']}", flush=True)
        shutil.rmtree(out, ignore_errors=True)  # 0.3-0.4 GB each
    md = table([[r["precision"], ", ".join(r["keep_float"]) or "nothing", f"{r['mean_kl']:.3f}", f"{r['top1_decisive']:.3f}",
                 str(r["valid"]), str(r["quantized_zeros"]["ok"]), f"{r['bytes'] / 1e6:.0f}"] for r in rows],
               ["activations", "kept in float", "mean KL", "top-1 (decisive)", "valid", "zeros kept", "MB (2 graphs)"])
    print(md)
    write_result("static_qdq", {"command": f"python benchmarks/static_qdq.py --pruned {args.pruned}", "pruned": args.pruned,
                                "chunk": args.chunk, "context": args.context, "rows": rows, "table_md": md})


if __name__ == "__main__":
    main()
