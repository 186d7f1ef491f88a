"""Prompt formatting, shared by calibration and evaluation so both see the same text."""

from __future__ import annotations

from .tasks.base import Problem

# A short task instruction as the system turn: it replaces long default system prompts (SmolLM's
# adds ~25 tokens to every problem), which would dominate the cost of scoring short problems.
SYSTEM_PROMPT = "Answer with the final answer only."


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer, problem: Problem) -> str:
    """The context before the answer: the model's chat template when it has one, plain text otherwise."""
    if uses_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem.question}],
            tokenize=False, add_generation_prompt=True,
        )
    return f"Question: {problem.question}\nAnswer:"


def continuation_text(tokenizer, answer: str) -> str:
    # After "Answer:" the answer follows a space; after a chat template's assistant header it
    # starts the turn directly.
    return answer if uses_chat_template(tokenizer) else " " + answer


def encode_pair(tokenizer, problem: Problem, answer: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), tokenized separately so the split point is exact."""
    ctx = tokenizer(prompt_text(tokenizer, problem), add_special_tokens=False)["input_ids"]
    if not uses_chat_template(tokenizer) and tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ctx = [tokenizer.bos_token_id] + ctx
    cont = tokenizer(continuation_text(tokenizer, answer), add_special_tokens=False)["input_ids"]
    if not cont:
        raise ValueError(f"answer {answer!r} of problem {problem.id!r} tokenizes to nothing")
    return ctx, cont
