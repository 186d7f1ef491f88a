"""Prompt formats and the round-1 tokenizer's extra leading token, side by side on the same
held-out problems (issue #18): how much of a score difference is the format and how much the
tokenizer.

Formats (context -> scored answer):
* ``header``: chat template up to the assistant header, answer without a leading space;
* ``prefix``: the shipped format (``cap_edge.prompts.encode_pair``): the assistant turn starts
  with "The answer is:" and the answer follows after a space;
* ``plain``: no chat template, "Question: ...\\nAnswer: <answer>";
* ``qa``: no chat template, "Q: ...\\nA: <answer>" (the independent probe's format).
Tokenizer: ``fixed`` (today's: ids equal llama.cpp's, nothing prepended) or ``round1`` (the
round-1 reconstruction prepended <|im_start|>, id 1, to every encode of a plain text; cap-edge's
own chat prompts were encoded without special tokens, so its figures were unaffected).

    python benchmarks/prompt_formats.py [--eval-per-family 50]

Writes benchmarks/results/prompt_formats.json: per variant and family acc_norm (and unnormalised
acc), 95% CI, chance, families above chance, and the effects of format and token.
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

ROUND1_PREFIX = 1  # <|im_start|>: what the round-1 tokenizer put before every encode


def encoders(tok) -> dict:
    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    base = {
        "header": lambda t, p, c: (ids(chat_prompt(t, p.question)), ids(c)),
        "prefix": encode_pair,
        "plain": lambda t, p, c: (ids(plain_prompt(p.question)), ids(" " + c)),
        "qa": lambda t, p, c: (ids(f"Q: {p.question}\nA:"), ids(" " + c)),
    }

    def round1(fmt):
        def enc(t, p, c):
            ctx, cont = fmt(t, p, c)
            return [ROUND1_PREFIX] + ctx, cont
        return enc

    out = {(name, "fixed"): f for name, f in base.items()}
    out.update({(name, "round1"): round1(base[name]) for name in ("prefix", "plain", "qa")})
    return out


def effects(results: dict) -> tuple[dict, str]:
    """Mean accuracy differences over families: token (fixed - round1, per format) and format
    (each format - prefix, fixed tokenizer), overall and on arithmetic."""
    def mean_acc(key, fam=None):
        fams = results[key]["families"]
        return fams[fam]["acc"] if fam else sum(v["acc"] for v in fams.values()) / len(fams)

    eff = {"token": {}, "format": {}}
    for (name, tokv) in results:
        if tokv == "round1":
            eff["token"][name] = {"all": mean_acc((name, "fixed")) - mean_acc((name, "round1")),
                                  "arithmetic": mean_acc((name, "fixed"), "arithmetic") - mean_acc((name, "round1"), "arithmetic")}
    for (name, tokv) in results:
        if tokv == "fixed" and name != "prefix":
            eff["format"][name] = {"all": mean_acc((name, "fixed")) - mean_acc(("prefix", "fixed")),
                                   "arithmetic": mean_acc((name, "fixed"), "arithmetic") - mean_acc(("prefix", "fixed"), "arithmetic")}
    lines = ["Effect of the round-1 extra token (fixed minus round1, mean acc_norm over families / arithmetic): "
             + "; ".join(f"{k} {v['all']:+.3f} / {v['arithmetic']:+.3f}" for k, v in eff["token"].items()) + ".",
             "Effect of the format (each minus the shipped prefix format, fixed tokenizer): "
             + "; ".join(f"{k} {v['all']:+.3f} / {v['arithmetic']:+.3f}" for k, v in eff["format"].items()) + "."]
    return eff, "\n\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-per-family", type=int, default=50)
    args = ap.parse_args()
    lm = load_model(None, device="cpu", dtype="fp32")
    tok = lm.tokenizer
    ev = load_split("embedded", "eval", args.eval_per_family)
    backend = TorchBackend(lm.model, tok, progress=False)
    results, rows = {}, []
    for (name, tokv), fmt in encoders(tok).items():
        t = time.perf_counter()
        res = evaluate(backend, tok, ev, encode=fmt)
        fams = res["families"]
        above = sum(v["above_chance"] for v in fams.values())
        margin = sum(v["acc"] - v["chance"] for v in fams.values()) / len(fams)
        results[(name, tokv)] = {"families": fams, "overall": res["overall"], "families_above_chance": above,
                                 "mean_acc_minus_chance": margin, "seconds": time.perf_counter() - t}
        ar = fams["arithmetic"]
        rows.append([name, tokv, above, f"{margin:+.3f}", f"{res['overall']['answer_ce']:.3f}",
                     f"{ar['acc']:.2f} / {ar['acc_unnormalised']:.2f}"]
                    + [f"{fams[f]['acc']:.2f}{'*' if fams[f]['above_chance'] else ''}" for f in sorted(fams)])
        print(rows[-1], flush=True)
    fam_names = sorted(results[("prefix", "fixed")]["families"])
    md = table(rows, ["format", "tokenizer", "families CI > chance", "mean acc - chance", "answer CE",
                      "arithmetic acc_norm / acc"] + fam_names)
    eff, notes = effects(results)
    print(md, notes, sep="\n\n")
    write_result("prompt_formats", {"model": "embedded:SmolLM2-135M-Instruct", "eval_per_family": args.eval_per_family,
                                    "chance": {f: v["chance"] for f, v in results[("prefix", "fixed")]["families"].items()},
                                    "variants": [{"format": k[0], "tokenizer": k[1], **v} for k, v in results.items()],
                                    "effects": eff, "table_md": md, "notes_md": notes})


if __name__ == "__main__":
    main()
