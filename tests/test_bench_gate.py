import copy
import json
import re

import pytest
from typer.testing import CliRunner

from cap_edge.cli import app
from cap_edge.gate import compare, format_regressions

runner = CliRunner()

pytest_plugins = ["pytester"]


def _result():
    art = {"format": "gguf", "precision": "q8_0", "bytes": 1000, "compressed_bytes": 600,
           "accuracy": {"acc": 0.50, "ci95": [0.40, 0.60], "n": 100, "chance": 0.25, "answer_ce": 2.0},
           "latency": {"ttft_s": 0.10, "decode_tok_s": 50.0, "peak_rss_mb": 300.0}}
    return {"artifacts": {"pruned/gguf:q8_0": art, "dense/gguf:q8_0": copy.deepcopy(art)}}


def test_gate_passes_against_itself():
    r = _result()
    assert compare(r, r) == []


def test_gate_flags_each_regression_with_amount_and_tolerance():
    base, cur = _result(), _result()
    a = cur["artifacts"]["pruned/gguf:q8_0"]
    a["accuracy"]["acc"] = 0.30  # -0.20 > CI half-width 0.10 + 0.01
    a["latency"]["ttft_s"] = 0.12  # +20% > 10%
    a["latency"]["decode_tok_s"] = 40.0  # -20%
    a["latency"]["peak_rss_mb"] = 320.0  # +6.7% > 5%
    a["bytes"] = 1020  # +2% > 1%
    regs = compare(cur, base)
    assert {r["metric"] for r in regs} == {"accuracy", "ttft_s", "decode_tok_s", "peak_rss_mb", "bytes"}
    table = format_regressions(regs)
    assert "ttft_s" in table and "+20.0%" in table and "+10%" in table
    # within tolerance: no regression
    cur2 = _result()
    cur2["artifacts"]["pruned/gguf:q8_0"]["latency"]["ttft_s"] = 0.105
    cur2["artifacts"]["pruned/gguf:q8_0"]["accuracy"]["acc"] = 0.45
    assert compare(cur2, base) == []


def test_gate_cli_exit_codes(tmp_path):
    base, bad = tmp_path / "base.json", tmp_path / "bad.json"
    base.write_text(json.dumps(_result()))
    r = _result()
    r["artifacts"]["dense/gguf:q8_0"]["latency"]["peak_rss_mb"] = 400.0
    bad.write_text(json.dumps(r))
    ok = runner.invoke(app, ["gate", str(base), "--baseline", str(base)])
    assert ok.exit_code == 0 and "no regression" in ok.output
    fail = runner.invoke(app, ["gate", str(bad), "--baseline", str(base)])
    assert fail.exit_code == 1 and "REGRESSION" in fail.output and "peak_rss_mb" in fail.output and "+33.3%" in fail.output


def test_device_marker_skips_with_reason(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.device("jetson-orin")
        def test_on_jetson():
            assert False, "must not run here"

        @pytest.mark.device("cpu")
        def test_on_host():
            assert True
    """)
    res = pytester.runpytest("-rs")  # the plugin is registered through the pytest11 entry point
    res.assert_outcomes(passed=1, skipped=1)
    assert re.search(r"device 'jetson-orin' not present: no /etc/nv_tegra_release", res.stdout.str())


def test_html_report_is_self_contained(tmp_path, tiny_dir):
    from cap_edge.config import BudgetConfig
    from cap_edge.config import BuildConfig, PruneConfig
    from cap_edge.deploy.bench import bench
    from cap_edge.deploy.build import build
    from cap_edge.report import write_bench_report
    from device_profiles import load_profile

    cfg = BuildConfig(profile=load_profile("cpu"), out=str(tmp_path / "b"), model=str(tiny_dir), eval_per_family=1,
                      budget=BudgetConfig(problems=6, tokens_per_problem=64), prompt_tokens=8, gen_tokens=4, runs=1,
                      search=False, prune=PruneConfig(method="magnitude", sparsity=0.5))
    build(cfg, progress=False)
    res = bench(tmp_path / "b", runs=2, prompt_tokens=8, gen_tokens=4, progress=False)
    # the shipped artifact beside dense at the same precision and at the next lower one, through the same runtime
    assert set(res["ratios"]) == {"gguf:q8_0 vs dense/gguf:q8_0", "gguf:q8_0 vs dense/gguf:q4_0"}
    same = res["ratios"]["gguf:q8_0 vs dense/gguf:q8_0"]
    assert same["baseline"] == "same precision" and same["ttft"] > 0 and same["compressed_bytes"] < 1.0  # zeros compress
    assert res["ratios"]["gguf:q8_0 vs dense/gguf:q4_0"]["bytes"] > 1.0  # q8_0 is larger than dense q4_0
    assert all("kl_mean" in a["fidelity"] for a in res["artifacts"].values())
    sweep = {"dense": {"knowledge": {"acc": 0.5, "chance": 0.3}},  # the shape of benchmarks/results/pruning.json
             "summary": [{"pattern": "unstructured", "rows": [{"method": m, "sparsity": sp, "acc": {"mean": 0.5 - sp / 4}}
                                                             for m in ("wanda", "cap") for sp in (0.1, 0.5)]}]}
    md, html_path = write_bench_report(res, tmp_path / "b", tmp_path / "b", sweep)
    page = html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "Accuracy vs sparsity per method" in page
    assert page.count("data:image/png;base64,") >= 3
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # no external URLs
    tags = _balanced_tags(page)  # every element closed in order
    assert tags["img"] == page.count("data:image/png;base64,") and tags["table"] == 2 and tags["h2"] >= 5
    assert "Ratios shipped / dense baselines" in md.read_text() and "vs dense/gguf:q4_0" in md.read_text()


def _balanced_tags(page: str) -> dict:
    """Tag counts of a page whose non-void elements all close in nesting order (AssertionError otherwise)."""
    import collections
    import html.parser

    void = {"img", "meta", "br", "hr", "input", "link"}

    class Strict(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.counts = [], collections.Counter()

        def handle_starttag(self, tag, attrs):
            self.counts[tag] += 1
            if tag not in void:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
            self.stack.pop()

    p = Strict()
    p.feed(page)
    p.close()
    assert p.stack == [], f"unclosed: {p.stack}"
    return p.counts


def test_strict_tag_check_catches_a_broken_page():
    with pytest.raises(AssertionError):
        _balanced_tags("<html><body><table><tr><td>x</td></table></body></html>")
