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


def chat_prompt(tokenizer, question: str) -> str:
    """The chat template's text up to and including the opened assistant turn."""
    return tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        tokenize=False, add_generation_prompt=True,
    )


def plain_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def prompt_text(tokenizer, problem: Problem) -> str:
    """The context before the answer: the model's chat template when it has one, plain text otherwise.
    Both end in a colon ("Answer:" or ANSWER_PREFIX), so the answer follows after a space."""
    if uses_chat_template(tokenizer):
        return chat_prompt(tokenizer, problem.question) + ANSWER_PREFIX
    return plain_prompt(problem.question)


def encode_pair(tokenizer, problem: Problem, answer: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), tokenized separately so the split point is exact."""
    ctx = tokenizer(prompt_text(tokenizer, problem), add_special_tokens=False)["input_ids"]
    if not uses_chat_template(tokenizer) and tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ctx = [tokenizer.bos_token_id] + ctx
    cont = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    if not cont:
        raise ValueError(f"answer {answer!r} of problem {problem.id!r} tokenizes to nothing")
    return ctx, cont
