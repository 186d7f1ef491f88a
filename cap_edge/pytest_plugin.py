"""pytest plugin shipped with cap-edge, for hardware regression tests in users' own suites.

    @pytest.mark.device("jetson-orin")
    def test_latency(cap_edge_bench, cap_edge_baseline):
        assert_no_regression(cap_edge_bench, cap_edge_baseline)

* ``device(name)`` skips with a reason unless the profile's detector finds that device here.
* ``--cap-edge-build DIR`` names a build directory; ``cap_edge_bench`` benches it once per session.
* ``--cap-edge-baseline FILE`` names the stored baseline (``cap_edge_baseline`` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("cap-edge")
    g.addoption("--cap-edge-build", default=None, help="build directory to bench (cap-edge build --out)")
    g.addoption("--cap-edge-baseline", default=None, help="baseline bench JSON to assert against")
    g.addoption("--cap-edge-runs", type=int, default=3, help="interleaved bench repetitions")


def pytest_configure(config):
    config.addinivalue_line("markers", "device(name): run only where the named cap-edge device profile is detected")


def pytest_runtest_setup(item):
    for mark in item.iter_markers(name="device"):
        if not mark.args:
            raise pytest.UsageError("device marker needs a profile name, e.g. @pytest.mark.device('jetson-orin')")
        from device_profiles import detect, load_profile

        present, why = detect(load_profile(mark.args[0]))
        if not present:
            pytest.skip(f"device {mark.args[0]!r} not present: {why}")


@pytest.fixture(scope="session")
def cap_edge_bench(request):
    build = request.config.getoption("--cap-edge-build")
    if not build:
        pytest.skip("no --cap-edge-build DIR given")
    from cap_edge.deploy.bench import bench

    return bench(Path(build), runs=request.config.getoption("--cap-edge-runs"), progress=False)


@pytest.fixture(scope="session")
def cap_edge_baseline(request):
    path = request.config.getoption("--cap-edge-baseline")
    if not path:
        pytest.skip("no --cap-edge-baseline FILE given")
    return json.loads(Path(path).read_text())


def assert_no_regression(result: dict, baseline: dict, tolerances=None) -> None:
    from cap_edge.gate import Tolerances, compare, format_regressions

    regs = compare(result, baseline, tolerances or Tolerances())
    assert not regs, "regressions:\n" + format_regressions(regs)
