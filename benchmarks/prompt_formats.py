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

from _common import table, write_result
from cap_edge.backend import TorchBackend
from cap_edge.evaluate import evaluate
from cap_edge.models import load_model
from cap_edge.prompts import chat_prompt, encode_pair, plain_prompt
from cap_edge.tasks import load_split


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-per-family", type=int, default=50)
    args = ap.parse_args()
    lm = load_model(None, device="cpu", dtype="fp32")
    tok = lm.tokenizer
    ev = load_split("embedded", "eval", args.eval_per_family)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    # encoders (tokenizer, problem, answer) -> (context ids, answer ids), as evaluate() takes them
    formats = {
        "header": lambda t, p, c: (ids(chat_prompt(t, p.question)), ids(c)),
        "prefix": encode_pair,
        "plain": lambda t, p, c: (ids(plain_prompt(p.question)), ids(" " + c)),
    }
    backend = TorchBackend(lm.model, tok, progress=False)
    results, rows = {}, []
    for name, fmt in formats.items():
        t = time.perf_counter()
        fams = evaluate(backend, tok, ev, encode=fmt)["families"]
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
