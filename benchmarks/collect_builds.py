"""Summarise `cap-edge build` manifests (runs/build-*/manifest.json) into benchmarks/results/builds.json.

    cap-edge build --device cpu --out runs/build-cpu   # likewise jetson-orin, mobile-npu
    python benchmarks/collect_builds.py
"""

from __future__ import annotations

import json
from pathlib import Path

from _common import table, write_result

ROOT = Path(__file__).resolve().parent.parent


def main():
    builds, rows = {}, []
    for mf in sorted((ROOT / "runs").glob("build-*/manifest.json")):
        m = json.loads(mf.read_text())
        arts = []
        for a in m["artifacts"]:
            v, acc, lat, est = a["validation"], a["accuracy"]["overall"], a["latency"], a["estimated"]
            arts.append({"artifact": f"{a['format']}:{a['precision']}", "bytes": a["bytes"], "compressed_bytes": a["compressed_bytes"],
                         "valid": a["valid"], "validation": v, "accuracy": acc, "accuracy_label": a["accuracy"]["label"],
                         "providers": a["accuracy"].get("providers"), "host_measured": lat, "estimated": est})
            rows.append([m["device"], f"{a['format']}:{a['precision']}", f"{a['bytes'] / 1e6:.1f} / {a['compressed_bytes'] / 1e6:.1f}",
                         f"{v['metric']}={v[v['metric']]:.3g}", f"{acc['acc']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]",
                         f"{lat['ttft_s']['median']:.3f}", f"{lat['decode_tok_s']['median']:.1f}", f"{lat['peak_rss_mb']:.0f}",
                         f"{est['decode_tok_s_max']:.0f}", f"{est['ttft_s_min']:.4f}", str(est["sparsity_credited"])])
        builds[m["device"]] = {"status": m["status"], "pruned": m["pruned"], "inputs": m["inputs"],
                               "stages": m["stages"], "scores": m.get("scores"), "artifacts": arts}
    md = table(rows, ["device", "artifact", "MB raw / zip", "validation", "accuracy (host-measured, n=100)",
                      "TTFT s (host)", "decode tok/s (host)", "peak RSS MB (host)", "decode tok/s ≤ (estimated)",
                      "TTFT s ≥ (estimated)", "2:4 credited"])
    print(md)
    write_result("builds", {"builds": builds, "table_md": md})


if __name__ == "__main__":
    main()
