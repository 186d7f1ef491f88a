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


class TokenTrie:
    """Token sequences merged into a prefix tree, nodes in insertion order (a parent before its
    children): sequences that share a prefix compute it once when the nodes run as one packed
    row under ``ancestor_mask`` (tree attention)."""

    def __init__(self):
        self.tokens: list[int] = []
        self.parent: list[int] = []  # -1: a root (its parent is whatever precedes the row, e.g. a KV cache)
        self.depth: list[int] = []  # 0 for a root: the node's position within its sequence
        self._child: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self.tokens)

    def new_nodes(self, seq) -> int:
        """How many nodes ``add(seq)`` would create."""
        node = -1
        for i, t in enumerate(seq):
            node = self._child.get((node, t), -2)
            if node == -2:
                return len(seq) - i
        return 0

    def add(self, seq) -> list[int]:
        """Insert ``seq``; returns the node of each of its tokens."""
        node, out = -1, []
        for t in seq:
            nxt = self._child.get((node, t))
            if nxt is None:
                nxt = len(self.tokens)
                self._child[(node, t)] = nxt
                self.tokens.append(t)
                self.depth.append(self.depth[node] + 1 if node >= 0 else 0)
                self.parent.append(node)
            node = nxt
            out.append(node)
        return out

    def ancestor_mask(self):
        """(n, n) bool: [q, k] is True where node k is q or one of q's ancestors, i.e. exactly the
        tokens q would attend to in its own sequence."""
        import torch

        n = len(self.tokens)
        m = torch.zeros(n, n, dtype=torch.bool)
        for q, p in enumerate(self.parent):
            if p >= 0:
                m[q] = m[p]
            m[q, q] = True
        return m
