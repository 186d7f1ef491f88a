"""Print the README's result tables from benchmarks/results/*.json (so every figure is traceable).

    python benchmarks/readme_tables.py
"""

from __future__ import annotations

import json

from _common import RESULTS, table


def load(name):
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def stored_tables(title: str, result: dict, keys=("table_md",)) -> None:
    """A heading, then the markdown tables a benchmark stored with its result."""
    print(f"### {title}\n")
    for key in keys:
        if key in result:
            print(result[key], "\n")


def main():
    for name in ("embedded_eval", "embedded_eval_n200"):
        e = load(name)
        if e:
            rows = [[f, v["n"], f"{v['acc']:.3f}", f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", f"{v['chance']:.3f}",
                     "yes" if v["above_chance"] else "no", f"{v['answer_ce']:.2f}"]
                    for f, v in list(e["families"].items()) + [("overall", e["overall"])]]
            print(f"### {name}.json\n")
            print(table(rows, ["family", "n", "acc_norm", "95% CI", "chance", "CI above chance", "answer CE"]), "\n")
    pf = load("prompt_formats")
    if pf:
        stored_tables(f"prompt_formats.json (n={pf['eval_per_family']} per family, * = CI above chance)", pf)
    for name in ("structured", "refit_damp"):
        r = load(name)
        if r:
            stored_tables(f"{name}.json ({r['command']})", r, ("table_md", "accuracy_md", "paired_md"))
    s = load("scoring")
    if s:
        rows = [[m, f"{r['seconds']:.1f}", f"{r['speedup_vs_naive']:.2f}x", f"{r['spearman_vs_exact']:.3f}", r["layer_forwards"]]
                for m, r in s["modes"].items()]
        print(f"### scoring.json ({s['problems']} problems, {s['heads']} heads, max |exact - naive| = "
              f"{s['max_abs_diff_exact_vs_naive']:.2e})\n")
        print(table(rows, ["mode", "seconds", "speed-up vs naive", "Spearman vs exact", "layer-forwards"]), "\n")
    x = load("exports")
    if x:
        stored_tables("exports.json", x)
    b = load("bench_cpu")
    if b:
        rows = [[k, f"{r['ttft']:.3f}", f"{r['decode_tok_s']:.3f}", f"{r['peak_rss']:.3f}", f"{r['bytes']:.3f}",
                 f"{r['compressed_bytes']:.3f}", f"{r['accuracy_diff']:+.3f}"] for k, r in b["ratios"].items()]
        print(f"### bench_cpu.json ratios pruned/dense ({b['runs']} interleaved runs, P={b['prompt_tokens']}, G={b['gen_tokens']})\n")
        print(table(rows, ["artifact", "TTFT", "decode tok/s", "peak RSS", "raw size", "zip size", "Δ accuracy"]), "\n")
        rows = [[n, f"{a['bytes'] / 1e6:.1f}", f"{a['compressed_bytes'] / 1e6:.1f}",
                 f"{a['accuracy']['acc']:.3f} [{a['accuracy']['ci95'][0]:.3f}, {a['accuracy']['ci95'][1]:.3f}]",
                 f"{a['latency']['ttft_s']:.4f}", f"{a['latency']['prefill_tok_s']:.0f}", f"{a['latency']['decode_tok_s']:.1f}",
                 f"{a['latency']['peak_rss_mb']:.0f}"] for n, a in b["artifacts"].items()]
        print(table(rows, ["artifact", "raw MB", "zip MB", f"accuracy (n={b['eval_problems']})", "TTFT s", "prefill tok/s",
                           "decode tok/s", "peak RSS MB"]), "\n")


if __name__ == "__main__":
    main()
