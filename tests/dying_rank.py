"""Test helper run under torchrun: ``dying_rank.py RANK JOBS score ...`` runs the cap-edge CLI
with ``ScoringEngine.masked_rows`` patched so that rank RANK exits (code 17) before its JOBS+1-th
job, the way a crashed worker dies. The library itself has no failure hook."""

import os
import sys

from cap_edge.scoring import engine

rank, jobs = int(sys.argv[1]), int(sys.argv[2])
sys.argv = ["cap-edge", *sys.argv[3:]]
if int(os.environ.get("RANK", 0)) == rank:
    real, calls = engine.ScoringEngine.masked_rows, [0]

    def dying(self, *args, **kwargs):
        if calls[0] >= jobs:
            os._exit(17)
        calls[0] += 1
        return real(self, *args, **kwargs)

    engine.ScoringEngine.masked_rows = dying

from cap_edge.cli import main  # noqa: E402

main()
