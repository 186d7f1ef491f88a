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
