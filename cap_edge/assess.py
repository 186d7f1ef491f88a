"""What a user notices, measured the same way for every candidate (the build search, bench, and
the ranking benchmarks): accuracy on the families where the dense model is above chance (with the
per-problem outcomes for paired tests), answer CE on the whole suite, and fidelity to the dense
model (KL, top-1, perplexity, generation retention, sample outputs). The dense side is computed
once (``dense_reference``); every candidate goes through ``score`` with its backend (PyTorch or a
runtime on the exported artifact)."""

from __future__ import annotations

from dataclasses import dataclass

from .backend import TorchBackend
from .evaluate import evaluate, mcnemar
from .quality import measure, reference, runtime_primitives, torch_primitives
from .tasks import load_split

KNOWLEDGE = "embedded:animals,geography,opposites"  # the dense model is clearly above chance here (n=50 each)
GEN_FAMILIES = "embedded:animals,arithmetic,geography,opposites"  # free-answer questions for generation retention


@dataclass
class EvalSet:
    knowledge: list  # problems (accuracy, paired tests)
    suite: list  # problems (answer CE over every family)
    gen: list  # free-answer questions

    @classmethod
    def build(cls, knowledge_per_family: int, suite_per_family: int, gen_per_family: int,
              knowledge: str = KNOWLEDGE, suite: str = "embedded", gen: str = GEN_FAMILIES) -> "EvalSet":
        return cls(load_split(knowledge, "eval", knowledge_per_family), load_split(suite, "eval", suite_per_family),
                   load_split(gen, "eval", gen_per_family))

    def all_questions(self) -> list[str]:
        return [p.question for p in self.knowledge + self.suite + self.gen]

    def sizes(self) -> dict:
        return {"knowledge": len(self.knowledge), "suite": len(self.suite), "gen": len(self.gen)}


def score(backend, tokenizer, ev: EvalSet, ref, primitives) -> dict:
    """Every measure of one model: accuracy (knowledge), answer CE (suite), fidelity to dense."""
    k = evaluate(backend, tokenizer, ev.knowledge)
    s = evaluate(backend, tokenizer, ev.suite)
    hits = {r["id"]: r["pred"] == r["gold"] for r in k["predictions"]}
    q = measure(*primitives, tokenizer, ref)
    return {"knowledge": {kk: k["overall"][kk] for kk in ("acc", "ci95", "n", "chance", "answer_ce")},
            "knowledge_families": {f: v["acc"] for f, v in k["families"].items()},
            "suite": {kk: s["overall"][kk] for kk in ("acc", "ci95", "n", "chance", "answer_ce")},
            "fidelity": {kk: v for kk, v in q.items() if kk != "samples"}, "samples": q.get("samples"),
            "hits": [hits[p.id] for p in ev.knowledge]}


def dense_reference(model, tokenizer, ev: EvalSet):
    return reference(*torch_primitives(model, tokenizer), tokenizer, ev.gen)


def score_torch(model, tokenizer, ev: EvalSet, ref) -> dict:
    return score(TorchBackend(model, tokenizer, progress=False), tokenizer, ev, ref, torch_primitives(model, tokenizer))


def score_runtime(runtime, tokenizer, ev: EvalSet, ref) -> dict:
    return score(runtime, tokenizer, ev, ref, runtime_primitives(runtime))


def paired(a: dict, b: dict) -> dict:
    """McNemar on the knowledge problems: a's result against b's."""
    return mcnemar(a["hits"], b["hits"])
