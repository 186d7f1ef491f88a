"""Markdown report of a build manifest. Host-measured and estimated figures sit in separate
columns under their labels, never mixed."""

from __future__ import annotations


def _mb(b) -> str:
    return f"{b / 1e6:.1f}"


def build_report_md(m: dict) -> str:
    p = m["plan"]
    lines = [f"# cap-edge build: {m['device']}", "", p.get("description", ""), "",
             f"- model: `{m['inputs']['model']['source']}` (weights sha256 `{m['inputs']['model']['sha256_weights'][:16]}…`)",
             f"- calibration: {m['inputs']['calibration']['problems']} problems from `{m['inputs']['calibration']['spec']}`",
             f"- pruning: {m['pruned']['method']} {m['pruned']['pattern']}, achieved sparsity {m['pruned']['achieved_sparsity']:.4f}",
             f"- evaluation: {m['inputs']['evaluation']['problems']} held-out problems from `{m['inputs']['evaluation']['spec']}`",
             "", "## Artifacts (host-measured on this machine)", "",
             "| artifact | raw MB | zip MB | valid | max Δlogit (tol) | top-1 | accuracy [95% CI] (n, chance) | TTFT s | decode tok/s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for a in m["artifacts"]:
        v = a["validation"]
        acc = a.get("accuracy", {}).get("overall")
        lat = a.get("latency", {})
        acc_s = f"{acc['acc']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] (n={acc['n']}, {acc['chance']:.3f})" if acc else "-"
        lines.append(
            f"| {a['format']}:{a['precision']} | {_mb(a['bytes'])} | {_mb(a['compressed_bytes'])} | {a['valid']} | "
            f"{v['max_abs_logit_diff']:.3g} ({v['tolerance']}) | {v['top1_agreement']:.3f} | {acc_s} | "
            f"{lat.get('ttft_s', {}).get('median', float('nan')):.3f} | {lat.get('decode_tok_s', {}).get('median', float('nan')):.1f} | "
            f"{lat.get('peak_rss_mb', float('nan')):.0f} |")
    lines += ["", f"## {m['device']} target (estimated: roofline lower bounds from the profile's hardware figures)", "",
              "| artifact | decode tok/s ≤ | TTFT s ≥ | sparsity credited | TOPS used | GB/s |", "|---|---|---|---|---|---|"]
    for a in m["artifacts"]:
        e = a.get("estimated")
        if e:
            lines.append(f"| {a['format']}:{a['precision']} | {e['decode_tok_s_max']:.1f} | {e['ttft_s_min']:.4f} | "
                         f"{e['sparsity_credited']} | {e['tops_used']} | {e['bandwidth_gbs']} |")
    if m.get("invalid_artifacts"):
        lines += ["", "## Invalid artifacts (kept, marked invalid in manifest.json)", ""] + [f"- {s}" for s in m["invalid_artifacts"]]
    lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v['seconds']:.1f} |" for k, v in m["stages"].items()]
    return "\n".join(lines) + "\n"
