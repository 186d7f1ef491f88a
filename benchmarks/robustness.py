"""Every bad-input probe (tests/probes_list.py) run once, in-process on the tiny random Llama:
exit code, message, and whether anything was silently wrong, lost or left half-written.

    python benchmarks/robustness.py

Writes benchmarks/results/robustness.json. The counts of "silent wrong" and "data lost" must be 0.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from _common import table, write_result

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main():
    from bad_input_probes import run
    from probes_list import PROBES

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CAP_EDGE_CACHE"] = str(Path(tmp) / "cache")  # probes damage caches: never the user's
        for i, probe in enumerate(PROBES):
            work = Path(tmp) / f"p{i}"
            work.mkdir()
            os.environ["CAP_EDGE_CACHE"] = str(work / "cache")
            r = run(probe, work)
            r["as_expected"] = r["exit_code"] == probe.expect_code and r["message_ok"]
            results.append(r)
            rows.append([probe.category, probe.name, r["exit_code"], r["message"][:90].replace("|", "/"),
                         "yes" if r["silent_wrong"] else "no", "yes" if r["data_lost"] else "no",
                         "yes" if r["as_expected"] else "NO"])
            print(rows[-1], flush=True)
    md = table(rows, ["kind", "probe", "exit", "message", "silent wrong", "data lost", "as expected"])
    print(md)
    summary = {"probes": len(results), "silent_wrong": sum(r["silent_wrong"] for r in results),
               "data_lost": sum(r["data_lost"] for r in results), "as_expected": sum(r["as_expected"] for r in results)}
    print(summary)
    write_result("robustness", {"summary": summary, "results": results, "table_md": md})


if __name__ == "__main__":
    main()
