"""Markdown report of a build manifest. Host-measured and estimated figures sit in separate
columns under their labels, never mixed."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path


# ---------------------------------------------------------------- bench report (md + self-contained html)



def heatmap_figure(result: dict):
    """Heads (or channel groups) x layers, coloured by the median Δ answer CE when masked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .scoring import score_matrix

    m = score_matrix(result).numpy()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * m.shape[1] + 2), max(4, 0.22 * m.shape[0] + 1.5)))
    lim = float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 1.0
    im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xlabel("head" if result.get("target", "heads") == "heads" else "channel group")
    ax.set_ylabel("layer")
    ax.set_title(f"CAP scores ({result['mode']}): median Δ answer CE when masked")
    fig.colorbar(im, ax=ax, label="Δ cross-entropy (nats)")
    fig.tight_layout()
    return fig


def heatmap_png(result: dict, path) -> None:
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig = heatmap_figure(result)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(bench: dict, build_dir: Path, sweep: dict | None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = {}
    names = list(bench["artifacts"])
    if names:
        fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
        x = np.arange(len(names))
        colours = ["C0" if n.startswith("shipped/") else "C7" for n in names]
        for ax, (metric, label) in zip(axes, [("ttft_s", "TTFT (s)"), ("decode_tok_s", "decode tokens/s"),
                                              ("peak_rss_mb", "peak RSS (MB)")]):
            ax.bar(x, [bench["artifacts"][n]["latency"][metric] for n in names], color=colours)
            ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{label} (host-measured)")
        axes[3].bar(x, [bench["artifacts"][n]["accuracy"]["acc"] for n in names], color=colours)
        axes[3].set_xticks(x, names, rotation=30, ha="right", fontsize=7)
        axes[3].set_title("accuracy (knowledge families)")
        fig.tight_layout()
        out["Shipped (blue) vs dense at the same and the lower precision"] = _png(fig)
    model_dir = build_dir / json.loads((build_dir / "manifest.json").read_text()).get("model_dir", "model")
    sj = model_dir / "sparsity.json"
    if sj.is_file() and "layers" in json.loads(sj.read_text()):
        layers = json.loads(sj.read_text())["layers"]
        by_kind: dict[str, list[tuple[int, float]]] = {}
        for name, v in layers.items():
            parts = name.split(".")
            idx = next(int(p) for p in parts if p.isdigit())
            by_kind.setdefault(parts[-1], []).append((idx, v["sparsity"]))
        fig, ax = plt.subplots(figsize=(8, 3.6))
        for kind, pts in sorted(by_kind.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=kind)
        ax.set_xlabel("layer")
        ax.set_ylabel("sparsity")
        ax.legend(fontsize=7, ncol=4)
        ax.set_title("Per-layer sparsity")
        fig.tight_layout()
        out["Per-layer sparsity"] = _png(fig)
    hs = build_dir / "head_scores.json"
    if hs.is_file():
        out["CAP head-score heatmap"] = _png(heatmap_figure(json.loads(hs.read_text())))
    if sweep:
        dense = sweep["dense"]["knowledge"]  # benchmarks/results/pruning.json: mean over calibration draws per row
        rows = [r for lv in sweep["summary"] if lv["pattern"] == "unstructured" for r in lv["rows"]]
        fig, ax = plt.subplots(figsize=(7, 4))
        for meth in sorted({r["method"] for r in rows}):
            pts = sorted((r["sparsity"], r["acc"]["mean"]) for r in rows if r["method"] == meth)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=meth)
        ax.axhline(dense["acc"], color="k", ls="--", label="dense")
        if "chance" in dense:
            ax.axhline(dense["chance"], color="grey", ls=":", label="chance")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
        ax.set_title("Accuracy vs sparsity per method")
        fig.tight_layout()
        out["Accuracy vs sparsity per method"] = _png(fig)
    return out


def _bench_rows(bench: dict) -> list[list[str]]:
    rows = []
    for name, a in bench["artifacts"].items():
        acc, lat, fid = a["accuracy"], a["latency"], a.get("fidelity", {})
        rows.append([name, f"{a['bytes'] / 1e6:.1f}", f"{a['compressed_bytes'] / 1e6:.1f}",
                     f"{acc['acc']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}] n={acc['n']}",
                     f"{fid.get('kl_mean', float('nan')):.4f}", f"{(fid.get('retention') or {}).get('share', float('nan')):.3f}",
                     f"{lat['ttft_s']:.4f} ({lat['ttft_min']:.4f}–{lat['ttft_max']:.4f})", f"{lat['prefill_tok_s']:.1f}",
                     f"{lat['decode_tok_s']:.1f} ({lat['decode_min']:.1f}–{lat['decode_max']:.1f})", f"{lat['peak_rss_mb']:.0f}"])
    return rows


BENCH_HEAD = ["artifact", "raw MB", "zip MB", "accuracy [95% CI]", "KL to dense", "retention", "TTFT s (min–max)",
              "prefill tok/s", "decode tok/s (min–max)", "peak RSS MB"]
RATIO_HEAD = ["shipped vs", "baseline", "TTFT", "decode tok/s", "peak RSS", "raw size", "zip size", "Δ accuracy", "Δ KL"]


def _ratio_rows(bench: dict) -> list[list[str]]:
    return [[k, r.get("baseline", ""), f"{r['ttft']:.3f}", f"{r['decode_tok_s']:.3f}", f"{r['peak_rss']:.3f}", f"{r['bytes']:.3f}",
             f"{r['compressed_bytes']:.3f}", f"{r['accuracy_diff']:+.3f}", f"{r.get('kl_diff', float('nan')):+.4f}"]
            for k, r in bench["ratios"].items()]


def _md_table(head, rows) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows])


def bench_tables(bench: dict) -> str:
    """The bench's measurements and its pruned / dense ratios as markdown tables."""
    return (_md_table(BENCH_HEAD, _bench_rows(bench)) + "\n\nratios shipped / dense baselines (host-measured):\n"
            + _md_table(RATIO_HEAD, _ratio_rows(bench)))


def write_bench_report(bench: dict, build_dir: str | Path, out_dir: str | Path, sweep: dict | None = None) -> tuple[Path, Path]:
    """report.md and a self-contained report.html (images inlined as data: URIs, no external URLs)."""
    from .io import atomic_path

    build_dir, out_dir = Path(build_dir), Path(out_dir)
    plots = _plots(bench, build_dir, sweep)
    title = f"cap-edge bench: {bench['device']} ({bench['label']}, {bench['runs']} interleaved runs, P={bench['prompt_tokens']}, G={bench['gen_tokens']})"
    md = [f"# {title}", "", "## Measurements", "", _md_table(BENCH_HEAD, _bench_rows(bench)), "",
          "## Ratios shipped / dense baselines", "", _md_table(RATIO_HEAD, _ratio_rows(bench)), ""]
    md += [f"Plots: see report.html ({', '.join(plots)})."]
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for head, rows, caption in ((BENCH_HEAD, _bench_rows(bench), "Measurements"), (RATIO_HEAD, _ratio_rows(bench), "Ratios shipped / dense baselines")):
        parts.append(f"<h2>{caption}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    for caption, b64 in plots.items():
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{b64}\">")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>cap-edge report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}img{max-width:100%}</style></head><body>"
            + "".join(parts) + "</body></html>")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "report.md") as t:
        t.write_text("\n".join(md) + "\n")
    with atomic_path(out_dir / "report.html") as t:
        t.write_text(page)
    return out_dir / "report.md", out_dir / "report.html"
