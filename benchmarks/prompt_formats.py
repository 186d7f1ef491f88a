"""Prompt formats for log-likelihood scoring of the embedded model, side by side on the same
held-out problems: why cap_edge.prompts ends the context with ANSWER_PREFIX.

* ``header``: the answer scored right after the chat template's assistant header (the format
  before ANSWER_PREFIX), answer without a leading space;
* ``prefix``: the shipped format (``cap_edge.prompts.encode_pair``): the assistant turn starts
  with "The answer is:" and the answer follows after a space;
* ``plain``: no chat template, "Question: ...\\nAnswer: <answer>".

    python benchmarks/prompt_formats.py [--eval-per-family 50]

Writes benchmarks/results/prompt_formats.json: per format and family acc_norm, 95% CI, chance,
and the number of families whose CI lies above chance.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from _common import table, write_result
from cap_edge.evaluate import Accuracy, TorchBackend
from cap_edge.models import load_model
from cap_edge.prompts import SYSTEM_PROMPT, encode_pair
from cap_edge.tasks import load_split


def chat(tok, question: str) -> str:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-per-family", type=int, default=50)
    args = ap.parse_args()
    lm = load_model(None, device="cpu", dtype="fp32")
    tok = lm.tokenizer
    ev = load_split("embedded", "eval", args.eval_per_family)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    formats = {
        "header": lambda p, c: (ids(chat(tok, p.question)), ids(c)),
        "prefix": lambda p, c: encode_pair(tok, p, c),
        "plain": lambda p, c: (ids(f"Question: {p.question}\nAnswer:"), ids(" " + c)),
    }
    backend = TorchBackend(lm.model, tok, progress=False)
    results, rows = {}, []
    for name, fmt in formats.items():
        t = time.perf_counter()
        reqs, owner = [], []
        for i, p in enumerate(ev):
            for c in p.choices:
                reqs.append(fmt(p, c))
                owner.append(i)
        ll = backend.loglik(reqs)
        per = defaultdict(list)
        for i, v in zip(owner, ll):
            per[i].append(v)
        hits, chance = defaultdict(list), defaultdict(list)
        for i, p in enumerate(ev):
            norm = [v / len(c.encode("utf-8")) for v, c in zip(per[i], p.choices)]  # acc_norm, as evaluate()
            hits[p.family].append(max(range(len(norm)), key=norm.__getitem__) == p.gold)
            chance[p.family].append(1 / len(p.choices))
        fams = {f: Accuracy(len(h), sum(h), sum(chance[f]) / len(h)).as_dict() for f, h in hits.items()}
        above = sum(v["above_chance"] for v in fams.values())
        margin = sum(v["acc"] - v["chance"] for v in fams.values()) / len(fams)
        results[name] = {"families": fams, "families_above_chance": above, "mean_acc_minus_chance": margin,
                         "seconds": time.perf_counter() - t}
        rows.append([name, above, f"{margin:+.3f}"] + [f"{fams[f]['acc']:.2f}{'*' if fams[f]['above_chance'] else ''}"
                                                      for f in sorted(fams)])
        print(rows[-1], flush=True)
    fam_names = sorted(results["prefix"]["families"])
    md = table(rows, ["format", "families CI > chance", "mean acc - chance"] + fam_names)
    print(md)
    write_result("prompt_formats", {"command": f"python benchmarks/prompt_formats.py --eval-per-family {args.eval_per_family}",
                                    "model": "embedded:SmolLM2-135M-Instruct", "eval_per_family": args.eval_per_family,
                                    "chance": {f: v["chance"] for f, v in results["prefix"]["families"].items()},
                                    "formats": results, "table_md": md})


if __name__ == "__main__":
    main()
