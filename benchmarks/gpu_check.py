"""The GPU check, ready for a machine with CUDA: exact CAP scoring in bf16 and fp16 against an fp32
reference (max |diff|, Spearman), evaluation and pruning runs (SparseGPT, cap-wanda) on the device, timed. Without
CUDA it runs the same steps on the CPU and says so in the result (``device``, ``cuda``).

    python benchmarks/gpu_check.py [--problems 12]

Writes benchmarks/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import traceback
from pathlib import Path

import torch

from _common import write_result
from cap_edge.backend import TorchBackend
from cap_edge.config import PruneConfig, ScoreConfig
from cap_edge.evaluate import evaluate
from cap_edge.models import load_model
from cap_edge.pruning.run import prune_stage
from cap_edge.scoring import build_calib_batch, compute_scores, score_matrix, spearman
from cap_edge.tasks import calibration_problems, load_split


@contextlib.contextmanager
def _cache(path: Path):
    """CAP_EDGE_CACHE pointed at ``path`` for a while: nothing cached by an earlier run is reused."""
    old = os.environ.get("CAP_EDGE_CACHE")
    os.environ["CAP_EDGE_CACHE"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["CAP_EDGE_CACHE"]
        else:
            os.environ["CAP_EDGE_CACHE"] = old


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=12)
    ap.add_argument("--eval-per-family", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=["sparsegpt", "cap-wanda"],
                    help="pruned at 50%% through prune_stage (cap-wanda: hybrid head and channel scores on the device)")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    out = {"cuda": cuda, "device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA on this machine: the same steps ran "
           "on the CPU)", "scoring": {}}
    ref = None
    for dtype in ("fp32", "bf16", "fp16"):
        if dtype == "fp16" and not cuda:
            out["scoring"][dtype] = {"skipped": "fp16 matmuls are not a CPU path"}
            continue
        lm = load_model(None, device=device, dtype=dtype)
        batch = build_calib_batch(lm.tokenizer, calibration_problems("embedded", args.problems), 3, pad_id=lm.tokenizer.pad_token_id)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        res = compute_scores(lm.model, batch, ScoreConfig(mode="exact"), progress=False)
        if cuda:
            torch.cuda.synchronize()
        m = score_matrix(res)
        row = {"seconds": time.perf_counter() - t}
        if ref is None:
            ref = m
        else:
            row.update(max_abs_diff_vs_fp32=float((m - ref).abs().max()),
                       spearman_vs_fp32=spearman(m.flatten().tolist(), ref.flatten().tolist()))
        out["scoring"][dtype] = row
        print(dtype, row, flush=True)
    lm = load_model(None, device=device)  # auto dtype: bf16/fp16 on CUDA, fp32 on CPU
    t = time.perf_counter()
    r = evaluate(TorchBackend(lm.model, lm.tokenizer, progress=False), lm.tokenizer, load_split("embedded", "eval",
                                                                                             args.eval_per_family))
    out["evaluation"] = {"seconds": time.perf_counter() - t, "dtype": str(lm.model.dtype), "acc": r["overall"]["acc"],
                         "n": r["overall"]["n"]}
    eval_set = load_split("embedded", "eval", args.eval_per_family)
    out["prune"] = {}
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    for method in args.methods:  # the production path (prune_stage: its statistics batch and scores)
        lm.model.load_state_dict(original)
        try:  # a one-shot run on a lent machine: a failing method is recorded, the others still run
            with tempfile.TemporaryDirectory() as tmp, _cache(Path(tmp) / "cache"):  # scored and pruned afresh, timed
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                res = prune_stage(lm, PruneConfig(method=method, sparsity=0.5), out=Path(tmp) / "pruned", progress=False)
                if cuda:
                    torch.cuda.synchronize()
                row = {"seconds": time.perf_counter() - t, "cache_hit": res.cache_hit,
                       "achieved_sparsity": res.report["achieved_sparsity"], "statistics_problems": res.calibration["problems"]}
            r = evaluate(TorchBackend(lm.model, lm.tokenizer, progress=False), lm.tokenizer, eval_set)
            row.update(acc=r["overall"]["acc"], n=r["overall"]["n"])
        except Exception as e:  # noqa: BLE001 - recorded in the result, with its traceback printed
            traceback.print_exc()
            row = {"error": f"{type(e).__name__}: {e}"}
        out["prune"][method] = row
        print(method, row, flush=True)
    print(out, flush=True)
    write_result("gpu_check", out)


if __name__ == "__main__":
    main()
