"""Pure helpers for batching sequences of different lengths (evaluation and scoring)."""

from __future__ import annotations


def length_batches(order: list[int], lengths: list[int], max_tokens: int, max_rows: int = 64, max_pad: float = 1.0):
    """Consecutive runs of ``order`` whose padded size stays under ``max_tokens`` and ``max_rows``,
    and whose padding stays under ``max_pad`` of the padded tokens (order sorted by length keeps
    it small)."""
    batch, longest, real = [], 0, 0
    for i in order:
        new_longest = max(longest, lengths[i])
        n = len(batch) + 1
        if batch and (new_longest * n > max_tokens or len(batch) >= max_rows
                      or 1 - (real + lengths[i]) / (new_longest * n) > max_pad):
            yield batch
            batch, new_longest, real = [], lengths[i], 0
        batch.append(i)
        longest, real = new_longest, real + lengths[i]
    if batch:
        yield batch


def shared_prefix(rows: list[tuple[int, ...]]) -> int:
    """Length of the token prefix all rows share, leaving at least one token of the shortest row."""
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(n, 0)
