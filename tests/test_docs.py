"""The documentation matches the code and the committed results."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tables():
    import sys

    if str(ROOT / "benchmarks") not in sys.path:  # as `python benchmarks/tables.py` has it: the scripts' _common
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("tables", ROOT / "benchmarks" / "tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_tables_match_the_results():
    assert _tables().check() == []  # else: python benchmarks/tables.py --write


def test_every_results_file_has_provenance():
    import json

    for p in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        r = json.loads(p.read_text())
        assert r.get("command") and r.get("machine", {}).get("date"), f"{p.name}: no command or date"


def test_docs_name_files_that_exist():
    text = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for ref in set(re.findall(r"`((?:docs|benchmarks|tests|cap_edge|exporters|runtimes|device_profiles)/[\w./-]+\.(?:md|py|json|toml))`", text)):
        assert (ROOT / ref).exists() or (ROOT / "benchmarks" / "results" / Path(ref).name).exists(), ref


def test_readme_commands_name_real_cli_commands():
    from typer.main import get_command

    from cap_edge.cli import app

    names = set(get_command(app).commands)
    used = set(re.findall(r"cap-edge ([a-z]+)", (ROOT / "README.md").read_text()))
    assert used and used <= names, used - names


def test_profile_defaults_use_the_measured_winner_of_their_level():
    """Issue #17: a profile's --no-search method is the winner of its (pattern, sparsity) in pruning.json:
    the best CAP-family method where it meets every criterion against Wanda/SparseGPT, else the best of those."""
    import json
    import sys

    from device_profiles import list_profiles, load_profile

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from pruning_compare import winner
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    levels = {(lv["pattern"], round(lv["sparsity"], 6)): lv
              for lv in json.loads((ROOT / "benchmarks" / "results" / "pruning.json").read_text())["summary"]}
    checked = 0
    for name in list_profiles():
        pr = load_profile(name).prune
        lv = levels.get((pr.pattern, round(pr.target_sparsity, 6)))
        if lv is None or pr.nm_dense:
            continue
        assert pr.method == winner(lv), (f"{name}: {pr.method} at {pr.pattern} {pr.target_sparsity}, but pruning.json's "
                                         f"winner there is {winner(lv)} (criteria {lv['criteria']})")
        checked += 1
    assert checked >= 3  # cpu, mobile-npu (50%), jetson-orin (2:4), raspberry-pi-5 (30%)


def test_commit_of_a_copy_comes_from_the_environment(tmp_path, monkeypatch):
    import cap_edge.provenance as prov

    monkeypatch.setattr(prov, "ROOT", tmp_path)  # a copy of the tree without .git (as on a lent GPU machine)
    monkeypatch.delenv("CAP_EDGE_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert prov.git_commit() is None
    monkeypatch.setenv("CAP_EDGE_COMMIT", "abc1234")
    assert prov.git_commit() == "abc1234"
    monkeypatch.setattr(prov, "ROOT", prov.Path(__file__).resolve().parent.parent)  # a checkout: the variable wins
    assert prov.git_commit() == "abc1234"
