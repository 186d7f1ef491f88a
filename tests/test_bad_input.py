"""One test per bad-input probe (tests/probes_list.py): the exit code, the message, and that nothing
was overwritten, half-written or silently wrong."""

import pytest

from bad_input_probes import run
from probes_list import PROBES


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_probe(probe, tmp_path):
    out = run(probe, tmp_path)
    assert out["exit_code"] == probe.expect_code, out
    assert out["message_ok"], out
    assert not out["silent_wrong"], out
    assert not out["data_lost"], out
