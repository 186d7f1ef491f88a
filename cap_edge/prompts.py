"""Prompt formatting, shared by calibration and evaluation so both see the same text."""

from __future__ import annotations

from .tasks.base import Problem

# A short task instruction as the system turn: it replaces long default system prompts (SmolLM's
# adds ~25 tokens to every problem), which would dominate the cost of scoring short problems.
SYSTEM_PROMPT = "Answer with the final answer only."
# The assistant turn starts with this, and the answer follows it after a space. Measured on the
# embedded SmolLM2-135M-Instruct (benchmarks/results/prompt_formats.json): scored right after the
# assistant header, the answer competes with the model's habitual openings ("To solve this...")
# and is written without its leading space, a different token from the one in the question; the
# prefix is how the model itself states answers ("The answer is: Carol.").
ANSWER_PREFIX = "The answer is:"


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, problem: Problem) -> str:
    """The context before the answer: the model's chat template when it has one, plain text otherwise."""
    if uses_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem.question}],
            tokenize=False, add_generation_prompt=True,
        ) + ANSWER_PREFIX
    return f"Question: {problem.question}\nAnswer:"


def continuation_text(tokenizer, answer: str) -> str:
    # Both contexts end in a colon ("Answer:" or ANSWER_PREFIX): the answer follows a space.
    return " " + answer


def encode_pair(tokenizer, problem: Problem, answer: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), tokenized separately so the split point is exact."""
    ctx = tokenizer(prompt_text(tokenizer, problem), add_special_tokens=False)["input_ids"]
    if not uses_chat_template(tokenizer) and tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ctx = [tokenizer.bos_token_id] + ctx
    cont = tokenizer(continuation_text(tokenizer, answer), add_special_tokens=False)["input_ids"]
    if not cont:
        raise ValueError(f"answer {answer!r} of problem {problem.id!r} tokenizes to nothing")
    return ctx, cont
