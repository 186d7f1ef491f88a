"""torch.distributed scoring with the gloo backend on CPU processes (torchrun), as on a GPU cluster."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from cap_edge.distributed import plan_jobs


def test_static_balance_accounts_for_layer_cost():
    plan = plan_jobs(30, 9, 3, 2)
    cost = [sum((30 - l) * len(h) for l, h in jobs) for jobs in plan]
    assert sum(len(j) for j in plan) == 30 * 3
    assert abs(cost[0] - cost[1]) <= 30 * 3  # within one job's cost
    assert {(l, h[0]) for jobs in plan for l, h in jobs} == {(l, h) for l in range(30) for h in (0, 3, 6)}


def _torchrun(args, env, n=2, die: tuple[int, int] | None = None):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    target = ["-m", "cap_edge.cli"] if die is None else [os.path.join(os.path.dirname(__file__), "dying_rank.py"), *map(str, die)]
    cmd = [torchrun, "--standalone", "--nproc-per-node", str(n), *target, "score", *args]
    # torchrun runs `python -m cap_edge.cli` (its __main__ calls the typer app), or the helper that
    # patches one rank to die
    # own session: torchrun signals its whole process group when a worker fails
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, start_new_session=True)


def test_two_processes_equal_single_and_restart_reuses_jobs(tiny_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = ["--model", str(tiny_dir), "--samples", "6", "--device", "cpu"]
    single = subprocess.run([sys.executable, "-m", "cap_edge.cli", "score", *base, "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr
    # a rank that dies: the job fails, naming the rank; finished jobs stay in the cache
    dist_args = [*base, "--distributed", "--head-group", "1", "--out", str(tmp_path / "dist")]  # 8 jobs, 4 a rank
    # --force: the single run above already cached a complete result under the same key
    bad = _torchrun([*dist_args, "--force"], env, die=(1, 2))  # rank 1 dies after 2 jobs
    assert bad.returncode != 0
    assert "local_rank: 1" in bad.stderr and "exitcode: 17" in bad.stderr  # torchrun names the failed rank
    assert not (tmp_path / "dist" / "head_scores.json").exists()
    ok = _torchrun([*dist_args, "--overwrite"], env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    a = json.loads((tmp_path / "single" / "head_scores.json").read_text())
    b = json.loads((tmp_path / "dist" / "head_scores.json").read_text())
    for l in a["layers"]:
        for ha, hb in zip(a["layers"][l], b["layers"][l]):
            assert abs(ha["median"] - hb["median"]) <= 1e-6 and abs(ha["mean"] - hb["mean"]) <= 1e-6
    ranks = b["distributed"]["ranks"]
    assert b["distributed"]["world_size"] == 2 and b["distributed"]["backend"] == "gloo"
    assert sum(r["reused"] for r in ranks) >= 2  # the restart reused what the failed run finished
    assert sum(r["computed"] + r["reused"] for r in ranks) == 8


def test_device_map_placement_gives_the_same_scores(tiny_dir, tokenizer):
    """accelerate placement: layer 1 offloaded (weights on the meta device, moved in by its
    AlignDevicesHook at run time), the path a model split over several GPUs takes; the scores are
    identical to the single-device model's."""
    from cap_edge.config import ScoreConfig
    from cap_edge.errors import ModelLoadError
    from cap_edge.models import load_model
    from cap_edge.scoring import build_calib_batch, compute_scores, score_matrix
    from cap_edge.tasks import load_split

    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
          "model.rotary_emb": "cpu", "lm_head": "cpu"}
    placed = load_model(str(tiny_dir), device_map=dm).model
    assert hasattr(placed.model.layers[1], "_hf_hook") and placed.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    single = load_model(str(tiny_dir), device="cpu").model
    batch = build_calib_batch(tokenizer, load_split("embedded", "calib", 1)[:6], 3)
    for mode in ("exact", "attribution"):
        a = score_matrix(compute_scores(placed, batch, ScoreConfig(mode=mode), progress=False))
        b = score_matrix(compute_scores(single, batch, ScoreConfig(mode=mode), progress=False))
        assert (a - b).abs().max() <= 1e-6 and b.abs().max() > 1e-3
    with pytest.raises(ModelLoadError, match="device_map"):
        load_model(str(tiny_dir), device_map="everywhere")
