"""report.md of a build: what was shipped and why, every candidate beside the dense model at the
same and at the next lower precision, the Pareto front, sample outputs, and how to run each file.
Host-measured and estimated figures are labelled, never mixed."""

from __future__ import annotations

from pathlib import Path


def _f(v, fmt=".3f"):
    return "-" if v is None or v != v else format(v, fmt)


def candidates_plot(rows: list[dict], path: Path, label: str) -> None:
    """Accuracy vs decode tokens/s, marker size = file MB, Pareto front ringed, one colour per output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    rows = [r for r in rows if r.get("exportable", True)]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    outputs = sorted({r["output"] for r in rows})
    colours = {o: f"C{i}" for i, o in enumerate(outputs)}
    for r in rows:
        front = any((r.get("pareto") or {}).values())
        ax.scatter(r["decode_tok_s"], r["acc"], s=max(20, r["mb"] / 2), c=colours[r["output"]], alpha=0.7,
                   edgecolors="k" if front else "none", linewidths=1.5, marker="s" if r["dense"] else "o")
        ax.annotate(f"{r['name']} {r['output'].split(':')[1]}", (r["decode_tok_s"], r["acc"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(f"decode tokens/s ({label})")
    ax.set_ylabel("accuracy, knowledge families")
    ax.set_title("Candidates (square = dense, size = MB, ringed = Pareto front)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def build_report_md(m: dict, out: Path | None = None) -> str:
    from exporters import get_spec

    p, ref = m["plan"], m.get("reference", {})
    rows = m.get("candidates", [])
    lines = [f"# cap-edge build: {m['device']}", "", p.get("description", ""), "",
             f"- model: `{m['inputs']['model']['source']}` (weights sha256 `{m['inputs']['model']['sha256_weights'][:16]}…`)",
             f"- calibration: {m['inputs']['calibration']['problems']} problems from `{m['inputs']['calibration']['spec']}`",
             f"- evaluation (held out): {m['inputs']['evaluation']}",
             f"- search: {'on' if isinstance(p['search'], dict) else p['search']}; targets: {p['targets']}",
             f"- dense reference: perplexity {_f(ref.get('dense_ppl'), '.2f')} on held-out text, "
             f"{ref.get('dense_correct')} of {ref.get('questions_asked')} free-answer questions answered by generation", ""]
    lines += ["## What was shipped, and why", ""]
    for o, s in m.get("selection", {}).items():
        lines.append(f"- **{o}**: {s['message']}" + ("" if s["met_targets"] else " (targets not met)"))
    lines += ["", "## Files to ship", "", "| output | file | MB | bundle (self-contained) | run it |", "|---|---|---|---|---|"]
    for a in m.get("artifacts", []):
        spec = get_spec(a["format"], a["precision"])
        run = spec.run.format(path=a["path"], dir=str(Path(a["path"]).parent), name=Path(a["path"]).name)
        lines.append(f"| {a['format']}:{a['precision']} ({a.get('candidate')}) | `{a['path']}` | {a['bytes'] / 1e6:.1f} | "
                     f"`{a['bundle']}` | `{run}` |")
    if m.get("model_dir"):
        lines.append(f"\nThe shipped model as a Hugging Face directory: `{m['model_dir']}/` (load it with "
                     "`cap_edge.load_pretrained`, or `AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` when "
                     "structurally pruned).")
    if m.get("handoff"):
        lines.append(f"\nJetson hand-off: `{m['handoff']['dir']}/` ({', '.join(m['handoff']['files'])}).")
    speed = next((r["speed_label"] for r in rows), "host-measured")
    lines += ["", f"## Every candidate beside the dense model (accuracy n={rows[0]['n'] if rows else '-'}, "
              f"speed {speed}; ★ = Pareto front)", "",
              "| candidate | output | valid | accuracy [95% CI] | answer CE | KL to dense | top-1 | retention | ppl | "
              "decode tok/s | TTFT s | MB | memory MB | misses |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        star = " ★" if any((r.get("pareto") or {}).values()) else ""
        misses = "; ".join(x for v in (r.get("misses") or {}).values() for x in v) or "-"
        lines.append(f"| {r['name']}{' (baseline)' if r['baseline'] else ''}{star} | {r['output']} | {r['valid']} | "
                     f"{_f(r['acc'])} [{_f(r['acc_ci'][0])}, {_f(r['acc_ci'][1])}] | {_f(r['answer_ce'], '.2f')} | "
                     f"{_f(r['kl'], '.4f')} | {_f(r['top1'])} | {_f(r['retention'])} | {_f(r['ppl'], '.2f')} | "
                     f"{_f(r['decode_tok_s'], '.1f')} | {_f(r['ttft_s'], '.3f')} | {r['mb']:.1f} | {r['memory_mb']:.0f} | {misses} |")
    if out is not None and rows:
        candidates_plot(rows, out / "candidates.png", speed)
        lines += ["", "![accuracy vs decode tokens/s](candidates.png)"]
    host = [r for r in rows if r.get("host")]
    if host and speed != "host-measured":
        lines += ["", "Host-measured on this machine (not the target):", "", "| candidate | output | decode tok/s | TTFT s | "
                  "peak RSS MB |", "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['output']} | {r['host']['decode_tok_s']:.1f} | {r['host']['ttft_s']:.3f} | "
                  f"{r['host']['peak_rss_mb']:.0f} |" for r in host]
    lines += ["", "## Sample outputs (greedy, fixed chat prompts)", ""]
    shown = {a.get("candidate") + a["format"] for a in m.get("artifacts", [])}
    for r in rows:
        if r["name"] + r["output"].split(":")[0] in shown or (r["dense"] and not r["baseline"]):
            lines.append(f"**{r['name']} {r['output']}**")
            lines += [f"- {q} → {a.strip()[:160]!r}" for q, a in (r.get("samples") or {}).items()]
            lines.append("")
    lines += ["## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v['seconds']:.1f} |" for k, v in m["stages"].items()]
    return "\n".join(lines) + "\n"
