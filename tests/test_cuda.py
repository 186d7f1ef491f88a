"""CUDA checks on the tiny Llama: scoring, evaluation and pruning on the GPU give what the CPU gives.

They need a CUDA device and skip with a reason elsewhere (CI has none). On a GPU machine:
``python -m pytest -q tests/test_cuda.py``. The real-model figures are benchmarks/gpu_check.py's.
"""

import pytest
import torch

from cap_edge.backend import TorchBackend
from cap_edge.config import PruneConfig, ScoreConfig
from cap_edge.models import resolve_device, resolve_dtype
from cap_edge.prompts import encode_pair
from cap_edge.pruning import prune_model
from cap_edge.scoring import build_calib_batch, compute_scores, score_channels, score_matrix, spearman
from cap_edge.tasks import load_split

from conftest import make_tiny_llama

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device: torch.cuda.is_available() is False here")


@pytest.fixture(autouse=True)
def _no_tf32():
    # fp32 on the GPU must mean fp32: TF32 matmuls would round the inputs to 10 mantissa bits
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _batch(tok, n=6):
    return build_calib_batch(tok, load_split("embedded", "calib", 1)[:n], 3)


def test_auto_picks_cuda_and_a_half_dtype():
    dev = resolve_device("auto")
    assert dev.type == "cuda"
    assert resolve_dtype("auto", dev) in (torch.bfloat16, torch.float16)


def test_exact_scores_on_cuda_match_cpu(tokenizer):
    batch = _batch(tokenizer)
    cpu = score_matrix(compute_scores(make_tiny_llama(), batch, ScoreConfig(mode="exact"), progress=False))
    gpu_model = make_tiny_llama().cuda()
    gpu = score_matrix(compute_scores(gpu_model, batch, ScoreConfig(mode="exact"), progress=False)).cpu()
    assert cpu.abs().max() > 1e-3  # heads matter: the comparison is not vacuous
    assert (gpu - cpu).abs().max().item() <= 1e-4
    for dtype in (torch.bfloat16, torch.float16):  # the half precisions scoring uses on a GPU keep the ranking
        half = score_matrix(compute_scores(make_tiny_llama().to("cuda", dtype), batch, ScoreConfig(mode="exact"),
                                           progress=False)).float().cpu()
        assert spearman(half.flatten().tolist(), cpu.flatten().tolist()) >= 0.9, dtype


def test_loglik_on_cuda_matches_cpu(tokenizer):
    probs = load_split("embedded", "eval", 2)
    reqs = [encode_pair(tokenizer, p, c) for p in probs for c in p.choices]
    cpu = TorchBackend(make_tiny_llama(), tokenizer, progress=False).loglik(reqs)
    gpu_backend = TorchBackend(make_tiny_llama().cuda(), tokenizer, progress=False)
    gpu, seq = gpu_backend.loglik(reqs), gpu_backend.loglik_sequential(reqs)
    assert max(abs(a - b) for a, b in zip(gpu, cpu)) <= 1e-3
    assert max(abs(a - b) for a, b in zip(gpu, seq)) <= 1e-3  # the tree-packed path on the GPU too
    assert len(set(gpu)) > len(gpu) // 2


@pytest.mark.parametrize("method,pattern,extra", [("wanda", "unstructured", {}), ("sparsegpt", "unstructured", {}),
                                                  ("sparsegpt", "2:4", {}), ("cap-wanda", "unstructured", {}),
                                                  ("cap-sparsegpt", "2:4", {"mask_refit_iters": 20})])
def test_pruning_on_cuda_matches_cpu(tokenizer, method, pattern, extra):
    batch = _batch(tokenizer)
    cfg = PruneConfig(method=method, sparsity=0.5, pattern=pattern, **extra)
    models = {}
    for dev in ("cpu", "cuda"):
        model = make_tiny_llama().to(dev)
        scores = chans = None
        if method.startswith("cap"):  # head and MLP channel scores computed on the same device
            scores = compute_scores(model, batch, ScoreConfig(), progress=False)
            chans = score_channels(model, tokenizer, load_split("embedded", "calib", 1)[:6], ScoreConfig(),
                                   refine_fraction=0.5, progress=False)
        rep = prune_model(model, cfg, batch, scores, progress=False, channel_scores=chans)
        assert rep["achieved_sparsity"] == pytest.approx(0.5, abs=0.005)
        models[dev] = model.cpu().state_dict()
    agree, total = 0, 0
    for name, w in models["cpu"].items():
        if name.endswith("proj.weight"):
            g = models["cuda"][name]
            same = ((w == 0) == (g == 0)).all(1)  # (out,): rows with the same mask on both devices
            agree += ((w == 0) == (g == 0)).sum().item()
            total += w.numel()
            assert (w[same] - g[same]).abs().max().item() <= 1e-2 * w.abs().max().item(), name
    # the same weights are removed, but for ties and near-ties that float round-off may order differently
    # (a flip in a row changes that row's OBS update and refit, so only rows with equal masks compare)
    assert agree / total >= 0.995


def test_hybrid_scores_and_structured_pruning_on_cuda_match_cpu(tokenizer):
    batch = _batch(tokenizer)
    cfg = ScoreConfig(mode="hybrid")
    cpu = score_matrix(compute_scores(make_tiny_llama(), batch, cfg, progress=False))
    gpu = score_matrix(compute_scores(make_tiny_llama().cuda(), batch, cfg, progress=False)).cpu()
    assert (gpu - cpu).abs().max().item() <= 1e-4
    plans = {}
    for dev in ("cpu", "cuda"):  # structured: the same heads and channel groups removed, the refit on the device
        model = make_tiny_llama().to(dev)
        rep = prune_model(model, PruneConfig(method="magnitude", pattern="structured", sparsity=0.2), batch=batch,
                          progress=False)
        plans[dev] = (rep["kept"], rep["sizes"])
    assert plans["cpu"] == plans["cuda"]


def test_quality_measures_on_cuda_match_cpu(tokenizer):
    from cap_edge.quality import measure, reference, torch_primitives
    from cap_edge.tasks import Problem

    qs = [Problem("q0", "t", "Say the", "the")]
    out = {}
    for dev in ("cpu", "cuda"):
        dense, broken = make_tiny_llama().to(dev), make_tiny_llama().to(dev)
        with torch.no_grad():
            broken.model.layers[0].mlp.down_proj.weight.mul_(-3)
        ref = reference(*torch_primitives(dense, tokenizer), tokenizer, qs)
        out[dev] = measure(*torch_primitives(broken, tokenizer), tokenizer, ref)
    assert out["cpu"]["kl_mean"] > 0.05
    assert out["cuda"]["kl_mean"] == pytest.approx(out["cpu"]["kl_mean"], rel=1e-3)
    assert out["cuda"]["ppl"] == pytest.approx(out["cpu"]["ppl"], rel=1e-3)
