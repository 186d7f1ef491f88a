"""The bad-input probes (see ``bad_input_probes``): what a careless or hostile user tries."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import bad_input_probes as bp
from bad_input_probes import Probe, Setup


def _partial_scores(reseal: bool):
    return lambda work: _partial_scores_in(work, reseal)


def _partial_scores_in(work: Path, reseal: bool) -> Setup:
    from cap_edge.scoring.cache import seal

    data = json.loads(bp.scores_file(work).read_text())
    data["layers"] = {"0": data["layers"]["0"]}  # layer 1 missing
    f = work / "partial.json"
    f.write_text(json.dumps(seal(data) if reseal else data))  # resealed: a consistent file that still lacks a layer
    out = work / "pruned"
    return Setup(["prune", "--model", str(bp.tiny_model_dir(work)), "--method", "cap", "--sparsity", "0.5",
                  "--samples", "6", "--scores", str(f), "--out", str(out)], absent=[out])


def _scores_complete_but_missing_layers(work: Path) -> Setup:
    """The score cache says complete with one of two layers: discarded, recomputed, right sparsity."""
    bp.scores_file(work)
    (entry,) = [p for p in bp.cache_entries("scores") if p.suffix == ".json"]
    data = json.loads(entry.read_text())
    del data["layers"]["1"]
    entry.write_text(json.dumps(data))
    out = work / "pruned"

    def check():
        rep = json.loads((out / "sparsity.json").read_text())
        return None if abs(rep["achieved_sparsity"] - 0.5) < 0.01 else f"achieved {rep['achieved_sparsity']}"
    return Setup(["prune", "--model", str(bp.tiny_model_dir(work)), "--method", "cap", "--sparsity", "0.5",
                  "--samples", "6", "--out", str(out)], check=check)


def _edited_score_cache(value):
    def setup(work: Path) -> Setup:
        bp.scores_file(work)
        (entry,) = [p for p in bp.cache_entries("scores") if p.suffix == ".json"]
        if value == "swap":  # valid JSON, plausible numbers: the least important head shown as the most important
            data = json.loads(entry.read_text())
            heads = data["layers"]["0"]
            lo = min(range(len(heads)), key=lambda h: heads[h]["median"])
            heads[lo]["median"] = 99.0
            entry.write_text(json.dumps(data))
        else:
            entry.write_text(value)
        out = work / "s2"

        def check():
            got = json.loads((out / "head_scores.json").read_text())
            return None if all(h["median"] != 99.0 for h in got["layers"]["0"]) else "edited score served"
        return Setup(["score", "--model", str(bp.tiny_model_dir(work)), "--samples", "6", "--out", str(out)], check=check)
    return setup


def _pruned_cache(damage: str):
    def setup(work: Path) -> Setup:
        from safetensors.torch import load_file, save_file

        out = work / "b1"
        from cap_edge.cli import app
        from typer.testing import CliRunner

        r = CliRunner().invoke(app, bp.tiny_build_args(work, out, "--no-search"))  # one pruned model in the cache
        assert r.exit_code == 0, r.output
        (entry,) = bp.cache_entries("pruned")
        f = entry / "model.safetensors"
        if damage == "zeroed":  # ten more matrices zeroed, the digests file left as it was
            sd = load_file(f)
            for k in [k for k in sd if k.endswith("proj.weight")][:10]:
                sd[k].zero_()
            save_file(sd, f, metadata={"format": "pt"})
        else:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        out2 = work / "b2"

        def check():
            m = json.loads((out2 / "manifest.json").read_text())
            p = m["pruned"]["configured"]
            rep = json.loads((Path(p["dir"]) / "sparsity.json").read_text())
            ok = m["status"] == "complete" and not p["cache_hit"] and abs(rep["achieved_sparsity"] - 0.5) < 0.01
            return None if ok else f"status {m['status']}, cache hit {p['cache_hit']}"
        return Setup(bp.tiny_build_args(work, out2, "--no-search"), check=check)
    return setup


def _export_into_user_dir(work: Path) -> Setup:
    out = work / "art"
    out.mkdir()
    mine = out / "model.q8_0.gguf"
    mine.write_bytes(b"the user's own model")
    return Setup(["export", str(bp.tiny_model_dir(work)), "--format", "gguf", "--precision", "q8_0", "--out", str(out)],
                 protect=[mine])


def _interrupted_export(work: Path) -> Setup:
    from cap_edge.deploy.export import export_artifact

    out = work / "art"

    def interrupt(*a, **k):
        raise KeyboardInterrupt("Ctrl-C during validation")
    return Setup(call=lambda: export_artifact(bp.tiny_model_dir(work), "gguf", "q8_0", out),
                 patch=mock.patch("exporters.validate.validate", interrupt),
                 absent=[out / "model.q8_0.gguf", out / "gguf-q8_0.zip", out / "manifest.json"])


def _build_into_nonempty(work: Path) -> Setup:
    out = work / "b"
    out.mkdir()
    notes = out / "notes.txt"
    notes.write_text("my notes")
    return Setup(bp.tiny_build_args(work, out), protect=[notes], absent=[out / "manifest.json"])


def _failed_stage_manifest(work: Path) -> Setup:
    """A stage that fails (here the memory check) leaves the manifest saying so."""
    out = work / "b"
    prof = bp.profile_file(work, ("memory_budget_mb = 4096", "memory_budget_mb = 0.001"))
    return Setup(bp.tiny_build_args(work, out, device=str(prof)), manifest_check=out / "manifest.json")


def _gate(result: dict, baseline, malformed: bool = False):
    def setup(work: Path) -> Setup:
        r, b = work / "result.json", work / "baseline.json"
        r.write_text(json.dumps(result))
        b.write_text(baseline if malformed else json.dumps(baseline))
        return Setup(["gate", str(r), "--baseline", str(b)])
    return setup


def _profile(edit):
    def setup(work: Path) -> Setup:
        out = work / "b"
        return Setup(bp.tiny_build_args(work, out, device=str(bp.profile_file(work, edit))), absent=[out])
    return setup


def _flag(*extra):
    def setup(work: Path) -> Setup:
        out = work / "b"
        return Setup(bp.tiny_build_args(work, out, *extra), absent=[out])
    return setup


def _non_utf8_profile(work: Path) -> Setup:
    p = work / "latin1.toml"
    p.write_bytes(Path(bp.profile_file(work, ("name = \"cpu\"", "name = \"cpu\""))).read_bytes().replace(
        b"Host CPU", b"H\xf4te CPU"))
    return Setup(bp.tiny_build_args(work, work / "b", device=str(p)), absent=[work / "b"])


def _jsonl(lines: list[bytes], *, eval_only=False):
    def setup(work: Path) -> Setup:
        f = work / "tasks.jsonl"
        f.write_bytes(b"\n".join(lines) + b"\n")
        return Setup(["eval", "--model", str(bp.tiny_model_dir(work)), "--tasks", str(f)])
    return setup


def _truncated_gguf(work: Path) -> Setup:
    from exporters.gguf import export_gguf

    g = export_gguf(bp.tiny_model_dir(work), work / "g", "f32").path
    bad = work / "cut.gguf"
    bad.write_bytes(Path(g).read_bytes()[:4000])
    return Setup(["build", "--device", "cpu", "--model", str(bad), "--out", str(work / "b")], absent=[work / "b"])


def _score_out_is_file(work: Path) -> Setup:
    f = work / "scores.json"
    f.write_text("{}")
    return Setup(["score", "--model", str(bp.tiny_model_dir(work)), "--samples", "6", "--out", str(f)], protect=[f])


def _full_disk(work: Path) -> Setup:
    import shutil as sh
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    return Setup(bp.tiny_build_args(work, work / "b"), absent=[work / "b"],
                 patch=mock.patch.object(sh, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000)))


def _scores_not_json(work: Path) -> Setup:
    f = work / "notes.txt"
    f.write_text("these are not scores")
    return Setup(["prune", "--model", str(bp.tiny_model_dir(work)), "--method", "cap", "--samples", "6", "--scores", str(f),
                  "--out", str(work / "p")], absent=[work / "p"])


ROW = b'{"question": "Pick one.", "answer": "a", "choices": ["a", "b", "a"]}'
LONG = json.dumps({"question": "word " * 10_000, "answer": "a", "choices": ["a", "b"]}).encode()

PROBES = [
    Probe("cap prune with scores missing layers", "silent wrong", 2, "marked complete but layer\\(s\\) \\[1\\] have no scores",
          _partial_scores(reseal=True)),
    Probe("cap prune with a scores file cut by hand", "silent wrong", 2, "content hash does not match", _partial_scores(reseal=False)),
    Probe("score cache complete but missing layers", "cache", 0, "", _scores_complete_but_missing_layers),
    Probe("score cache hand-edited (valid JSON)", "cache", 0, "", _edited_score_cache("swap")),
    Probe("score cache holds []", "cache", 0, "", _edited_score_cache("[]")),
    Probe("score cache holds {complete: true}", "cache", 0, "", _edited_score_cache('{"complete": true}')),
    Probe("pruned-model cache with ten more zeroed matrices", "cache", 0, "", _pruned_cache("zeroed")),
    Probe("pruned-model cache truncated", "cache", 0, "", _pruned_cache("truncated")),
    Probe("export into a folder holding the user's model.q8_0.gguf", "overwrite", 2, "not empty", _export_into_user_dir),
    Probe("export interrupted during validation", "half-written", 130, "KeyboardInterrupt", _interrupted_export),
    Probe("build into a non-empty folder without a manifest", "overwrite", 2, "not empty", _build_into_nonempty),
    Probe("failed stage leaves status failed and stopped_at", "manifest", 2, "memory budget", _failed_stage_manifest),
    Probe("gate: jetson result vs cpu baseline", "gate", 4, "device differs", _gate(bp.bench_result(device="jetson-orin"), bp.bench_result())),
    Probe("gate: result missing latency", "gate", 1, "missing", _gate(
        bp.bench_result(artifacts={"pruned/gguf:q8_0": {k: v for k, v in bp.bench_result()["artifacts"]["pruned/gguf:q8_0"].items() if k != "latency"}}),
        bp.bench_result())),
    Probe("gate: empty baseline", "gate", 4, "no artifacts", _gate(bp.bench_result(), {"device": "cpu", "artifacts": {}})),
    Probe("gate: malformed baseline JSON", "gate", 2, "not valid JSON", _gate(bp.bench_result(), "{not json", malformed=True)),
    Probe("gate: other artifact set", "gate", 4, "artifact sets differ", _gate(
        bp.bench_result(), bp.bench_result(artifacts={"pruned/onnx:int8": bp.bench_result()["artifacts"]["pruned/gguf:q8_0"]}))),
    Probe("profile bandwidth 0", "profile", 2, "'memory_bandwidth_gbs' expected a positive", _profile(("memory_bandwidth_gbs = 51.2", "memory_bandwidth_gbs = 0"))),
    Probe("profile TOPS 0", "profile", 2, "'dense_tops' expected a positive", _profile(("dense_tops = 0.77", "dense_tops = 0"))),
    Probe("profile memory budget -5", "profile", 2, "'memory_budget_mb' expected a positive", _profile(("memory_budget_mb = 4096", "memory_budget_mb = -5"))),
    Probe("profile outputs []", "profile", 2, "'outputs' expected at least one", _profile(('outputs = ["gguf:q8_0"]', "outputs = []"))),
    Probe("profile context_length 0", "profile", 2, "'context_length' expected a positive", _profile(("context_length = 2048", "context_length = 0"))),
    Probe("profile old key gguf_precisions", "profile", 2, "outputs = ", _profile(('outputs = ["gguf:q8_0"]', 'formats = ["gguf"]'))),
    Probe("--budget-problems 0", "flag", 2, "--budget-problems: expected an integer >= 1", _flag("--budget-problems", "0")),
    Probe("--runs -3", "flag", 2, "--runs: expected an integer >= 1", _flag("--runs", "-3")),
    Probe("--eval-per-family 0", "flag", 2, "--eval-per-family: expected an integer >= 1", _flag("--eval-per-family", "0")),
    Probe("--gen-tokens -1", "flag", 2, "--gen-tokens: expected an integer >= 1", _flag("--gen-tokens", "-1")),
    Probe("--sparsity 1.0", "flag", 2, "\\[0, 1\\)", _flag("--sparsity", "1.0")),
    Probe("unknown device", "flag", 2, "unknown device 'toaster'", lambda w: Setup(["build", "--device", "toaster", "--out", str(w / "b")], absent=[w / "b"])),
    Probe("non-UTF-8 profile", "encoding", 2, "not UTF-8", _non_utf8_profile),
    Probe("non-UTF-8 JSONL", "encoding", 2, "tasks.jsonl:2: not UTF-8", _jsonl([ROW.replace(b', "a"]', b']'), b'{"question": "caf\xe9?", "answer": "a"}'])),
    Probe("JSONL duplicate choices", "tasks", 2, "tasks.jsonl:1: .*duplicate choice", _jsonl([ROW])),
    Probe("JSONL question past the model's context", "tasks", 2, "over the context of 512", _jsonl([LONG] * 4)),
    Probe("truncated GGUF as --model", "model", 2, "could not read GGUF", _truncated_gguf),
    Probe("score --out is a file", "output", 2, "is a file", _score_out_is_file),
    Probe("build into a read-only location", "output", 2, "not writable", lambda w: Setup(bp.tiny_build_args(w, Path("/sys/cap-edge-probe")))),
    Probe("build with a full disk", "output", 2, "MB free", _full_disk),
    Probe("--scores is not JSON", "scores", 2, "not valid JSON.*head_scores.json", _scores_not_json),
]
